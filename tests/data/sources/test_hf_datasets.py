"""Saved HF datasets with `messages` + `images` (llava-instruct-mix-vsft / TRL, LLaMA-Factory)."""
import pytest
from PIL import Image

from tests.data.sources.helpers import COLORS, colors, msg, read_all, save_image
from vlkit.data.sources import DataError


def test_messages_hf_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    # llava-instruct-mix-vsft / TRL: content parts, an `images` column of decoded images
    part = {"type": datasets.Value("string"), "text": datasets.Value("string"), "index": datasets.Value("int64")}
    features = datasets.Features({"messages": [{"role": datasets.Value("string"), "content": [part]}],
                                  "images": [datasets.Image()]})
    rows = {"messages": [], "images": []}
    for names in (["red"], ["green", "blue"], []):
        user = [{"type": "image", "text": None, "index": k} for k in range(len(names))]
        rows["messages"].append([{"role": "user", "content": user + [{"type": "text", "text": "Colors?", "index": None}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": " ".join(names) or "none",
                                                                    "index": None}]}])
        rows["images"].append([Image.new("RGB", (8, 8), COLORS[c]) for c in names])
    rows["messages"].append(rows["messages"][0])  # one placeholder, no image: skipped
    rows["images"].append([])
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "vsft"))
    got, stats = read_all({"path": str(tmp_path / "vsft"), "max_skip": 0.3})
    assert [colors(s) for s in got] == [["red"], ["green", "blue"], []]
    assert [s["conversations"][1]["value"] for s in got] == ["red", "green blue", "none"]
    assert got[1]["conversations"][0] == {"from": "user", "value": "<image>\n<image>\nColors?"}
    assert dict(stats.skipped) == {"image_placeholders": 1}
    with pytest.raises(DataError, match=r"1 of 4 samples \(25.0%\)"):
        read_all({"path": str(tmp_path / "vsft")})

    # LLaMA-Factory: string content with <image>, image paths relative to an image folder
    save_image(tmp_path / "media" / "a" / "r.png", "red")
    save_image(tmp_path / "media" / "g.jpg", "green")
    datasets.Dataset.from_dict({
        "messages": [[msg("user", "<image>What is it?"), msg("assistant", "red")],
                     [msg("user", "<image> and <image>?"), msg("assistant", "green and red")]],
        "images": [["a/r.png"], ["g.jpg", "a/r.png"]]}).save_to_disk(str(tmp_path / "lf"))
    got, stats = read_all({"path": str(tmp_path / "lf"), "image_folder": str(tmp_path / "media")})
    assert stats.n_skipped == 0 and [colors(s) for s in got] == [["red"], ["green", "red"]]
    with pytest.raises(DataError, match="no usable sample .*missing_image=2"):  # relative to the dataset folder they do not exist
        read_all({"path": str(tmp_path / "lf")})
