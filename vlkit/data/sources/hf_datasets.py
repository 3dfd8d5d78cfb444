"""Hugging Face datasets saved with `save_to_disk` (a `Dataset` or a `DatasetDict`: every split is read).

vlkit writes the columns id, images, conversations, task, meta (JSON text), mask, extra (JSON text) and, when a
sample has clips, videos: a list of clips in `<video>` order, each `{"frames": [Image], "file": {bytes, path}}`
(frames as `datasets.Image`, or a video file's bytes; the other field empty). The reader also takes `messages` +
`images` datasets (TRL, llava-instruct-mix-vsft, LLaMA-Factory), and a `videos` column of paths (each clip a video
file or frame-folder path or a list of frame paths, relative to `image_folder` or the dataset folder) or of
`datasets.Video` values. Rows are read as raw Arrow, so images and clips stay bytes until the reader decodes them
(safely) per sample into `image_objects` / `video_objects`.
`datasets` is optional and imported when an HF source is read or written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

from vlkit.data.sources.base import DataError, Sink
from vlkit.data.sources.normalize import ClipData, Reader

ROW_BATCH = 256  # rows taken from Arrow at a time
VIDEO_ROW_BATCH = 8  # ... when rows hold clips (a video file may be large)


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("the HF format needs the optional package `datasets`: pip install 'vlkit[data]'") from None
    return datasets


def is_hf_dataset(folder: Path) -> bool:
    """A folder that `save_to_disk` wrote (a DatasetDict or a Dataset)."""
    return (folder / "dataset_dict.json").is_file() or \
        ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def read_hf(reader: Reader, path: Path) -> Iterator[dict]:
    """The samples of every split of a saved dataset."""
    datasets = import_datasets()
    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path} looks like a saved HF dataset but cannot be loaded ({type(exc).__name__}: {exc})")
    parts = [("", obj)] if isinstance(obj, datasets.Dataset) else [(f"[{k}]", obj[k]) for k in obj]
    for split, ds in parts:
        reader.stats.files += 1
        columns = set(ds.column_names)
        if not columns & {"conversations", "messages"}:
            raise DataError(f"{path}{split} has no `conversations` or `messages` column "
                            f"(columns: {sorted(columns)})")
        arrow = ds.with_format("arrow")  # raw Arrow rows: images stay bytes here and are decoded per sample
        batch = VIDEO_ROW_BATCH if "videos" in columns else ROW_BATCH
        for start in range(0, len(ds), batch):
            for i, row in enumerate(arrow[start:start + batch].to_pylist()):
                sample = hf_sample(reader, row, path, f"{path}{split}: row {start + i}")
                if sample is not None:
                    yield sample


def hf_sample(reader: Reader, row: dict, path: Path, where: str) -> Optional[dict]:
    """One row: vlkit's `meta` / `extra` JSON text columns are parsed back into the sample."""
    obj: dict = {k: row[k] for k in ("id", "conversations", "messages", "images", "image", "task")
                 if row.get(k) is not None}
    try:
        if row.get("meta") is not None:
            obj["meta"] = json.loads(row["meta"]) if isinstance(row["meta"], str) else row["meta"]
        if row.get("extra"):
            obj.update(json.loads(row["extra"]))
    except ValueError as exc:
        reader.skip("malformed_json", where, f"`meta`/`extra` is not valid JSON ({exc})")
        return None
    videos = row.get("videos") or []
    as_paths = all(isinstance(c, str) or (isinstance(c, list) and all(isinstance(f, str) for f in c)) for c in videos)
    held = [] if as_paths else video_refs(reader, videos, obj.get("id"), where)
    if held is None:
        return None
    if videos:
        obj["videos"] = videos if as_paths else [name for name, _ in held]
    sample = reader.normalize(obj, where, default_id=where)
    if sample is None:
        return None
    if as_paths and sample.get("videos") and not reader.resolve_videos(sample, path, where):
        return None
    clips: list[ClipData] = []
    for _, ref in held:
        parts = []
        for part in (ref if isinstance(ref, list) else [ref]):
            if (data := reader.ref_bytes(part, path, where, "video")) is None:
                return None
            parts.append(data)
        clips.append(parts if isinstance(ref, list) else parts[0])
    mask = row.get("mask")
    return reader.decode(sample, path, mask.get("bytes") if isinstance(mask, dict) else None, where, clips)


