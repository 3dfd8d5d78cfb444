"""The FORMATS registry: every on-disk layout vlkit reads (and writes), how a path is recognised as one.

To add a format, write a module with a reader (`read(reader, path) -> samples`, using the shared
normalisation of normalize.py) and, if it can be written, a `Sink`; then register it here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from vlkit.data.sources.base import DataError, PathLike, Sink
from vlkit.data.sources.hf_datasets import HFSink, is_hf_dataset, read_hf
from vlkit.data.sources.jsonl import JsonlSink, read_json_list, read_jsonl
from vlkit.data.sources.normalize import Reader
from vlkit.data.sources.webdataset import SHARD_SUFFIXES, TarSink, read_tar


@dataclass(frozen=True)
class Format:
    """One layout. A source of it is a file with one of `suffixes` (or a folder of such files), or a folder
    that `is_dataset` recognises as a whole (read as one)."""

    name: str
    read: Callable[[Reader, Path], Iterator[dict]]  # the samples of one file (or of the dataset folder)
    suffixes: tuple[str, ...] = ()
    is_dataset: Optional[Callable[[Path], bool]] = None
    sink: Optional[Callable[[Path, int], Sink]] = None  # (out, shard_size) -> the writer; None: read only
    holds_images: bool = False  # the images are inside the files: an `image_folder` does not apply
    describe: str = ""  # for messages: what the source looks like

    def files(self, path: Path) -> list[Path]:
        """`path` itself, or the files of this format in the folder `path` (sorted)."""
        if path.is_file() or self.is_dataset is not None:
            return [path]
        return sorted(c for c in path.iterdir() if c.is_file() and c.name.lower().endswith(self.suffixes))

    def samples(self, reader: Reader, path: Path) -> Iterator[dict]:
        for f in self.files(path):
            yield from self.read(reader, f)


# In the order a folder is recognised: a saved HF dataset, then shards, then JSONL files, then JSON lists.
FORMATS: dict[str, Format] = {
    "hf": Format("hf", read_hf, is_dataset=is_hf_dataset, sink=HFSink, describe="a saved HF dataset"),
    "webdataset": Format("webdataset", read_tar, SHARD_SUFFIXES, sink=TarSink, holds_images=True,
                         describe="*.tar shards"),
    "jsonl": Format("jsonl", read_jsonl, (".jsonl",), sink=JsonlSink, describe="*.jsonl files"),
    "json": Format("json", read_json_list, (".json",), describe="*.json lists"),
}
WRITE_FORMATS = tuple(name for name, f in FORMATS.items() if f.sink is not None)


def detect_format(path: PathLike) -> str:
    """The FORMATS key of a file or folder; DataError if it is none of them."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_file():
        name = p.name.lower()
        for key, fmt in FORMATS.items():
            if fmt.suffixes and name.endswith(fmt.suffixes):
                return key
        suffixes = " or ".join("/".join(f.suffixes) for f in FORMATS.values() if f.suffixes)
        raise DataError(f"data file {p} is not {suffixes}")
    for key, fmt in FORMATS.items():
        if fmt.is_dataset is not None and fmt.is_dataset(p):
            return key
    names = [c.name.lower() for c in p.iterdir() if c.is_file()]
    for key, fmt in FORMATS.items():
        if fmt.suffixes and any(n.endswith(fmt.suffixes) for n in names):
            return key
    raise DataError(f"no data in {p}: expected {', '.join(f.describe for f in FORMATS.values())}")


def source_files(path: Path) -> list[Path]:
    """The files (or dataset folder) of a source path, as its format reads them."""
    return FORMATS[detect_format(path)].files(Path(path))


def expand_path(path: PathLike) -> list[Path]:
    """`path` itself, or the files of a brace pattern (`shards/{00000..00099}.tar`, `{a,b}.jsonl`), each of
    which must exist."""
    text = os.fspath(path)
    if "{" not in text or os.path.exists(text):
        return [Path(text)]
    from braceexpand import braceexpand

    paths = [Path(p) for p in braceexpand(text)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(paths)} paths of the pattern {text} do not exist "
                        f"(e.g. {missing[0]})")
    return paths


def open_sink(out: PathLike, fmt: str = "jsonl", shard_size: int = 1000) -> Sink:
    """The writer of format `fmt` (one of WRITE_FORMATS) into the folder `out`."""
    if fmt not in WRITE_FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {list(WRITE_FORMATS)}")
    return FORMATS[fmt].sink(Path(out), shard_size)
