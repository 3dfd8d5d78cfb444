"""The endless synthetic stream and the feeds: deterministic for a seed, disjoint across ranks, exact on resume."""
import pytest

from vlkit.data.collate import Example
from vlkit.data.feed import ListFeed, StreamFeed, mixture
from vlkit.data.sources import DataError
from vlkit.data.synth.stream import synth_stream


def _key(sample: dict) -> tuple:
    return (sample["id"], sample["image_objects"][0].tobytes(), str(sample["conversations"]))


def test_stream_is_a_function_of_seed_and_index():
    a, b = synth_stream({"tasks": ["vqa", "ocr"]}, 0), synth_stream({"tasks": ["vqa", "ocr"]}, 0)
    assert [_key(a(g)) for g in (0, 5, 1234, 7)] == [_key(b(g)) for g in (0, 5, 1234, 7)]  # any order
    other = synth_stream({"tasks": ["vqa", "ocr"], "seed": 1})
    assert _key(a(3)) != _key(other(3))
    ids = [a(g)["id"] for g in range(200)]
    assert len(set(ids)) == 200  # no sample repeats
    tasks = [a(g)["task"] for g in range(1000)]
    assert tasks.count("vqa") == tasks.count("ocr") == 500  # exact proportions per block


def test_stream_rejects_unknown_keys_and_tasks():
    with pytest.raises(DataError, match="taks"):
        synth_stream({"taks": ["vqa"]})
    with pytest.raises(DataError, match="unknown synthetic task"):
        synth_stream({"tasks": ["vqq"]})
    with pytest.raises(DataError, match="split"):
        synth_stream({"split": "val"})


def _fake_encode(samples, stats):
    return [Example([1, 2], [1, 2], [], s["task"], s["id"]) for s in samples]


def test_stream_feed_ranks_are_disjoint_and_cover_the_global_batch():
    stream = synth_stream({"tasks": ["vqa"]}, 0)
    feeds = [StreamFeed(stream, _fake_encode) for _ in range(3)]
    seen = []
    for _ in range(4):
        shares = [[e.sample_id for e in f.next_batch(6, r, 3)] for r, f in enumerate(feeds)]
        assert all(len(s) == 2 for s in shares)
        seen += [i for s in shares for i in s]
    assert len(seen) == len(set(seen)) == 24
    assert sorted(seen) == sorted(e.sample_id for e in StreamFeed(stream, _fake_encode).next_batch(24, 0, 1))


def test_stream_feed_resumes_exactly():
    stream = synth_stream({"tasks": ["vqa", "caption"]}, 0)
    full = StreamFeed(stream, _fake_encode)
    want = [[e.sample_id for e in full.next_batch(4, 0, 1)] for _ in range(5)]
    part = StreamFeed(stream, _fake_encode)
    got = [[e.sample_id for e in part.next_batch(4, 0, 1)] for _ in range(2)]
    resumed = StreamFeed(stream, _fake_encode)
    resumed.load_state(part.state())
    got += [[e.sample_id for e in resumed.next_batch(4, 0, 1)] for _ in range(3)]
    assert got == want


def test_list_feed_resumes_exactly_across_epochs():
    ex = [Example([i], [i], [], "t", str(i)) for i in range(5)]
    full = ListFeed(ex, seed=3)
    want = [[e.sample_id for e in full.next_batch(3, 0, 1)] for _ in range(4)]
    assert sorted(want[0] + want[1][:2]) == [str(i) for i in range(5)]  # one epoch is a permutation
    part = ListFeed(ex, seed=3)
    part.next_batch(3, 0, 1), part.next_batch(3, 0, 1)
    resumed = ListFeed(ex, seed=3)
    resumed.load_state(part.state())
    assert want[2:] == [[e.sample_id for e in resumed.next_batch(3, 0, 1)] for _ in range(2)]


def test_mixture_draws_by_weight_deterministically():
    a = lambda g: {"src": "a", "g": g}  # noqa: E731
    b = lambda g: {"src": "b", "g": g}  # noqa: E731
    mix = mixture([a, b], [3.0, 1.0], seed=0)
    draws = [mix(g)["src"] for g in range(2000)]
    assert draws == [mixture([a, b], [3.0, 1.0], seed=0)(g)["src"] for g in range(2000)]
    assert 0.7 < draws.count("a") / 2000 < 0.8


def test_dense_labels_give_scene_samples_color_and_shape_targets(tokenizer):
    from vlkit.chat import ChatProcessor
    from vlkit.data.collate import TargetSpec, encode_samples
    from vlkit.data.synth.world import PAIR_CLASSES

    stream = synth_stream({"tasks": ["vqa", "ocr"], "dense_labels": True}, 0)
    samples = [stream(g) for g in range(40)]
    scene = [s for s in samples if s["task"] == "vqa"]
    assert scene and all(s["meta"]["classes"] == PAIR_CLASSES and s["mask_object"] is not None for s in scene)
    assert all(s["mask_object"] is None for s in samples if s["task"] == "ocr")  # text images: no scene labels
    assert synth_stream({"tasks": ["vqa"]}, 0)(0)["mask_object"] is None  # off by default
    ex = encode_samples(scene[:1], ChatProcessor(tokenizer), 64, lambda h, w: 16, 200, spec=TargetSpec(dense=True))[0]
    objects = scene[0]["meta"]["objects"]
    first = lambda w: tokenizer.encode(" " + w)[0]  # noqa: E731
    targets = {t for _, pos in ex.dense for t in pos}
    assert len(ex.dense) == 16  # one target set per image token
    big = max(objects, key=lambda o: (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1]))
    assert {first(big["color"]), first(big["shape"])} <= targets  # the largest object's colour and shape words
    assert tokenizer.encode(" background")[0] in targets