def video_refs(reader: Reader, videos: list, sid: Any, where: str) -> Optional[list[tuple[Any, Any]]]:
    """The clips of a `videos` column that holds data, as (name, reference): a video file's {bytes, path}, or a
    list of its frames' {bytes, path} (`datasets.Image` values). None (after counting) for a malformed one."""
    out: list[tuple[Any, Any]] = []
    for k, clip in enumerate(videos):
        if isinstance(clip, dict) and clip.get("frames"):
            frames = clip["frames"]
            if not all(isinstance(f, dict) and (f.get("bytes") is not None or isinstance(f.get("path"), str))
                       for f in frames):
                break
            out.append(([f.get("path") or f"{sid}.video{k}.{t:03d}.png" for t, f in enumerate(frames)], frames))
            continue
        file = clip.get("file") if isinstance(clip, dict) and "file" in clip else clip  # or a datasets.Video value
        if not (isinstance(file, dict) and (file.get("bytes") is not None or isinstance(file.get("path"), str))):
            break
        out.append((file.get("path") or f"{sid}.video{k}.mp4", file))
    else:
        return out
    reader.skip("malformed_sample", where, f"`videos` clip {k} must be a video file ({{bytes, path}}) or frames "
                f"({{frames: [...]}}), or every clip a path or list of frame paths; got {str(clip)[:80]}")
    return None


class HFSink(Sink):
    """Collects rows, then `Dataset.from_dict(...).save_to_disk(out)` on close."""

    _CORE = ("id", "images", "conversations", "task", "meta", "videos")

    def __init__(self, out: Path, shard_size: int = 1000):
        super().__init__(out, shard_size)
        self.datasets = import_datasets()
        self.rows: dict[str, list] = {k: [] for k in ("id", "images", "conversations", "task", "meta", "mask", "extra",
                                                      "videos")}

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        r = self.rows
        r["id"].append(sample["id"])
        r["images"].append([{"bytes": files[rel], "path": rel} for rel in sample.get("images", [])])
        r["videos"].append([{"frames": [], "file": {"bytes": files[clip], "path": clip}} if isinstance(clip, str) else
                            {"frames": [{"bytes": files[f], "path": f} for f in clip], "file": None}
                            for clip in sample.get("videos", [])])
        r["conversations"].append([{"from": t["from"], "value": t["value"]} for t in sample["conversations"]])
        r["task"].append(sample.get("task"))
        meta = sample.get("meta")
        r["meta"].append(json.dumps(meta, ensure_ascii=False) if meta is not None else None)
        mask = (meta or {}).get("mask")
        r["mask"].append({"bytes": files[mask], "path": mask} if mask else None)
        extra = {k: v for k, v in sample.items() if k not in self._CORE}
        r["extra"].append(json.dumps(extra, ensure_ascii=False) if extra else None)

    def close(self) -> None:
        if self.rows is None:
            return
        ds = self.datasets
        features = ds.Features({
            "id": ds.Value("string"), "images": [ds.Image()],
            "conversations": [{"from": ds.Value("string"), "value": ds.Value("string")}],
            "task": ds.Value("string"), "meta": ds.Value("string"), "mask": ds.Image(), "extra": ds.Value("string"),
        })
        if any(self.rows["videos"]):  # only then: datasets without clips keep their columns
            features["videos"] = [{"frames": [ds.Image()], "file": {"bytes": ds.Value("binary"),
                                                                     "path": ds.Value("string")}}]
        else:
            del self.rows["videos"]
        table = ds.Dataset.from_dict(self.rows, features=features)
        enabled = ds.is_progress_bar_enabled()
        ds.disable_progress_bars()
        try:
            table.save_to_disk(str(self.out))
        finally:
            if enabled:
                ds.enable_progress_bars()
        self.rows = None
