"""Writing samples in any writable format (`write_samples`): a sample becomes a record of relative paths plus
the bytes of its files (`sample_record`), which the format's sink (formats.py) lays out."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from vlkit.data.sources.base import DataError, PathLike, png_bytes, unique_key
from vlkit.data.sources.formats import open_sink
from vlkit.video import frame_files


def _read_file(path: str, sid: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"sample {sid}: cannot read {what} {path} ({exc})") from None


def _ext(name, default: str) -> str:
    name = name if isinstance(name, str) else ""
    return Path(name).suffix.lstrip(".").lower() or default


def sample_record(sample: dict, index: int = 0, used: Optional[set] = None) -> tuple[dict, dict[str, bytes]]:
    """A sample as `read_samples` yields it (or as a user builds it: `images` paths or `image_objects`, `videos`
    paths or `video_objects`) -> (sample with paths relative to an output folder, {relative path: bytes}). File
    names come from the id; `used` (a set of names taken so far) keeps two ids that read alike from sharing a
    file."""
    sid = str(sample.get("id") or f"sample-{index:06d}")
    key = unique_key(sid, used if used is not None else set())
    out = {k: v for k, v in sample.items() if k not in _HELD}
    out["id"] = sid
    if "image_objects" in sample:
        blobs = [(png_bytes(im), "png") for im in sample["image_objects"]]
    elif "image_bytes" in sample:  # read with decode_images=False
        blobs = [(b, _ext(name, "png")) for b, name in zip(sample["image_bytes"], sample.get("images", []))]
    else:
        paths = sample.get("images", sample.get("image", []))
        paths = [paths] if isinstance(paths, str) else paths
        blobs = [(_read_file(p, sid, "image"), _ext(p, "png")) for p in paths]
    files: dict[str, bytes] = {}
    for k, (data, ext) in enumerate(blobs):
        files[f"images/{key}.{ext}" if k == 0 else f"images/{key}.{k}.{ext}"] = data
    out["images"] = list(files)
    clips = _clips(sample, sid)
    if clips:
        out["videos"] = []
        for k, clip in enumerate(clips):
            stem = f"videos/{key}" if k == 0 else f"videos/{key}.{k}"
            if isinstance(clip, tuple):  # a video file
                files[f"{stem}.{clip[1]}"] = clip[0]
                out["videos"].append(f"{stem}.{clip[1]}")
            else:
                names = [f"{stem}/{t:03d}.{ext}" for t, (_, ext) in enumerate(clip)]
                files.update({name: data for name, (data, _) in zip(names, clip)})
                out["videos"].append(names)
    meta = sample.get("meta")
    if isinstance(meta, dict) and (meta.get("mask") or sample.get("mask_object") is not None
                                   or sample.get("mask_bytes") is not None):
        if sample.get("mask_object") is not None:
            data = png_bytes(sample["mask_object"])
        elif sample.get("mask_bytes") is not None:
            data = sample["mask_bytes"]
        else:
            data = _read_file(meta["mask"], sid, "mask")
        rel = f"masks/{key}.png"
        files[rel] = data
        out["meta"] = {**meta, "mask": rel}
    return out, files


_HELD = ("image_objects", "mask_object", "image", "image_bytes", "mask_bytes", "video_objects", "video_bytes")


def _clips(sample: dict, sid: str) -> list:
    """The sample's clips as data: (bytes, extension) for a video file, [(bytes, extension)] for frames. Decoded
    frames (`video_objects`) become PNGs; a video file is copied byte for byte; a frame folder becomes its frames
    (in natural order)."""
    if "video_objects" in sample:
        return [[(png_bytes(f), "png") for f in clip] for clip in sample["video_objects"]]
    names = sample.get("videos") or []
    if "video_bytes" in sample:  # read with decode_images=False
        return [(data, _ext(name, "mp4")) if isinstance(data, bytes) else
                [(f, _ext(n, "png")) for f, n in zip(data, name if isinstance(name, list) else [None] * len(data))]
                for data, name in zip(sample["video_bytes"], names)]
    out = []
    for clip in names:
        if isinstance(clip, str) and Path(clip).is_dir():
            clip = [str(f) for f in frame_files(Path(clip))]
        if isinstance(clip, str):
            out.append((_read_file(clip, sid, "video"), _ext(clip, "mp4")))
        else:
            out.append([(_read_file(f, sid, "video frame"), _ext(f, "png")) for f in clip])
    return out


def write_samples(samples: Iterable[dict], out: PathLike, fmt: str = "jsonl", shard_size: int = 1000) -> Path:
    """Write samples (from `read_samples`, or dicts with `images` paths / `image_objects`) to `out` as
    `fmt` (jsonl | webdataset | hf: WRITE_FORMATS). Images and video files are copied byte for byte (from
    files, or from the bytes of a `decode_images=False` read); decoded images and frames are saved as PNG.
    Returns `out`. Files are named after sample ids (`images/<id>.png`, `images/<id>.1.png` for a second image,
    `masks/<id>.png`, a clip `videos/<id>.mp4` or `videos/<id>/000.png`, ..., a second clip `videos/<id>.1.mp4`
    or `videos/<id>.1/000.png`; characters other than letters, digits, `_` and `-` become `_`, clashes get a
    suffix); each format lays them out its way (tar members: webdataset.py)."""
    out = Path(out)
    used: set = set()
    with open_sink(out, fmt, shard_size) as sink:
        for i, sample in enumerate(samples):
            sink.add(*sample_record(sample, i, used))
    return out
