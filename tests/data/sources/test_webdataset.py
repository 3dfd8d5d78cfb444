"""WebDataset shards: image members, img2dataset caption shards, bad members, corrupt and truncated shards."""
import io
import json
import tarfile

import pytest
from PIL import Image

from tests.data.sources.helpers import (colors, image_bytes, img2dataset_shard, jbytes, msg, read_all,
                                        write_tar)
from vlkit.data.sources import CAPTION_PROMPT, DataError, DataWarning, ReadStats, read_samples, write_samples


def test_webdataset_image_members_are_the_images(tmp_path):
    conv = {"conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "x"}]}
    two = {"messages": [msg("user", [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Colors?"}]),
                        msg("assistant", "y")]}
    shard = write_tar(tmp_path / "s.tar", [
        ("000.json", jbytes(conv)), ("000.jpg", image_bytes("red", "JPEG")),
        ("001.webp", image_bytes("green", "WEBP")), ("001.json", jbytes(conv)),  # members in any order
        ("002.json", jbytes(two)), ("002.png", image_bytes("blue")), ("002.1.png", image_bytes("white")),
        ("003.json", jbytes(conv)),  # a placeholder but no image member
    ])
    got, stats = read_all({"path": str(shard), "max_skip": 0.5})
    assert [s["id"] for s in got] == ["000", "001", "002"]
    assert [colors(s) for s in got] == [["red"], ["green"], ["blue", "white"]]
    assert got[0]["images"] == ["000.jpg"]
    assert dict(stats.skipped) == {"image_placeholders": 1}
    assert "s.tar:003" in stats.messages[0] and "1 <image> placeholders but 0 images" in stats.messages[0]
    with pytest.raises(DataError, match="image_folder applies to JSON"):
        read_all({"path": str(shard), "image_folder": str(tmp_path)})


def test_img2dataset_caption_shards(tmp_path):
    shard = img2dataset_shard(tmp_path / "00000.tar", 0, 5)
    got, stats = read_all({"path": str(shard)})
    assert stats.n_skipped == 0 and len(got) == 5
    s = got[2]
    assert s["id"] == "000000002" and s["task"] == "caption" and colors(s) == ["blue"]
    assert s["conversations"] == [{"from": "human", "value": "<image>\n" + CAPTION_PROMPT},
                                  {"from": "gpt", "value": "a blue square"}]
    assert s["meta"]["url"] == "http://example.com/2.jpg" and s["meta"]["captions"] == ["a blue square"]
    got, _ = read_all({"path": str(shard), "caption_prompt": "Caption:"})
    assert got[0]["conversations"][0]["value"] == "<image>\nCaption:"
    # a record with neither conversation nor caption, and a caption without an image, are skipped and named
    bad = write_tar(tmp_path / "bad.tar", [("a.jpg", image_bytes("red", "JPEG")), ("a.json", jbytes({"url": "u"})),
                                           ("b.txt", b"a caption")])
    stats = ReadStats()
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no usable sample"):
        list(read_samples(bad, stats=stats))
    assert any("bad.tar:a" in m and "no caption" in m for m in stats.messages)
    assert any("bad.tar:b" in m and "without an image" in m for m in stats.messages)


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
