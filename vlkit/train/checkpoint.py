"""Periodic training checkpoints with the full trainer state, for exact resume.

    <out>/checkpoints/step-0000120/        a loadable vlkit checkpoint (config.json, model.safetensors, ...)
        trainer_state/optimizer.pt        optimizer state (tensors only; loaded with weights_only=True); under
                                          FSDP the full (unsharded) state, keyed by parameter name
        trainer_state/state.json          stage index, step, epoch, data position, scheduler step, bad-step count
        trainer_state/rng.pt              torch / numpy / python RNG states
        trainer_state/<name>.safetensors  tensors a stage needs to go on exactly (a grpo stage's reference policy)
Writes are atomic (the pipeline writes a temp dir and renames it); only the last `keep_last` are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vlkit.errors import CheckpointError

STATE_DIR = "trainer_state"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def rng_state() -> dict:
    """Tensors for torch.save (weights_only-loadable); python's state goes to state.json."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": torch.tensor(np_state[2])}


def python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_rng_state(s: dict, python_state: list) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), int(s["numpy_pos"])))
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def save_checkpoint(pipe, out: Path, step: int, state: dict, optimizer: torch.optim.Optimizer | dict,
                    keep_last: int, tensors: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> Path:
    """`optimizer`: the optimizer, or its state dict (FSDP: the gathered full state, see distributed.py).
    `tensors`: {name: state dict} written as trainer_state/<name>.safetensors (read back with `load_tensors`)."""
    target = checkpoint_dir(out, step)
    state = dict(state, python_rng=python_rng_state())

    def extra(tmp: Path) -> None:  # written into the pipeline's temp dir, so one rename publishes both
        sd = tmp / STATE_DIR
        sd.mkdir()
        torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), sd / "optimizer.pt")
        torch.save(rng_state(), sd / "rng.pt")
        (sd / "state.json").write_text(json.dumps(state))
        for name, tensors_of in (tensors or {}).items():
            from safetensors.torch import save_file

            # clones: tied weights share storage, which safetensors refuses
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors_of.items()},
                      str(sd / f"{name}.safetensors"))

    pipe.save_pretrained(target, extra=extra)
    prune(out, keep_last)
    return target


def prune(out: Path, keep_last: int) -> None:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    for old in ckpts[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> Optional[Path]:
    ckpts = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / STATE_DIR / "state.json").is_file())
    return ckpts[-1] if ckpts else None


def load_trainer_state(ckpt: Path) -> tuple[dict, Any, dict]:
    sd = ckpt / STATE_DIR
    try:
        state = json.loads((sd / "state.json").read_text())
        opt = torch.load(sd / "optimizer.pt", weights_only=True)
        rng = torch.load(sd / "rng.pt", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"trainer state in {sd} cannot be read ({exc}); delete {ckpt} to resume from an "
                              f"earlier checkpoint") from None
    return state, opt, rng


def load_tensors(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors `save_checkpoint` wrote under `name` into `ckpt`'s trainer state."""
    from safetensors.torch import load_file

    path = ckpt / STATE_DIR / f"{name}.safetensors"
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}); delete {ckpt} to resume from an earlier "
                              "checkpoint") from None


def drop_metrics_after(metrics: Path, global_step: int) -> int:
    """Rewrite `metrics` (metrics.jsonl) atomically without the rows past `global_step` (and any torn line);
    on resume from a checkpoint at that step those rows are logged again. Returns how many rows were dropped."""
    if not metrics.is_file():
        return 0
    lines = metrics.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from the interrupted run
        if isinstance(row, dict) and row.get("global_step", 0) <= global_step:
            keep.append(line)
    if len(keep) < len(lines):
        tmp = metrics.with_name(metrics.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, metrics)
    return len(lines) - len(keep)
