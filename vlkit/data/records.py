"""The index of a stage's file sources, for streaming: every sample read once, kept as a light record on disk.

A record is what `read_samples(..., check_images=False, decode_images=False)` yields: the sample's text and
image paths (JSON(L) sources) or its undecoded image bytes (tar shards, HF datasets), packed into an unlinked
temporary spill file. RAM holds one offset and one task code per record, so memory does not grow with the
number of samples; pixels are decoded only when a batch is encoded (in a DataLoader worker, vlkit/data/feed.py).

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


def read_store(path: str, strict: bool, tmp_dir: Optional[str] = None) -> RecordStore:
    """Index one source: read every sample once (no image decoding; existence of image files is checked)."""
    from vlkit.data.sources import ReadStats, read_samples

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
        self.stores: list[RecordStore] = []
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

    def __getitem__(self, k: int) -> dict:
        s, i = self.key(k)
        return self.stores[s][i]
