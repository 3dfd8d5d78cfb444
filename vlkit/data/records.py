"""The index of a stage's file sources, for streaming: light records, never pixels.

- JSONL files (`LineStore`): the index is the byte span of every line, found by one scan for newlines (about a
  second for a million lines), then one parse of every line (text only) that drops and counts bad lines and
  lines whose image files are missing, and notes each line's task. A record is parsed again, and its images
  decoded, only when its batch is made.
- Every other source (LLaVA JSON lists, tar shards, HF datasets; `RecordStore`): each sample is read once, as
  `read_samples(..., check_images=False, decode_images=False)` yields it (text and image paths, or undecoded
  image and clip bytes), and packed into an unlinked temporary spill file.

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

from vlkit.data.sources.base import DataError, ReadStats
from vlkit.data.sources.formats import FORMATS, detect_format, expand_path
from vlkit.data.sources.jsonl import parse_line
from vlkit.data.sources.normalize import Reader
from vlkit.data.sources.read import SourceOptions, check_skip_share, read_samples
from vlkit.errors import UserError

log = logging.getLogger("vlkit.data")

BLOB_KEYS = ("image_bytes", "mask_bytes", "video_bytes")  # sample fields that hold raw bytes (decode_images=False)


def _flatten(x, blobs: list[bytes]):
    """The sizes of a blob field's bytes (bytes, or lists of them, nested: a clip's frames), in its shape; the bytes
    are appended to `blobs`."""
    if isinstance(x, (bytes, bytearray)):
        blobs.append(bytes(x))
        return len(x)
    return [_flatten(part, blobs) for part in x]


def _rebuild(shape, data: bytes, at: int):
    """The field `_flatten` measured, cut from `data` at `at`; returns (field, the offset after it)."""
    if isinstance(shape, int):
        return data[at:at + shape], at + shape
    out = []
    for part in shape:
        value, at = _rebuild(part, data, at)
        out.append(value)
    return out, at


def pack(sample: dict) -> bytes:
    """A sample as bytes: a length-prefixed JSON header, then its raw image/mask/clip bytes."""
    head = {k: v for k, v in sample.items() if k not in BLOB_KEYS}
    blobs: list[bytes] = []
    head["_blobs"] = {key: _flatten(sample[key], blobs) for key in BLOB_KEYS if sample.get(key) is not None}
    text = json.dumps(head, ensure_ascii=False).encode("utf-8")
    return struct.pack("<I", len(text)) + text + b"".join(blobs)


def unpack(data: bytes) -> dict:
    (n,) = struct.unpack_from("<I", data)
    sample = json.loads(data[4:4 + n].decode("utf-8"))
    at = 4 + n
    for key, shape in sample.pop("_blobs").items():
        sample[key], at = _rebuild(shape, data, at)
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
    """JSONL files indexed by line spans. The index scan parses every line once (text only: image files are
    checked to exist, never decoded) to count what the reader skips, so a source's `max_skip` is checked before
    training, and to note each line's task. `store[i]` reads good line i again and returns the reader's sample,
    or None if it fails now (counted, warned; strict: DataError)."""

    def __init__(self, files: Sequence[Path], strict: bool, opts: SourceOptions, stats: ReadStats):
        self.files = [str(f) for f in files]
        folder = Path(opts.image_folder) if opts.image_folder is not None else None
        self.reader = Reader(strict=strict, stats=stats, check_images=False, image_folder=folder,
                              caption_prompt=opts.caption_prompt)
        file_ids, starts, ends, linenos = [], [], [], []
        for k, path in enumerate(self.files):
            stats.files += 1
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
        codes: dict[str, int] = {}
        tasks = np.empty(len(self.start), dtype=np.int32)
        for i in range(len(self.start)):
            sample = self[i]
            tasks[i] = -1 if sample is None else codes.setdefault(str(sample.get("task") or ""), len(codes))
        stats.read += int((tasks >= 0).sum())
        good = tasks >= 0
        self.file_id, self.start, self.end = self.file_id[good], self.start[good], self.end[good]
        self.lineno, self.tasks, self.task_names = self.lineno[good], tasks[good], list(codes)

    def __len__(self) -> int:
        return len(self.start)

    def raw(self, i: int) -> bytes:
        k = int(self.file_id[i])
        if k not in self._fds:
            self._fds[k] = os.open(self.files[k], os.O_RDONLY)
        return os.pread(self._fds[k], int(self.end[i] - self.start[i]), int(self.start[i]))

    def __getitem__(self, i: int) -> Optional[dict]:
        return parse_line(self.reader, self.raw(i), Path(self.files[int(self.file_id[i])]), int(self.lineno[i]))

    def with_tasks(self, tasks: Optional[Sequence[str]]) -> np.ndarray:
        """Indices of the records whose task is in `tasks` (all for None)."""
        if not tasks:
            return np.arange(len(self), dtype=np.int64)
        wanted = [self.task_names.index(t) for t in tasks if t in self.task_names]
        return np.nonzero(np.isin(self.tasks, wanted))[0].astype(np.int64)


def read_store(src: dict, strict: bool, tmp_dir: Optional[str] = None) -> "LineStore | RecordStore":
    """Index one recipe source `{path, image_folder?, max_skip?, caption_prompt?}`: JSONL by line spans; any
    other format read once into a spill file (no image decoding; image files are checked to exist). DataError
    when more than the source's `max_skip` share of its samples was skipped."""
    opts = SourceOptions.from_spec(src)
    if opts.image_folder is not None and not Path(opts.image_folder).is_dir():
        raise DataError(f"source {src['path']}: image_folder {opts.image_folder} is not a folder")
    stats = ReadStats()
    paths = expand_path(src["path"])
    store: "LineStore | RecordStore"
    if all(detect_format(p) == "jsonl" for p in paths):
        store = LineStore([f for p in paths for f in FORMATS["jsonl"].files(p)], strict, opts, stats)
    else:
        store = RecordStore(tmp_dir)
        for sample in read_samples(src["path"], strict=strict, stats=stats, check_images=False,
                                   image_folder=opts.image_folder, caption_prompt=opts.caption_prompt,
                                   decode_images=False):
            store.add(sample)
        store.close_writing()
    if stats.n_skipped:
        log.warning("%s: %s", src["path"], stats.summary())
    check_skip_share(str(src["path"]), stats.read, stats.skipped, opts.max_skip, stats.messages + stats.bad_files)
    return store


class FileMixture:
    """A stage's `path:` sources as one indexed collection. Source i contributes its records whose task is in
    its `tasks`, repeated (weight > 1: round(weight x n) records, cycling) or subsampled (weight < 1: a seeded
    random subset). A folder named by several sources (with the same reading options) is read once. `max_skip`
    is the smallest of the sources' (what the trainer allows encoding to skip)."""

    def __init__(self, sources: Sequence[dict], strict: bool, seed: int, tmp_dir: Optional[str] = None):
        g = torch.Generator().manual_seed(seed)
        self.stores: list = []  # LineStore | RecordStore
        by_path: dict[str, int] = {}
        which, index = [], []
        self.max_skip = min(SourceOptions.from_spec(src).max_skip for src in sources) if sources else 0.0
        for src in sources:
            key = json.dumps({k: v for k, v in src.items() if k not in ("weight", "tasks")}, sort_keys=True)
            if key not in by_path:
                by_path[key] = len(self.stores)
                self.stores.append(read_store(src, strict, tmp_dir))
            s = by_path[key]
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
