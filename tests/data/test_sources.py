"""Readers and writers: round trips through every format, LLaVA input, bad samples, corrupt shards."""
import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlkit.data.sources import (DataError, DataWarning, ReadStats, detect_format, load_sample_images,
                                load_sample_mask, read_samples, write_samples)
from vlkit.errors import UserError


def core(sample):
    """What must survive a round trip: everything but where the files live."""
    meta = dict(sample.get("meta") or {})
    meta.pop("mask", None)
    return {"id": sample["id"], "conversations": sample["conversations"], "task": sample.get("task"), "meta": meta,
            "n_images": len(sample["images"])}


def pixels(sample):
    return [np.asarray(im) for im in load_sample_images(sample)]


def assert_same(a_samples, b_samples):
    assert len(a_samples) == len(b_samples)
    for a, b in zip(a_samples, b_samples):
        assert core(a) == core(b)
        for pa, pb in zip(pixels(a), pixels(b)):
            np.testing.assert_array_equal(pa, pb)
        ma, mb = load_sample_mask(a), load_sample_mask(b)
        assert (ma is None) == (mb is None)
        if ma is not None:
            np.testing.assert_array_equal(ma, mb)


def test_round_trip_every_format(small_dataset, tmp_path):
    pytest.importorskip("datasets")
    original = list(read_samples(small_dataset))
    assert all(Path(p).is_absolute() and Path(p).is_file() for s in original for p in s["images"])
    assert sum(load_sample_mask(s) is not None for s in original) == 10
    assert detect_format(small_dataset) == "jsonl"

    wds = write_samples(original, tmp_path / "wds", fmt="webdataset", shard_size=25)
    assert detect_format(wds) == "webdataset" and len(list(wds.glob("*.tar"))) == 4
    from_wds = list(read_samples(wds))
    assert all(isinstance(im, Image.Image) for s in from_wds for im in s["image_objects"])
    assert_same(original, from_wds)

    hf = write_samples(from_wds, tmp_path / "hf", fmt="hf")
    assert detect_format(hf) == "hf"
    from_hf = list(read_samples(hf))
    assert_same(original, from_hf)

    back = write_samples(from_hf, tmp_path / "jsonl", fmt="jsonl")
    from_jsonl = list(read_samples(back))
    assert_same(original, from_jsonl)
    # the generator's names are kept: the same relative layout as the original
    names = lambda d: sorted(p.name for p in (d / "images").iterdir())  # noqa: E731
    assert names(back) == names(small_dataset)
    # PNG bytes are copied, not re-encoded, when the source has files
    a = {Path(s["images"][0]).name: Path(s["images"][0]).read_bytes() for s in original}
    b = {Path(s["images"][0]).name: Path(s["images"][0]).read_bytes() for s in list(read_samples(
        write_samples(original, tmp_path / "copy", fmt="jsonl")))}
    assert a == b


def test_samples_written_from_pil_images(tmp_path):
    img = Image.new("RGB", (20, 10), (1, 2, 3))
    s = {"id": "x/1", "image_objects": [img, img], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "yes"}]}
    other = Image.new("RGB", (20, 10), (9, 9, 9))
    t = {**s, "id": "x_1", "image_objects": [other, other]}  # an id that makes the same file name
    out = write_samples([s, t], tmp_path / "o")
    got = list(read_samples(out))
    assert [g["id"] for g in got] == ["x/1", "x_1"] and len(got[0]["images"]) == 2
    assert len(set(got[0]["images"] + got[1]["images"])) == 4
    assert all(np.asarray(im).tolist() == np.asarray(img).tolist() for im in load_sample_images(got[0]))
    assert all(np.asarray(im).tolist() == np.asarray(other).tolist() for im in load_sample_images(got[1]))


