"""What every format module shares: the errors, the read counts, image references, the writer's base class."""
from __future__ import annotations

import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from vlkit.errors import UserError

CAPTION_PROMPT = "Describe the image briefly."  # img2dataset caption shards: the question a caption answers
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "ogv")  # video files stored in shards

PathLike = Union[str, os.PathLike]


class DataError(UserError):
    """A data source is missing, unreadable or (in strict mode) holds a bad sample; the message says where."""


class DataWarning(UserWarning):
    """A sample or shard was skipped while reading (non-strict mode)."""


@dataclass
class ReadStats:
    """What a reader did: samples yielded, samples skipped by reason, files it could not read to the end."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    files: int = 0  # JSON(L) files, shards or HF datasets opened
    bad_files: list = field(default_factory=list)  # "path: what went wrong (N samples read before)"
    messages: list = field(default_factory=list)  # the first `max_messages` skip messages
    max_messages: int = 20

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return f"read {self.read} samples, skipped {self.n_skipped} ({reasons or 'none'}) from {self.files} files"


def is_image_ref(x: Any) -> bool:
    """A path, encoded bytes, a {bytes, path} dict (HF `Image` feature) or a PIL image."""
    if isinstance(x, dict):
        return isinstance(x.get("bytes"), bytes) or isinstance(x.get("path"), str)
    return isinstance(x, (str, bytes, Image.Image))


def png_bytes(img: Image.Image) -> bytes:
    """A PIL image (any mode) as PNG bytes, as Pillow encodes it."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def safe_key(text: str) -> str:
    """`text` as a file-name stem: characters other than letters, digits, `_` and `-` become `_`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "sample"


def unique_key(text: str, used: set) -> str:
    """`safe_key(text)`, with a `_1`, `_2`, ... suffix while it is in `used` (then added to it)."""
    key = base = safe_key(text)
    k = 1
    while key in used:
        key, k = f"{base}_{k}", k + 1
    used.add(key)
    return key


class Sink:
    """Writes (sample, files) records to a folder: `sample` holds paths relative to it and `files` maps each of
    them to its bytes. `shard_size` is the number of samples per file for formats that shard (webdataset)."""

    def __init__(self, out: Path, shard_size: int = 1000):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass
