"""Atomic directory writes shared by every layer (checkpoints, visual tokenizers, exports).

A checkpoint is written into a temporary sibling directory and renamed into place, so a reader never sees half
of one. The published files and folders get the usual modes under the umask (0o644 / 0o755 with umask 022):
a serving account or a container reads checkpoints that a training account wrote.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Callable


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
