"""JSON(L) + image folder: vlkit's `data.jsonl` (one sample per line) and LLaVA's JSON list (`[...]`).

Image (and mask) paths are relative to the JSON(L) file, or to a separate `image_folder` (LLaVA's
--image_folder); the reader yields them as absolute paths of files that exist and pass an integrity check.
Samples with inline image data (data: URLs in `messages`) are decoded instead.

The reader streams a JSONL file line by line and counts every bad line by reason with its line number (strict:
`DataError`), so it keeps its own loop rather than `vlkit.io.read_records`, which loads a whole file and only
warns about bad lines. The writer (`JsonlSink`) writes `data.jsonl` + `images/` (+ `masks/`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

from vlkit.data.sources.base import Sink
from vlkit.data.sources.normalize import Reader

JSONL_NAME = "data.jsonl"  # the file the writer makes in its output folder


def parse_line(reader: Reader, raw: bytes, path: Path, lineno: int) -> Optional[dict]:
    """One JSONL line -> the reader's sample; None (after counting) for a bad one. The streaming index
    (vlkit/data/records.py) reads lines by byte span and parses them here too."""
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        reader.skip("malformed_json", where, f"not valid JSON ({exc})")
        return None
    sample = reader.normalize(obj, where, default_id=f"{path.stem}-{lineno}")
    if sample is None or not reader.resolve(sample, path.parent, where):
        return None
    return sample


def read_jsonl(reader: Reader, path: Path) -> Iterator[dict]:
    """The samples of one .jsonl file, streamed; blank lines are no samples."""
    reader.stats.files += 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip() and (sample := parse_line(reader, raw, path, lineno)) is not None:
                yield sample


def read_json_list(reader: Reader, path: Path) -> Iterator[dict]:
    """The samples of one .json file holding a list (LLaVA); a file that does not parse is a bad file."""
    reader.stats.files += 1
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        reader.bad_file(path, exc, 0)
        return
    if not isinstance(data, list):
        reader.bad_file(path, ValueError("expected a JSON list of samples"), 0)
        return
    for k, obj in enumerate(data):
        where = f"{path}: item {k}"
        sample = reader.normalize(obj, where, default_id=f"{path.stem}-{k}")
        if sample is not None and reader.resolve(sample, path.parent, where):
            yield sample


class JsonlSink(Sink):
    """`out/data.jsonl` + the files of each sample at their relative paths (`images/`, `masks/`)."""

    def __init__(self, out: Path, shard_size: int = 1000):
        super().__init__(out, shard_size)
        self._dirs: set = set()
        self._f = open(self.out / JSONL_NAME, "w", encoding="utf-8")

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            target = self.out / rel
            if target.parent not in self._dirs:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(target.parent)
            with open(target, "wb") as f:
                f.write(data)
        self._f.write(json.dumps(sample, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._f.close()
