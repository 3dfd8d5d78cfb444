"""File I/O shared by every layer: atomic directory and file writes, JSON(L) records, file names.

A checkpoint is written into a temporary sibling directory and renamed into place, so a reader never sees half
of one. The published files and folders get the usual modes under the umask (0o644 / 0o755 with umask 022):
a serving account or a container reads checkpoints that a training account wrote.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

from vlkit.errors import CheckpointError

CONFIG_FILE = "config.json"  # a model's (or visual tokenizer's) config inside its directory
WEIGHTS_FILE = "model.safetensors"


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (one per line) or a JSON list file (`[...]`).

    A JSONL line that is not valid JSON is skipped with a warning naming file and line; a JSON list that does not
    parse raises ValueError naming the file. Items that are not objects are dropped.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from None
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{n}: not valid JSON, skipped")
    return [it for it in items if isinstance(it, dict)]


def read_json(path: Path) -> dict:
    """The JSON object in a checkpoint's file; CheckpointError if it is missing, not JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_config(path: Path) -> dict:
    """A model directory's config.json (vlkit checkpoint, Hugging Face model or visual tokenizer)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; expected a vlkit checkpoint or a Hugging Face model")
    return read_json(path / CONFIG_FILE)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented UTF-8 JSON at `path`, written to a temporary sibling and renamed (never half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory in `parent`, created as `mkdir` does (0o777 minus the umask), not
    0o700 as tempfile.mkdtemp does: renamed into place, it is the checkpoint itself."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary directory name {prefix}* in {parent}")


def write_dir_atomically(directory: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary sibling directory, which then replaces `directory` in one rename."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, f".{directory.name}.tmp-")
    try:
        write(tmp)
        usual_modes(tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def usual_modes(root: Path) -> None:
    """Everything under `root` gets the mode of a new folder / file under the umask, read off `root` (made by
    mkdir): some writers create private files (safetensors writes its weights 0o600)."""
    dir_mode = root.stat().st_mode & 0o777
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else dir_mode & 0o666)


def replace_dir(src: Path, dst: Path) -> None:
    """Atomically put directory `src` at `dst` (an old `dst` is moved aside first, then removed)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = make_temp_dir(dst.parent, f".{dst.name}.old-")
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
