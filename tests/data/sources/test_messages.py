"""`messages` samples (TRL / LLaMA-Factory / OpenAI) in JSONL: conversion, image parts, bad counts."""
import base64
import json

import pytest

from tests.data.sources.helpers import colors, image_bytes, msg, read_all, save_image
from vlkit.data.sources import DataError, read_samples


def test_messages_jsonl(tmp_path):
    save_image(tmp_path / "imgs" / "r.png", "red")
    save_image(tmp_path / "imgs" / "g.png", "green")
    save_image(tmp_path / "elsewhere" / "b.png", "blue")
    data_url = "data:image/png;base64," + base64.b64encode(image_bytes("white")).decode()
    rows = [
        # LLaMA-Factory: string content with <image> placeholders, `images` relative to the file
        {"messages": [msg("system", "Be brief."), msg("user", "<image>Color?"), msg("assistant", "red")],
         "images": ["imgs/r.png"]},
        # TRL: content parts, {"type": "image"} takes the next entry of `images`
        {"id": "trl", "messages": [
            msg("user", [{"type": "image"}, {"type": "text", "text": "Left?"}, {"type": "image"},
                         {"type": "text", "text": "Right?"}]),
            msg("assistant", [{"type": "text", "text": "red, green"}])], "images": ["imgs/r.png", "imgs/g.png"]},
        # OpenAI: image_url parts carry their image (relative path, file:// URL, data: URL)
        {"messages": [msg("user", [{"type": "image_url", "image_url": {"url": "imgs/g.png"}},
                                   {"type": "image_url", "image_url": {"url": (tmp_path / "elsewhere" / "b.png").as_uri()}},
                                   {"type": "image_url", "image_url": {"url": data_url}},
                                   {"type": "text", "text": "Colors?"}]),
                      msg("assistant", "green blue white")]},
        # text only
        {"messages": [msg("user", "Hi"), msg("assistant", "Hello")]},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, stats = read_all({"path": str(tmp_path / "train.jsonl")})
    assert stats.n_skipped == 0 and len(got) == 4
    a, b, c, d = got
    assert a["conversations"] == [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "<image>Color?"},
                                  {"from": "assistant", "value": "red"}]
    assert a["images"] == [str(tmp_path / "imgs" / "r.png")] and colors(a) == ["red"]
    assert "messages" not in a and a["id"] == "train-1"
    assert b["id"] == "trl" and b["conversations"][0] == {"from": "user", "value": "<image>\nLeft?<image>\nRight?"}
    assert b["conversations"][1] == {"from": "assistant", "value": "red, green"} and colors(b) == ["red", "green"]
    assert c["conversations"][0]["value"].count("<image>") == 3 and colors(c) == ["green", "blue", "white"]
    assert d["images"] == [] and d["conversations"][1]["value"] == "Hello"
    # image paths relative to an image folder instead of the file
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jsonl").write_text(json.dumps(rows[1]) + "\n")
    got, stats = read_all({"path": str(tmp_path / "sub" / "x.jsonl"), "image_folder": str(tmp_path)})
    assert stats.n_skipped == 0 and colors(got[0]) == ["red", "green"]


def test_messages_encode_like_conversations(tmp_path, tokenizer):
    """A messages sample and the same sample written as LLaVA conversations give the same token ids."""
    from vlkit.chat import ChatProcessor

    save_image(tmp_path / "r.png", "red")
    rows = [{"messages": [msg("user", [{"type": "image"}, {"type": "text", "text": "Color?"}]),
                          msg("assistant", [{"type": "text", "text": "red"}])], "images": ["r.png"]},
            {"image": "r.png", "conversations": [{"from": "human", "value": "<image>\nColor?"},
                                                 {"from": "gpt", "value": "red"}]}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = read_all({"path": str(tmp_path / "d.jsonl")})[0]
    proc = ChatProcessor(tokenizer)
    ea, eb = proc.encode_sample(a, [4]), proc.encode_sample(b, [4])
    assert ea.input_ids == eb.input_ids and ea.labels == eb.labels


def test_messages_image_count_mismatch_and_bad_images(tmp_path):
    save_image(tmp_path / "r.png", "red")
    good = {"messages": [msg("user", "<image>Q"), msg("assistant", "A")], "images": ["r.png"]}
    rows = [
        good,
        {"messages": [msg("user", "<image><image>Q"), msg("assistant", "A")], "images": ["r.png"]},     # 2 vs 1
        {"messages": [msg("user", [{"type": "image"}, {"type": "text", "text": "Q"}]), msg("assistant", "A")],
         "images": []},                                                                                   # 1 vs 0
        {"messages": [msg("user", "Q"), msg("assistant", "A")], "images": ["r.png"]},                     # 0 vs 1
        {"messages": [msg("user", [{"type": "image_url", "image_url": {"url": "r.png"}},
                                   {"type": "text", "text": "<image> Q"}]), msg("assistant", "A")]},      # mixed
        {"messages": [msg("user", [{"type": "image_url", "image_url": {"url": "https://x.org/a.jpg"}}]),
                      msg("assistant", "A")]},
        {"messages": [msg("user", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]),
                      msg("assistant", "A")]},
        {"messages": [msg("robot", "Q"), msg("assistant", "A")]},
        {"messages": []},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, stats = read_all({"path": str(tmp_path / "d.jsonl"), "max_skip": 1})
    assert len(got) == 1
    assert dict(stats.skipped) == {"image_placeholders": 4, "remote_image": 1, "corrupt_image": 1,
                                   "malformed_sample": 2}
    assert "d.jsonl:2: skipped sample (image_placeholders): 2 image placeholders" in stats.messages[0]
    assert "but 1 images" in stats.messages[0]
    with pytest.raises(DataError, match=r"d.jsonl:2: .*2 image placeholders .* but 1 images"):
        list(read_samples(tmp_path / "d.jsonl", strict=True))
