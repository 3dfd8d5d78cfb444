"""Tiny layouts built from generated files, and comparisons of read samples, for the sources tests."""
import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from vlkit.data.sources import DataWarning, ReadStats, load_sample_images, load_sample_mask, read_source


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


def msg(role, content):
    return {"role": role, "content": content}


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
