"""Writers: round trips through every writable format, samples built from PIL images, unknown formats."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.sources.helpers import assert_same
from vlkit.data.sources import DataError, detect_format, load_sample_images, load_sample_mask, read_samples, write_samples


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


def test_unknown_format_for_writer(tmp_path):
    with pytest.raises(DataError, match="unknown data format"):
        write_samples([], tmp_path / "x", fmt="parquet")
