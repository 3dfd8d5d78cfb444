"""Hugging Face datasets saved with `save_to_disk` (a `Dataset` or a `DatasetDict`: every split is read).

vlkit writes the columns id, images, conversations, task, meta (JSON text), mask, extra (JSON text); the
reader also takes `messages` + `images` datasets (TRL, llava-instruct-mix-vsft, LLaMA-Factory). Rows are read
as raw Arrow, so images stay bytes until the reader decodes them (safely) per sample into `image_objects`.
`datasets` is optional and imported when an HF source is read or written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

from vlkit.data.sources.base import DataError, Sink
from vlkit.data.sources.normalize import Reader

ROW_BATCH = 256


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
        for start in range(0, len(ds), ROW_BATCH):
            for i, row in enumerate(arrow[start:start + ROW_BATCH].to_pylist()):
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
    sample = reader.normalize(obj, where, default_id=where)
    if sample is None:
        return None
    mask = row.get("mask")
    return reader.decode(sample, path, mask.get("bytes") if isinstance(mask, dict) else None, where)


class HFSink(Sink):
    """Collects rows, then `Dataset.from_dict(...).save_to_disk(out)` on close."""

    _CORE = ("id", "images", "conversations", "task", "meta")

    def __init__(self, out: Path, shard_size: int = 1000):
        super().__init__(out, shard_size)
        self.datasets = import_datasets()
        self.rows: dict[str, list] = {k: [] for k in ("id", "images", "conversations", "task", "meta", "mask", "extra")}

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        r = self.rows
        r["id"].append(sample["id"])
        r["images"].append([{"bytes": files[rel], "path": rel} for rel in sample["images"]])
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
        table = ds.Dataset.from_dict(self.rows, features=features)
        enabled = ds.is_progress_bar_enabled()
        ds.disable_progress_bars()
        try:
            table.save_to_disk(str(self.out))
        finally:
            if enabled:
                ds.enable_progress_bars()
        self.rows = None
