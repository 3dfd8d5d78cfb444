"""The index of a stage's file sources, for streaming: light records, never pixels.

- JSONL files (`LineStore`): the index is the byte span of every line, found by one scan for newlines (about a
  second for a million lines). A record is parsed, checked and resolved by the reader (vlkit/data/sources.py)
  only when its batch is made, so a bad line or a missing image is skipped and counted then (or raises under
  `strict`).
- Every other source (LLaVA JSON lists, tar shards, HF datasets; `RecordStore`): each sample is read once, as
  `read_samples(..., check_images=False, decode_images=False)` yields it (text and image paths, or undecoded
  image bytes), and packed into an unlinked temporary spill file.

RAM holds a few integers per record, so memory does not grow with the number of samples; pixels are decoded
only when a batch is encoded (in a DataLoader worker, vlkit/data/feed.py).

`FileMixture` lays a stage's `path:` sources (each filtered by `tasks`, repeated or subsampled by `weight`) out
as one indexed collection: mixture record k is (store, record) and `mixture[k]` reads it back as a sample dict.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from array import array
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vlkit.errors import UserError

log = logging.getLogger("vlkit.data")

BLOB_KEYS = ("image_bytes", "mask_bytes")  # sample fields that hold raw bytes (decode_images=False)


def pack(sample: dict) -> bytes:
    """A sample as bytes: a length-prefixed JSON header, then its raw image/mask bytes."""
    head = {k: v for k, v in sample.items() if k not in BLOB_KEYS}
    blobs: list[bytes] = []
    sizes: dict[str, list[int]] = {}
    for key in BLOB_KEYS:
        if sample.get(key) is not None:
            parts = sample[key] if isinstance(sample[key], list) else [sample[key]]
            sizes[key] = [len(b) for b in parts]
            blobs += parts
    head["_blobs"] = sizes
    text = json.dumps(head, ensure_ascii=False).encode("utf-8")
    return struct.pack("<I", len(text)) + text + b"".join(blobs)


def unpack(data: bytes) -> dict:
    (n,) = struct.unpack_from("<I", data)
    sample = json.loads(data[4:4 + n].decode("utf-8"))
    at = 4 + n
    for key, sizes in sample.pop("_blobs").items():
        parts = []
        for size in sizes:
            parts.append(data[at:at + size])
            at += size
        sample[key] = parts if key == "image_bytes" else parts[0]
    return sample


class RecordStore:
    """Packed samples in an unlinked temporary file (it vanishes with the process); `store[i]` reads record i
    with `os.pread`, which keeps no file position, so forked DataLoader workers share the file safely."""

    def __init__(self, tmp_dir: Optional[str] = None):
        self._file = tempfile.TemporaryFile(dir=tmp_dir)
        self.offsets = array("q", [0])
        self.task_codes = array("i")
        self.task_names: list[str] = []
        self._task_code: dict[str, int] = {}

    def add(self, sample: dict) -> None:
        data = pack(sample)
        self._file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))
        task = str(sample.get("task") or "")
        if task not in self._task_code:
            self._task_code[task] = len(self.task_names)
            self.task_names.append(task)
        self.task_codes.append(self._task_code[task])

    def close_writing(self) -> None:
        self._file.flush()

    def __len__(self) -> int:
        return len(self.task_codes)

    def __getitem__(self, i: int) -> dict:
        start, end = self.offsets[i], self.offsets[i + 1]
        return unpack(os.pread(self._file.fileno(), end - start, start))

    def with_tasks(self, tasks: Optional[Sequence[str]]) -> np.ndarray:
        """Indices of the records whose task is in `tasks` (all records for None)."""
        codes = np.frombuffer(self.task_codes, dtype=np.int32) if len(self) else np.zeros(0, np.int32)
        if not tasks:
            return np.arange(len(self), dtype=np.int64)
        wanted = [self._task_code[t] for t in tasks if t in self._task_code]
        return np.nonzero(np.isin(codes, wanted))[0].astype(np.int64)


def line_spans(path: str, chunk: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) byte offsets of every line of a file (without its newline), read in chunks."""
    cuts, at = [], 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            cuts.append(np.nonzero(np.frombuffer(block, dtype=np.uint8) == 10)[0].astype(np.int64) + at)
            at += len(block)
    nl = np.concatenate(cuts) if cuts else np.zeros(0, np.int64)
    return np.concatenate([[0], nl + 1]).astype(np.int64), np.concatenate([nl, [at]]).astype(np.int64)