def test_llava_json_list(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "a.png")
    data = [
        {"id": "a", "image": "imgs/a.png", "conversations": [{"from": "human", "value": "<image>\nColor?"},
                                                              {"from": "gpt", "value": "red"}]},
        {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    for path in (tmp_path / "llava.json", tmp_path):
        got = list(read_samples(path))
        assert [s["id"] for s in got] == ["a", "t"]
        assert got[0]["images"] == [str(tmp_path / "imgs" / "a.png")] and "image" not in got[0]
        assert got[1]["images"] == []
    # image_folder: images relative to another folder
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.json").write_text(json.dumps(data[:1]))
    assert list(read_samples(tmp_path / "sub" / "d.json", image_folder=tmp_path))[0]["images"][0].endswith("a.png")


def _bad_dataset(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(root / "images" / "ok.png")
    good = Image.open(root / "images" / "ok.png")
    good.save(root / "images" / "ok2.png")
    data = (root / "images" / "ok.png").read_bytes()
    (root / "images" / "corrupt.png").write_bytes(data[: len(data) // 2])
    (root / "images" / "garbage.png").write_bytes(b"not an image at all")

    def s(i, image, q="<image>\nQ?"):
        return json.dumps({"id": f"s{i}", "images": [image], "conversations": [
            {"from": "human", "value": q}, {"from": "gpt", "value": "A"}]})

    lines = [
        s(1, "images/ok.png"),                       # line 1: good
        "{this is not json",                         # line 2
        s(3, "images/missing.png"),                  # line 3
        s(4, "images/corrupt.png"),                  # line 4
        s(5, "images/ok.png", q="<image>\n<image>\nQ?"),  # line 5: two placeholders, one image
        s(6, "images/ok.png", q="Q?"),               # line 6: no placeholder
        json.dumps({"id": "s7", "conversations": [{"from": "robot", "value": "x"}]}),  # line 7: bad role
        "",                                          # blank lines are fine
        s(9, "images/garbage.png"),                  # line 9
        s(10, "images/ok2.png"),                     # line 10: good
    ]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_bad_samples_skipped_counted_and_named(tmp_path):
    root = _bad_dataset(tmp_path / "bad")
    stats = ReadStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(read_samples(root, stats=stats))
    assert [s["id"] for s in got] == ["s1", "s10"]
    assert stats.read == 2
    assert dict(stats.skipped) == {"malformed_json": 1, "missing_image": 1, "corrupt_image": 2,
                                   "image_placeholders": 2, "malformed_sample": 1}
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    for line in (2, 3, 4, 5, 6, 7, 9):
        assert any(f"data.jsonl:{line}:" in m for m in messages), line
    assert any("skipped 7" in m for m in messages)  # the closing summary


def test_strict_mode_raises(tmp_path):
    root = _bad_dataset(tmp_path / "bad")
    with pytest.raises(DataError, match=r"data.jsonl:2: .*malformed_json"):
        list(read_samples(root, strict=True))
    assert issubclass(DataError, UserError)


def test_all_bad_is_an_error(tmp_path):
    (tmp_path / "data.jsonl").write_text("nope\n{]\n")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no usable sample"):
        list(read_samples(tmp_path))


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(read_samples(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data"):
        list(read_samples(tmp_path / "empty"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="is not .*jsonl"):
        list(read_samples(tmp_path / "x.csv"))


def test_corrupt_shard_is_counted_loudly(small_dataset, tmp_path):
    shards = write_samples(read_samples(small_dataset), tmp_path / "wds", fmt="webdataset", shard_size=30)
    names = sorted(shards.glob("*.tar"))
    data = names[1].read_bytes()
    names[1].write_bytes(data[: len(data) // 2])  # truncated mid-member
    stats = ReadStats()
    with pytest.warns(DataWarning, match="shard-000001.tar cannot be read to its end"):
        got = list(read_samples(shards, stats=stats))
    assert 60 <= len(got) < 90  # shards 0 and 2 whole, shard 1 up to the damage
    assert stats.skipped["corrupt_file"] == 1 and len(stats.bad_files) == 1
    assert "samples were read" in stats.bad_files[0]
    with pytest.raises(DataError, match="shard-000001.tar"):
        list(read_samples(shards, strict=True))
    # cut exactly at a member boundary: tarfile itself would stop quietly
    with tarfile.open(names[2]) as tf:
        offset = tf.getmembers()[9].offset
    data = names[2].read_bytes()
    names[2].write_bytes(data[:offset])
    stats = ReadStats()
    with pytest.warns(DataWarning, match="shard-000002.tar cannot be read to its end.*truncated"):
        list(read_samples(names[2], stats=stats))
    assert stats.skipped["corrupt_file"] == 1


def test_bad_members_in_a_shard(tmp_path):
    img = io.BytesIO()
    Image.new("RGB", (4, 4)).save(img, "PNG")

    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    sample = {"id": "k", "images": ["images/k.png"], "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                                        {"from": "gpt", "value": "A"}]}
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        add(tf, "good.json", json.dumps({**sample, "id": "good"}).encode())
        add(tf, "good.png", img.getvalue())
        add(tf, "noimage.json", json.dumps(sample).encode())
        add(tf, "badimage.json", json.dumps(sample).encode())
        add(tf, "badimage.png", b"\x89PNG broken")
        add(tf, "nojson.png", img.getvalue())
        add(tf, "badjson.json", b"{")
        add(tf, "badjson.png", img.getvalue())
    stats = ReadStats()
    with pytest.warns(DataWarning):
        got = list(read_samples(tmp_path / "s.tar", stats=stats))
    assert [s["id"] for s in got] == ["good"]
    assert dict(stats.skipped) == {"missing_image": 1, "corrupt_image": 1, "malformed_sample": 1, "malformed_json": 1}
    assert any("s.tar:noimage" in m for m in stats.messages)


def test_unknown_format_for_writer(tmp_path):
    with pytest.raises(DataError, match="unknown data format"):
        write_samples([], tmp_path / "x", fmt="parquet")
