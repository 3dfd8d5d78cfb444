"""Data as the field ships it: LLaVA's JSON list + image folder, TRL/LLaMA-Factory `messages` (JSONL and HF
datasets), WebDataset shards with image members, img2dataset caption shards, brace patterns; source keys and
`max_skip`. Every layout is built here from tiny generated files."""
import base64
import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlkit.config import ConfigError
from vlkit.data.sources import (CAPTION_PROMPT, DataError, DataWarning, ReadStats, load_sample_images, read_samples,
                                read_source)
from vlkit.train.trainer import source_spec

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def image_bytes(color: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), COLORS[color]).save(buf, fmt)
    return buf.getvalue()


def save_image(path: Path, color: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color, "JPEG" if path.suffix == ".jpg" else "PNG"))
    return path


def colors(sample) -> list[str]:
    """The colour name of each image of a sample (8x8 single-colour images; JPEG is close, not exact)."""
    out = []
    for im in load_sample_images(sample):
        rgb = np.asarray(im).reshape(-1, 3).mean(0)
        out.append(min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) - rgb).sum()))
    return out


def read_all(src, **kw):
    stats = ReadStats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        got = list(read_source(src, stats=stats, **kw))
    return got, stats


# ---------------------------------------------------------------------------------------------------------
# LLaVA: one JSON list, image paths relative to a separate folder


