"""vlkit.data.sources.base: image references, file-name keys, read counts and PNG bytes."""
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlkit.data.sources.base import ReadStats, is_image_ref, png_bytes, safe_key, unique_key


@pytest.mark.parametrize("ref,ok", [
    ("images/a.png", True), (b"\x89PNG", True), (Image.new("RGB", (2, 2)), True),
    ({"bytes": b"x", "path": None}, True), ({"bytes": None, "path": "a.png"}, True),  # HF Image feature
    ({"bytes": None, "path": None}, False), ({"src": "a.png"}, False), (3, False), (None, False), (["a.png"], False),
])
def test_is_image_ref(ref, ok):
    assert is_image_ref(ref) is ok


def test_safe_and_unique_keys():
    assert safe_key("coco/val 2014:0001.jpg") == "coco_val_2014_0001_jpg"
    assert safe_key("__a b__") == "a_b" and safe_key("/// ") == "sample"
    used = set()
    assert [unique_key(t, used) for t in ("a b", "a:b", "a_b", "c")] == ["a_b", "a_b_1", "a_b_2", "c"]
    assert used == {"a_b", "a_b_1", "a_b_2", "c"}


def test_read_stats_summary_counts_skips_by_reason():
    stats = ReadStats(read=7, files=2)
    assert stats.n_skipped == 0
    assert stats.summary() == "read 7 samples, skipped 0 (none) from 2 files"
    stats.skipped = Counter({"missing_image": 2, "bad_turns": 1})
    assert stats.n_skipped == 3
    assert stats.summary() == "read 7 samples, skipped 3 (bad_turns=1, missing_image=2) from 2 files"


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("RGBA", 4), ("L", 1)])
def test_png_bytes_round_trips_the_pixels(mode, channels):
    arr = np.arange(2 * 3 * channels, dtype=np.uint8).reshape(2, 3, channels).squeeze() * 9
    back = Image.open(io.BytesIO(png_bytes(Image.fromarray(arr, mode))))
    assert back.format == "PNG" and back.mode == mode and (np.asarray(back) == arr).all()
