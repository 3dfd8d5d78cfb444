"""The FORMATS registry: detecting a path's format, unknown and missing paths, brace patterns."""
import json

import pytest

from tests.data.sources.helpers import img2dataset_shard, read_all, save_image
from vlkit.data.sources import DataError, read_samples


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(read_samples(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data"):
        list(read_samples(tmp_path / "empty"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="is not .*jsonl"):
        list(read_samples(tmp_path / "x.csv"))


def test_brace_patterns(tmp_path):
    for i in range(3):
        img2dataset_shard(tmp_path / "shards" / f"{i:05d}.tar", 10 * i, 4)
    img2dataset_shard(tmp_path / "shards" / "00099.tar", 990, 4)  # outside the pattern
    got, stats = read_all({"path": str(tmp_path / "shards" / "{00000..00002}.tar")})
    assert stats.files == 3 and [s["id"] for s in got][::4] == ["000000000", "000000010", "000000020"]
    assert len(got) == 12
    with pytest.raises(DataError, match=r"2 of the 5 paths of the pattern .*\{00000..00004\}.tar do not exist"):
        read_all({"path": str(tmp_path / "shards" / "{00000..00004}.tar")})
    # any format: {a,b} lists of JSONL files
    save_image(tmp_path / "j" / "r.png", "red")
    for name in ("a", "b", "c"):
        (tmp_path / "j" / f"{name}.jsonl").write_text(json.dumps(
            {"id": name, "image": "r.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                              {"from": "gpt", "value": "A"}]}) + "\n")
    got, _ = read_all({"path": str(tmp_path / "j" / "{a,c}.jsonl")})
    assert [s["id"] for s in got] == ["a", "c"]


def test_every_writable_format_reads_back_as_itself(tmp_path):
    """What each registered sink writes is detected as its own format, folder and files alike."""
    from PIL import Image

    from vlkit.data.sources import FORMATS, WRITE_FORMATS, detect_format, write_samples

    sample = {"id": "a", "image_objects": [Image.new("RGB", (8, 8), "red")],
              "conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]}
    assert set(WRITE_FORMATS) == {"jsonl", "webdataset", "hf"} and set(FORMATS) - set(WRITE_FORMATS) == {"json"}
    for key in WRITE_FORMATS:
        if key == "hf":
            pytest.importorskip("datasets")
        out = write_samples([sample], tmp_path / key, fmt=key)
        assert detect_format(out) == key
        files = FORMATS[key].files(out)
        assert files and all(detect_format(f) == key for f in files)
        got = list(read_samples(out))
        assert [s["id"] for s in got] == ["a"] and got[0]["conversations"][1]["value"] == "red"
    with pytest.raises(DataError, match=r"unknown data format 'json'; choose one of \['hf', 'webdataset', 'jsonl'\]"):
        write_samples([sample], tmp_path / "j", fmt="json")  # LLaVA's JSON list is read, never written
