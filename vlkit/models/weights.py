"""Model weights on disk and in memory: a directory holds config.json (the model's config as JSON) and
model.safetensors; loading is strict, with errors that name the missing, unexpected and mis-shaped tensors.
VisionLanguageModel and the visual tokenizer both persist through these functions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import torch
from torch import nn

from vlkit.config import ConfigError
from vlkit.errors import CheckpointError
from vlkit.io import CONFIG_FILE, WEIGHTS_FILE, write_json

T = TypeVar("T")


def save_weights(directory: str | Path, config: dict, state: dict, kind: str) -> None:
    """config.json + model.safetensors (tagged `kind` in its metadata) into an existing directory; callers make
    the directory write atomic."""
    from safetensors.torch import save_file

    directory = Path(directory)
    write_json(directory / CONFIG_FILE, config)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "vlkit": kind})


def read_weights(directory: str | Path, what: str, parse: Callable[[dict], T],
                 device: str | torch.device = "cpu") -> tuple[T, dict]:
    """-> (parse(config), state dict on `device`). `what` names the checkpoint in errors: a CheckpointError for
    a missing directory or file, a config that is not JSON or that `parse` rejects (ConfigError), and weights
    safetensors cannot read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{what} {directory} does not exist")
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{what} {directory} is missing {p.name}")
    try:
        cfg = parse(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{cfg_path} is not a valid {what} config: {exc}") from None
    try:
        state = load_file(str(w_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{w_path} is corrupt or truncated: {exc}") from None
    return cfg, state


def checkpoint_dtype(state: dict) -> torch.dtype:
    """The floating dtype most of a checkpoint's weights are stored in (float32 if it has none)."""
    counts: dict[torch.dtype, int] = {}
    for t in state.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def load_state(model: nn.Module, state: dict, source: str, optional: Iterable[str] = ()) -> None:
    """Strict load (but for `optional` tensors) with an error naming missing, unexpected and mis-shaped tensors."""
    tied = getattr(getattr(model, "cfg", None), "text", None)
    optional = set(optional) | ({"language.lm_head.weight"} if tied is not None and tied.tie_word_embeddings else set())
    check_state(model.state_dict(), state, source, optional)
    model.load_state_dict(state, strict=False)


def check_state(own: dict, state: dict, source: str, optional: Iterable[str] = ()) -> None:
    """CheckpointError naming missing, unexpected and mis-shaped tensors of `state` against `own`."""
    missing = sorted(set(own) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:8]}")
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(parts))
