"""Training stages: which modules train (LLaVA-1.5 / Qwen-VL style) and their learning rates.

    align      connector only (vision encoder and LM frozen)
    multitask  everything
    sft        connector + LM (vision encoder frozen)
    lora       LoRA adapters on the LM (+ connector), base weights frozen
"""
from __future__ import annotations

import logging

from torch import nn

from vlkit.config import ConfigError, StageConfig

log = logging.getLogger("vlkit.train")

TRAINABLE = {
    "align": ("connector",),
    "multitask": ("vision", "connector", "language", "depth"),
    "sft": ("connector", "language", "depth"),  # depth: the residual-code depth transformer (VLUAS, D > 1)
    "lora": ("connector",),  # plus adapter parameters added by vlkit.models.lora
}


def check_stage_kind(stage: StageConfig, key: str = "stage.train") -> None:
    """`train:` names an entry of TRAINABLE (the registry is the only list of stage kinds)."""
    if stage.train not in TRAINABLE:
        raise ConfigError(f"{key}={stage.train!r} is unknown; choose one of {sorted(TRAINABLE)}")


def apply_stage(model: nn.Module, stage: StageConfig) -> dict:
    """Sets requires_grad per module; returns {"trainable": n, "frozen": n} parameter counts (also logged)."""
    check_stage_kind(stage, f"stage {stage.name!r}: train")
    parts = TRAINABLE[stage.train]
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        p.requires_grad_(top in parts or "lora_" in name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    log.info("stage %s (%s): %s trainable, %s frozen parameters", stage.name, stage.train, f"{trainable:,}", f"{frozen:,}")
    return {"trainable": trainable, "frozen": frozen}


def param_groups(model: nn.Module, stage: StageConfig, weight_decay: float) -> list[dict]:
    """One AdamW group per top-level module, each with its own learning rate; no decay on norms and biases."""
    lrs = {"vision": stage.lr_vision, "connector": stage.lr_connector, "language": stage.lr_text, "depth": stage.lr_text}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".")[0]
        lr = lrs.get(top) or stage.lr
        decay = weight_decay if p.dim() >= 2 and "embed" not in name else 0.0
        g = groups.setdefault((top, decay), {"params": [], "lr": lr, "weight_decay": decay, "name": f"{top}"})
        g["params"].append(p)
    return list(groups.values())
