"""The shared sample checks, seen through a JSONL file: bad samples skipped, counted and named; strict mode."""
import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from vlkit.data.sources import DataError, DataWarning, ReadStats, read_samples
from vlkit.errors import UserError


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
