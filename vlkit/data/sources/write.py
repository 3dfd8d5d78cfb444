"""Writing samples in any writable format (`write_samples`): a sample becomes a record of relative paths plus
the bytes of its files (`sample_record`), which the format's sink (formats.py) lays out."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from vlkit.data.sources.base import DataError, PathLike, png_bytes, unique_key
from vlkit.data.sources.formats import open_sink


def _read_file(path: str, sid: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"sample {sid}: cannot read {what} {path} ({exc})") from None


def sample_record(sample: dict, index: int = 0, used: Optional[set] = None) -> tuple[dict, dict[str, bytes]]:
    """A sample as `read_samples` yields it (or as a user builds it: `images` paths or `image_objects`) ->
    (sample with paths relative to an output folder, {relative path: bytes}). File names come from the id;
    `used` (a set of names taken so far) keeps two ids that read alike from sharing a file."""
    sid = str(sample.get("id") or f"sample-{index:06d}")
    key = unique_key(sid, used if used is not None else set())
    out = {k: v for k, v in sample.items() if k not in ("image_objects", "mask_object", "image")}
    out["id"] = sid
    if "image_objects" in sample:
        blobs = [(png_bytes(im), "png") for im in sample["image_objects"]]
    else:
        paths = sample.get("images", sample.get("image", []))
        paths = [paths] if isinstance(paths, str) else paths
        blobs = [(_read_file(p, sid, "image"), Path(p).suffix.lstrip(".").lower() or "png") for p in paths]
    files: dict[str, bytes] = {}
    for k, (data, ext) in enumerate(blobs):
        files[f"images/{key}.{ext}" if k == 0 else f"images/{key}.{k}.{ext}"] = data
    out["images"] = list(files)
    meta = sample.get("meta")
    if isinstance(meta, dict) and (meta.get("mask") or sample.get("mask_object") is not None):
        if sample.get("mask_object") is not None:
            data = png_bytes(sample["mask_object"])
        else:
            data = _read_file(meta["mask"], sid, "mask")
        rel = f"masks/{key}.png"
        files[rel] = data
        out["meta"] = {**meta, "mask": rel}
    return out, files


def write_samples(samples: Iterable[dict], out: PathLike, fmt: str = "jsonl", shard_size: int = 1000) -> Path:
    """Write samples (from `read_samples`, or dicts with `images` paths / `image_objects`) to `out` as
    `fmt` (jsonl | webdataset | hf: WRITE_FORMATS). Images are copied byte for byte; decoded images are saved
    as PNG. Returns `out`. Files are named after sample ids (`images/<id>.png`, `images/<id>.1.png` for a second
    image, `masks/<id>.png`; characters other than letters, digits, `_` and `-` become `_`, clashes get a
    suffix)."""
    out = Path(out)
    used: set = set()
    with open_sink(out, fmt, shard_size) as sink:
        for i, sample in enumerate(samples):
            sink.add(*sample_record(sample, i, used))
    return out
