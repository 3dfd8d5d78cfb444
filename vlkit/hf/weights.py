"""Reading a Hugging Face model directory's files, and mapping its parameter names onto vlkit's.

HF names map by prefix rules: vlkit's modules already use the SigLIP/CLIP and Llama/Qwen2 names below the prefix.
Loading is strict: a CheckpointError names missing, unexpected and mis-shaped tensors (by vlkit name).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from vlkit.errors import CheckpointError
from vlkit.io import WEIGHTS_FILE, read_json
from vlkit.models.vlm import check_state

INDEX_FILE = WEIGHTS_FILE + ".index.json"  # the list of shards of a sharded checkpoint


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (path / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        bins = [p.name for p in path.glob("*.bin")]
        hint = f" (found {bins}: convert them to safetensors; vlkit never unpickles weights)" if bins else ""
        raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json{hint}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(path / name)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path / name} is missing, corrupt or truncated: {exc}") from None
    return state


# ---------------------------------------------------------------------------------------------------------
# parameter names: prefix rules + strict loading


def rename(state: dict, rules: Sequence[tuple[str, Optional[str]]]) -> dict:
    """Apply the longest matching (hf_prefix -> vlkit_prefix) rule to each key; a None target drops the key.
    Keys no rule matches are kept as they are (and then reported as unexpected)."""
    ordered = sorted(rules, key=lambda r: -len(r[0]))
    out = {}
    for key, value in state.items():
        for src, dst in ordered:
            if key.startswith(src):
                if dst is not None:
                    out[dst + key[len(src):]] = value
                break
        else:
            out[key] = value
    return out


def drop_unused_vision(state: dict, model_vision: nn.Module, prefix: str = "vision.") -> dict:
    """The HF tower has all layers and post_layernorm; vlkit builds only those feeding the selected feature."""
    n_used = len(model_vision.encoder.layers)
    layer = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    out = {}
    for key, value in state.items():
        m = layer.match(key)
        if m and int(m.group(1)) >= n_used:
            continue
        if key.startswith(prefix + "post_layernorm.") and model_vision.post_layernorm is None:
            continue
        if key.startswith(prefix + "head."):  # SigLIP's attention-pooling head: not used by VLMs
            continue
        out[key] = value
    return out


def load_strict(module: nn.Module, state: dict, source: str, optional: Sequence[str] = ()) -> None:
    """Load all of `module`'s tensors from `state`; a CheckpointError names missing, unexpected and mis-shaped
    tensors (by vlkit name)."""
    own = module.state_dict()
    check_state(own, state, source, optional)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)  # copy_ converts bf16/fp16 checkpoints to the model's dtype


VISION_RULES = [("vision_model.", "vision."), ("", "vision."), ("text_model.", None), ("logit_scale", None),
                ("logit_bias", None), ("visual_projection.", None), ("text_projection.", None)]
TEXT_RULES = [("model.", "language."), ("lm_head.", "language.lm_head.")]
LLAVA_RULES = [("vision_tower.vision_model.", "vision."), ("vision_tower.", "vision."),
               ("model.vision_tower.vision_model.", "vision."), ("model.vision_tower.", "vision."),
               ("multi_modal_projector.", "connector."), ("model.multi_modal_projector.", "connector."),
               ("language_model.model.", "language."), ("model.language_model.", "language."),
               ("language_model.lm_head.", "language.lm_head."), ("lm_head.", "language.lm_head.")]
IDEFICS3_RULES = [("model.vision_model.", "vision."), ("model.connector.modality_projection.", "connector."),
                  ("model.text_model.", "language."), ("lm_head.", "language.lm_head.")]


def prefixed(module: nn.Module, prefix: str) -> nn.Module:
    """`module` under the attribute `prefix` (its state dict keys start with it, as the renamed keys do)."""
    holder = nn.Module()
    setattr(holder, prefix.rstrip("."), module)
    return holder