def llava_layout(root: Path, n_image: int = 12, n_text: int = 4) -> tuple[Path, Path]:
    """`root/llava_mix.json` (a JSON list, some samples text-only) + `root/images/coco/train2017/*.jpg`, as
    LLaVA's llava_v1_5_mix665k.json and its --image_folder."""
    folder = root / "images"
    data = []
    names = list(COLORS)
    for k in range(n_image):
        color = names[k % len(names)]
        rel = f"coco/train2017/{k:012d}.jpg"
        save_image(folder / rel, color)
        data.append({"id": f"{k:012d}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the image?"}, {"from": "gpt", "value": color}]})
    for k in range(n_text):
        data.append({"id": f"text-{k}", "conversations": [
            {"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "yes"},
            {"from": "human", "value": "Say no."}, {"from": "gpt", "value": "no"}]})
    (root / "meta").mkdir(parents=True, exist_ok=True)
    path = root / "meta" / "llava_mix.json"
    path.write_text(json.dumps(data))
    return path, folder


def test_llava_json_list_with_image_folder(tmp_path):
    path, folder = llava_layout(tmp_path)
    got, stats = read_all({"path": str(path), "image_folder": str(folder)})
    assert stats.n_skipped == 0 and stats.read == 16
    with_images = [s for s in got if s["images"]]
    assert len(with_images) == 12
    assert all(Path(p).is_file() and Path(p).is_relative_to(folder) for s in with_images for p in s["images"])
    assert [colors(s)[0] for s in with_images] == [s["conversations"][1]["value"] for s in with_images]
    assert sum(not s["images"] for s in got) == 4


def test_most_of_a_source_skipped_is_an_error(tmp_path):
    path, _ = llava_layout(tmp_path)
    # without image_folder the paths resolve against the JSON file's folder: 12 of 16 images are missing
    with pytest.raises(DataError) as err:
        read_all({"path": str(path)})
    msg = str(err.value)
    for part in (str(path), "12 of 16", "75.0%", "missing_image: 12", "max_skip=0.01", "image_folder",
                 "max_skip: 0.75"):
        assert part in msg, (part, msg)
    got, stats = read_all({"path": str(path), "max_skip": 0.75})  # the suggested value accepts the loss
    assert len(got) == 4 and stats.skipped["missing_image"] == 12


def test_max_skip_threshold(tmp_path):
    save_image(tmp_path / "images" / "ok.png", "red")

    def write(n_missing: int) -> None:
        rows = [{"id": str(k), "images": [f"images/gone{k}.png" if k < n_missing else "images/ok.png"],
                 "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]}
                for k in range(100)]
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(1)  # 1% is what the default allows
    got, stats = read_all({"path": str(tmp_path)})
    assert len(got) == 99 and stats.n_skipped == 1
    write(2)
    with pytest.raises(DataError, match=r"2 of 100 samples \(2.0%\).*max_skip=0.01.*missing_image: 2"):
        read_all({"path": str(tmp_path)})
    assert len(read_all({"path": str(tmp_path), "max_skip": 0.02})[0]) == 98
    with pytest.raises(DataError, match="1 of 100 .*max_skip=0"):
        write(1)
        read_all({"path": str(tmp_path), "max_skip": 0})


@pytest.mark.parametrize("key, hint", [("weigth", "weight"), ("taks", "tasks"), ("image_root", "image_folder"),
                                       ("max_skips", "max_skip"), ("shuffle", None)])
def test_unknown_source_keys_are_errors(tmp_path, key, hint):
    with pytest.raises(ConfigError, match=rf"data.train.3: unknown key\(s\) \['{key}'\]") as err:
        source_spec({"path": str(tmp_path), key: 1}, 3)
    assert (f"`{key}` -> `{hint}`?" in str(err.value)) == (hint is not None)
    assert "image_folder" in str(err.value) and "max_skip" in str(err.value)  # the allowed keys are listed


@pytest.mark.parametrize("value", [1.5, -0.1, "a lot"])
def test_bad_max_skip_is_an_error(tmp_path, value):
    with pytest.raises(ConfigError, match="data.train.0.max_skip"):
        source_spec({"path": str(tmp_path), "max_skip": value}, 0)


def test_image_folder_must_exist(tmp_path):
    path, _ = llava_layout(tmp_path)
    with pytest.raises(DataError, match="image_folder .*nowhere is not a folder"):
        read_all({"path": str(path), "image_folder": str(tmp_path / "nowhere")})
    jsonl = tmp_path / "data.jsonl"  # the streamed index (training) says the same
    jsonl.write_text("\n".join(json.dumps(s) for s in json.loads(path.read_text())) + "\n")
    from vlkit.data.records import read_store

    with pytest.raises(DataError, match="image_folder .*nowhere is not a folder"):
        read_store({"path": str(jsonl), "image_folder": str(tmp_path / "nowhere")}, strict=False)


# ---------------------------------------------------------------------------------------------------------
# messages: TRL / LLaMA-Factory / OpenAI


def msg(role, content):
    return {"role": role, "content": content}


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


# ---------------------------------------------------------------------------------------------------------
# WebDataset as it is usually written


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def jbytes(obj) -> bytes:
    return json.dumps(obj).encode()


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


def img2dataset_shard(path: Path, start: int, n: int) -> Path:
    """As img2dataset writes a shard: `<key>.jpg`, `<key>.txt` (the caption), `<key>.json` (metadata)."""
    members = []
    names = list(COLORS)
    for k in range(start, start + n):
        key = f"{k:09d}"
        color = names[k % len(names)]
        members += [(f"{key}.jpg", image_bytes(color, "JPEG")), (f"{key}.txt", f"a {color} square\n".encode()),
                    (f"{key}.json", jbytes({"url": f"http://example.com/{k}.jpg", "key": key, "status": "success",
                                            "caption": f"a {color} square", "width": 8, "height": 8}))]
    return write_tar(path, members)


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


# ---------------------------------------------------------------------------------------------------------
# end to end: `vlkit train` on LLaVA's layout


def llava_recipe(tmp_path: Path, source: dict) -> Path:
    import yaml

    recipe = {"model": {"preset": "tiny"}, "tokenizer": {"vocab_size": 300},
              "train": {"out": str(tmp_path / "run"), "precision": "fp32", "log_every": 1, "save_every": 0},
              "stages": [{"name": "sft", "train": "multitask", "steps": 3, "lr": 1e-3, "warmup_steps": 1,
                          "batch_size": 4, "data": {"train": [source], "max_length": 256}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_vlkit_train_on_llava_layout_uses_every_image(tmp_path, caplog):
    import logging

    import yaml

    from vlkit.apps.cli import main
    from vlkit.pipeline import load
    from vlkit.train.trainer import Recipe, load_examples

    path, folder = llava_layout(tmp_path / "data")
    recipe = llava_recipe(tmp_path, {"path": str(path), "image_folder": str(folder)})
    caplog.set_level(logging.INFO, logger="vlkit.train")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # not one sample skipped while reading
        assert main(["train", str(recipe)]) == 0
    assert any("16 records indexed" in r.getMessage() for r in caplog.records)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if r.strip()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    # the examples the stage trained on: every image sample with its image, decoded from the image folder
    pipe = load(tmp_path / "run" / "final")
    stage = Recipe.from_dict(yaml.safe_load(recipe.read_text())).stages[0]
    examples = load_examples(pipe, stage.data, 0)
    assert sorted(len(e.images) for e in examples) == [0] * 4 + [1] * 12


def test_vlkit_train_stops_cleanly_when_a_source_is_mostly_skipped(tmp_path, capsys):
    from vlkit.apps.cli import main

    path, _ = llava_layout(tmp_path / "data")
    recipe = llava_recipe(tmp_path, {"path": str(path)})  # no image_folder: 12 of 16 images missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlkit: error: source ") and "12 of 16 samples" in err and "max_skip" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "final").exists()
    # a typo in a source key is a clean error too
    recipe = llava_recipe(tmp_path, {"path": str(path), "image_root": str(tmp_path)})
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['image_root']" in err and "`image_root` -> `image_folder`?" in err