class LineStore:
    """JSONL files indexed by line spans; `store[i]` reads line i and returns the reader's sample, or None after
    the reader counted (and warned about) a bad line (strict: it raises DataError)."""

    def __init__(self, files: Sequence[Path], strict: bool):
        from vlkit.data.sources import ReadStats, _Reader

        self.files = [str(f) for f in files]
        self.strict = strict
        self.reader = _Reader(strict=strict, stats=ReadStats(), check_images=False, image_root=None)
        file_ids, starts, ends, linenos = [], [], [], []
        for k, path in enumerate(self.files):
            a, b = line_spans(path)
            keep = b > a  # empty lines are not samples
            if keep.any() and (short := np.nonzero(keep & (b - a <= 2))[0]).size:  # "\r" or " ": blank too
                with open(path, "rb") as f:
                    blank = [not os.pread(f.fileno(), int(b[i] - a[i]), int(a[i])).strip() for i in short]
                keep[short[blank]] = False
            starts.append(a[keep]), ends.append(b[keep]), linenos.append(np.nonzero(keep)[0].astype(np.int64) + 1)
            file_ids.append(np.full(int(keep.sum()), k, dtype=np.int32))
        self.file_id, self.start = np.concatenate(file_ids), np.concatenate(starts)
        self.end, self.lineno = np.concatenate(ends), np.concatenate(linenos)
        self._fds: dict[int, int] = {}
        self._tasks: Optional[np.ndarray] = None
        self.task_names: list[str] = []

    def __len__(self) -> int:
        return len(self.start)

    def raw(self, i: int) -> bytes:
        k = int(self.file_id[i])
        if k not in self._fds:
            self._fds[k] = os.open(self.files[k], os.O_RDONLY)
        return os.pread(self._fds[k], int(self.end[i] - self.start[i]), int(self.start[i]))

    def __getitem__(self, i: int) -> Optional[dict]:
        path = Path(self.files[int(self.file_id[i])])
        where = f"{path}:{int(self.lineno[i])}"
        try:
            obj = json.loads(self.raw(i).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            self.reader.skip("malformed_json", where, f"not valid JSON ({exc})")
            return None
        sample = self.reader.normalize(obj, where, default_id=f"{path.stem}-{int(self.lineno[i])}")
        if sample is None or not self.reader.resolve(sample, path.parent, where):
            return None
        return sample

    def with_tasks(self, tasks: Optional[Sequence[str]]) -> np.ndarray:
        """Indices of the records whose task is in `tasks` (all for None; a filter parses every line once)."""
        if not tasks:
            return np.arange(len(self), dtype=np.int64)
        if self._tasks is None:
            codes: dict[str, int] = {}
            found = np.empty(len(self), dtype=np.int32)
            for i in range(len(self)):
                try:
                    obj = json.loads(self.raw(i))
                    task = str(obj.get("task") or "") if isinstance(obj, dict) else ""
                except ValueError:
                    task = ""  # counted as malformed if it is ever read
                found[i] = codes.setdefault(task, len(codes))
            self._tasks, self.task_names = found, list(codes)
        wanted = [self.task_names.index(t) for t in tasks if t in self.task_names]
        return np.nonzero(np.isin(self._tasks, wanted))[0].astype(np.int64)


def read_store(path: str, strict: bool, tmp_dir: Optional[str] = None) -> "LineStore | RecordStore":
    """Index one source: JSONL by line spans; any other format read once into a spill file (no image decoding;
    the existence of image files is checked)."""
    from vlkit.data.sources import ReadStats, _files, detect_format, read_samples

    if detect_format(path) == "jsonl":
        return LineStore(_files(Path(path), (".jsonl",)), strict)
    store = RecordStore(tmp_dir)
    stats = ReadStats()
    for sample in read_samples(path, strict=strict, stats=stats, check_images=False, decode_images=False):
        store.add(sample)
    store.close_writing()
    if stats.n_skipped:
        log.warning("%s: %s", path, stats.summary())
    return store


class FileMixture:
    """A stage's `path:` sources as one indexed collection. Source i contributes its records whose task is in
    its `tasks`, repeated (weight > 1: round(weight x n) records, cycling) or subsampled (weight < 1: a seeded
    random subset). A folder named by several sources is read once."""

    def __init__(self, sources: Sequence[dict], strict: bool, seed: int, tmp_dir: Optional[str] = None):
        g = torch.Generator().manual_seed(seed)
        self.stores: list = []  # LineStore | RecordStore
        by_path: dict[str, int] = {}
        which, index = [], []
        for src in sources:
            path = str(src["path"])
            if path not in by_path:
                by_path[path] = len(self.stores)
                self.stores.append(read_store(path, strict, tmp_dir))
            s = by_path[path]
            idx = self.stores[s].with_tasks(src.get("tasks"))
            n = max(1, round(float(src.get("weight", 1.0)) * len(idx))) if len(idx) else 0
            if n >= len(idx):
                idx = idx[np.arange(n) % len(idx)] if len(idx) else idx
            else:
                idx = idx[torch.randperm(len(idx), generator=g)[:n].numpy()]
            which.append(np.full(len(idx), s, dtype=np.int32))
            index.append(idx)
        self.which = np.concatenate(which) if which else np.zeros(0, np.int32)
        self.index = np.concatenate(index) if index else np.zeros(0, np.int64)
        if not len(self.index):
            raise UserError(f"the stage's data gave no usable sample (sources: {[s['path'] for s in sources]})")

    def __len__(self) -> int:
        return len(self.index)

    def key(self, k: int) -> tuple[int, int]:
        """(store, record) of mixture record k: equal keys are the same sample."""
        return int(self.which[k]), int(self.index[k])

    def __getitem__(self, k: int) -> Optional[dict]:
        """Mixture record k as a sample dict; None for a record the reader skipped (counted, warned)."""
        s, i = self.key(k)
        return self.stores[s][i]
