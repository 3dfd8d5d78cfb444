import pytest

from vlkit.data.synth import generate_dataset


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Every task, 90 samples, jsonl; shared read-only by tests that only read it."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(out, n=90, seed=3, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    """30 vqa and caption samples, jsonl (the streaming tests)."""
    out = tmp_path_factory.mktemp("records") / "ds"
    return generate_dataset(out, n=30, tasks=["vqa", "caption"], seed=5, progress=False, workers=1)


@pytest.fixture(scope="module")
def encode(tokenizer):
    from vlkit.chat import ChatProcessor
    from vlkit.data.collate import encode_samples

    proc = ChatProcessor(tokenizer)
    return lambda samples, stats: encode_samples(samples, proc, 32, lambda h, w: 4, 200, stats=stats)
