"""generate_dataset / inspect_dataset: determinism, task mixtures, layout on disk, CLI."""
import json
from collections import Counter
from pathlib import Path

import pytest

from vlkit.config import ConfigError
from vlkit.data.sources import DataError, load_sample_images, read_samples
from vlkit.data.synth import DEFAULT_TASKS, TASKS, corpus_text, generate_dataset, inspect_dataset, task_plan, task_weights


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_any_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", n=120, seed=5, progress=False, workers=1)
    b = generate_dataset(tmp_path / "b", n=120, seed=5, progress=False, workers=2)
    ta, tb = tree(a), tree(b)
    assert ta.keys() == tb.keys() and ta == tb
    assert len([k for k in ta if k.startswith("images/")]) == 120
    assert any(k.startswith("masks/") for k in ta)


def test_seed_and_split_change_the_data(tmp_path):
    a = generate_dataset(tmp_path / "a", n=40, seed=1, progress=False)
    b = generate_dataset(tmp_path / "b", n=40, seed=2, progress=False)
    c = generate_dataset(tmp_path / "c", n=40, seed=1, split="test", progress=False)
    la, lb, lc = ((p / "data.jsonl").read_text().splitlines() for p in (a, b, c))
    assert la != lb and la != lc
    ia = {json.loads(x)["id"]: x for x in la}
    assert not set(ia) & {json.loads(x)["id"] for x in lb}  # ids name seed and split
    # same task, same index, different seed: different image bytes
    same = [(json.loads(x), json.loads(y)) for x, y in zip(la, lb) if json.loads(x)["task"] == json.loads(y)["task"]]
    assert any((a / s["images"][0]).read_bytes() != (b / t["images"][0]).read_bytes() for s, t in same)


def test_task_mixture():
    assert task_weights(None) == {t: 1.0 for t in DEFAULT_TASKS}  # multi-image and video tasks by name only
    assert set(TASKS) - set(DEFAULT_TASKS) == {"receipt", "multi_count", "change", "video_qa"}
    assert task_weights(["vqa", "vqa", "ocr"]) == {"vqa": 2.0, "ocr": 1.0}
    assert task_weights("vqa,grounding") == {"vqa": 1.0, "grounding": 1.0}
    assert task_weights({"vqa": 3, "chart": 1}) == {"vqa": 3.0, "chart": 1.0}
    with pytest.raises(DataError, match="unknown synthetic task"):
        task_weights(["vqa", "jokes"])
    plan = task_plan(task_weights({"vqa": 3, "chart": 1}), 100, 0, "train")
    assert Counter(plan) == {"vqa": 75, "chart": 25}
    plan = task_plan(task_weights(None), 10, 0, "train")
    assert len(plan) == 10 and len(set(plan)) == 9


def test_layout_counts_and_inspect(small_dataset, tmp_path, capsys):
    samples = list(read_samples(small_dataset))
    assert len(samples) == 90
    counts = Counter(s["task"] for s in samples)
    assert set(counts) == set(DEFAULT_TASKS) and all(v == 10 for v in counts.values())
    png = tmp_path / "grid.png"
    report = inspect_dataset(small_dataset, out_png=png)
    out = capsys.readouterr().out
    assert report["total"] == 90 and report["tasks"] == dict(counts)
    assert report["answers"]["vqa"] and report["png"] == str(png) and png.is_file()
    assert "vqa" in out and "answers" in out
    from PIL import Image

    assert Image.open(png).size[0] >= 4 * 150


def test_corpus_text(small_dataset):
    texts = list(corpus_text(small_dataset))
    assert len(texts) == 2 * 90 - 10  # generation's gpt turn is only <image>
    assert not any("<image>" in t for t in texts)
    assert any("<ref>" in t for t in texts)
    assert list(corpus_text(read_samples(small_dataset))) == texts


def test_bad_arguments(tmp_path):
    for kwargs, msg in [({"split": "dev"}, "split"), ({"fmt": "csv"}, "format"), ({"size": 8}, "size"),
                        ({"seed": -1}, "seed"), ({"heldout": "red:unicorn"}, "heldout")]:
        with pytest.raises(DataError, match=msg):
            generate_dataset(tmp_path / "x", n=2, progress=False, **kwargs)


def test_other_formats_and_sizes(tmp_path):
    out = generate_dataset(tmp_path / "wds", n=30, fmt="webdataset", shard_size=12, progress=False, size=96)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = list(read_samples(out))
    assert len(samples) == 30 and all(s["image_objects"][0].size == (96, 96) for s in samples)
    generate_dataset(out, n=5, fmt="webdataset", shard_size=12, progress=False)  # a shorter rerun
    assert len(list(out.glob("*.tar"))) == 1 and len(list(read_samples(out))) == 5


def test_heldout_flag_in_generated_test_split(tmp_path):
    out = generate_dataset(tmp_path / "t", n=200, split="test", tasks=["vqa", "generation"], progress=False)
    meta = [s["meta"] for s in read_samples(out)]
    assert 20 < sum(m["heldout"] for m in meta) < 180
    out = generate_dataset(tmp_path / "n", n=60, split="test", tasks=["vqa"], heldout="none", progress=False)
    assert not any(s["meta"]["heldout"] for s in read_samples(out))


def test_cli(tmp_path, capsys):
    from vlkit.apps.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "18", "--tasks", "vqa,ocr", "--seed", "4"]) == 0
    assert len((tmp_path / "d" / "data.jsonl").read_text().splitlines()) == 18
    assert main(["data", "inspect", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "inspect.png").is_file()
    assert "vqa" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(tmp_path / "e"), "--tasks", "nope"]) == 2


def test_identical_to_itself_rerun(tmp_path):
    """Writing into a folder that already holds the same dataset gives the same files."""
    a = generate_dataset(tmp_path / "a", n=20, seed=9, progress=False)
    before = tree(a)
    generate_dataset(a, n=20, seed=9, progress=False)
    assert tree(a) == before


def test_wide_text_images_on_disk(tmp_path):
    out = generate_dataset(tmp_path / "wide", n=9, tasks=["ocr", "doc", "chart"], size=256, aspect="wide",
                           progress=False)
    samples = list(read_samples(out))
    assert len(samples) == 9 and all(load_sample_images(s)[0].size == (256, 96) for s in samples)
    with pytest.raises(ConfigError, match="synth.aspect='sideways'"):
        generate_dataset(tmp_path / "x", n=2, progress=False, aspect="sideways")


def test_video_clips_on_disk(tmp_path):
    out = generate_dataset(tmp_path / "v", n=4, tasks=["video_qa", "change"], video_frames=6, progress=False)
    samples = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    clips = [s["videos"][0] for s in samples if s["task"] == "video_qa"]
    assert len(clips) == 2 and all(len(c) == 6 and all((out / p).is_file() for p in c) for c in clips)
    assert all(len(s["images"]) == 2 for s in samples if s["task"] == "change")  # shards, HF: tests/data/sources
