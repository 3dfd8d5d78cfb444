"""JSON(L) + image folder: LLaVA's JSON list (paths relative to the file or to an image_folder)."""
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.data.sources.helpers import colors, llava_layout, read_all
from vlkit.data.sources import DataError, read_samples


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


def test_llava_json_list_with_image_folder(tmp_path):
    path, folder = llava_layout(tmp_path)
    got, stats = read_all({"path": str(path), "image_folder": str(folder)})
    assert stats.n_skipped == 0 and stats.read == 16
    with_images = [s for s in got if s["images"]]
    assert len(with_images) == 12
    assert all(Path(p).is_file() and Path(p).is_relative_to(folder) for s in with_images for p in s["images"])
    assert [colors(s)[0] for s in with_images] == [s["conversations"][1]["value"] for s in with_images]
    assert sum(not s["images"] for s in got) == 4


def test_image_folder_must_exist(tmp_path):
    path, _ = llava_layout(tmp_path)
    with pytest.raises(DataError, match="image_folder .*nowhere is not a folder"):
        read_all({"path": str(path), "image_folder": str(tmp_path / "nowhere")})
    jsonl = tmp_path / "data.jsonl"  # the streamed index (training) says the same
    jsonl.write_text("\n".join(json.dumps(s) for s in json.loads(path.read_text())) + "\n")
    from vlkit.data.records import read_store

    with pytest.raises(DataError, match="image_folder .*nowhere is not a folder"):
        read_store({"path": str(jsonl), "image_folder": str(tmp_path / "nowhere")}, strict=False)
