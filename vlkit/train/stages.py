"""Training stages: which modules train (LLaVA-1.5 / Qwen-VL style), their learning rates, and what a stage kind
changes in the loop. STAGES is the registry of the kinds a stage's `train:` names:

    vision     vision encoder + connector (+ the word embeddings) on per-patch labels alone: NTP-M at the
               connector's output (needs dense_prediction, dense_from: connector and data with masks); the LM
               is not run, so a step costs the vision side only. A from-scratch tower's supervised pretraining,
               before the LM reads it. The word embeddings train too: against frozen random word vectors a
               per-patch multi-label loss collapses to chance (docs/training.md).
    align      connector only (vision encoder and LM frozen)
    multitask  everything
    sft        connector + LM (vision encoder frozen)
    lora       LoRA adapters on the LM (+ connector), base weights frozen
    grpo       connector + LM as sft, learning from the rewards of sampled completions (vlkit.train.grpo; with
               grpo.lora: adapters on the LM + connector, as lora)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from vlkit.config import ConfigError, StageConfig

log = logging.getLogger("vlkit.train")


@dataclass(frozen=True)
class StageKind:
    trainable: tuple[str, ...]  # top-level modules or dotted submodules whose parameters train
    uses_lora: bool = False  # adapters are added before the stage and merged into plain weights at its end
    runs_language: bool = True  # False: the loss is the per-patch loss at the connector, the LM is skipped
    dense_at_connector: bool = False  # learns per-patch labels at the connector (needs dense_from: connector)
    trains_everything: bool = False  # every parameter gets a gradient (DDP need not look for unused ones)
    samples_rollouts: bool = False  # the step samples completions and learns from their rewards (vlkit.train.grpo)

    def adds_lora(self, stage: StageConfig) -> bool:
        """Whether the stage trains LoRA adapters (merged into plain weights at its end): always for `lora`, and for
        a grpo stage with grpo.lora."""
        return self.uses_lora or bool(stage.grpo is not None and stage.grpo.lora)

    def trains(self, stage: StageConfig) -> tuple[str, ...]:
        """The modules that train fully in `stage` (adapter parameters train besides): with LoRA the connector,
        as LLaVA's LoRA recipe."""
        return ("connector",) if self.adds_lora(stage) else self.trainable


STAGES = {
    "vision": StageKind(("vision", "connector", "language.embed_tokens", "language.lm_head"), runs_language=False,
                        dense_at_connector=True),
    "align": StageKind(("connector",)),
    "multitask": StageKind(("vision", "connector", "language", "depth"), trains_everything=True),
    "sft": StageKind(("connector", "language", "depth")),  # depth: the residual-code depth transformer (VLUAS, D > 1)
    "lora": StageKind(("connector",), uses_lora=True),  # plus adapter parameters added by vlkit.models.lora
    "grpo": StageKind(("connector", "language", "depth"), samples_rollouts=True),
}


def stage_kind(stage: StageConfig) -> StageKind:
    """The registry entry of `stage.train` (StageConfig has checked it names one)."""
    return STAGES[stage.train]


def check_vision_stage(stage: StageConfig, cfg) -> None:
    """A stage that learns per-patch targets at the connector needs them; say what is missing."""
    if stage_kind(stage).dense_at_connector and not (cfg.dense_prediction and cfg.dense_from == "connector"):
        raise ConfigError(f"stage {stage.name!r}: train: {stage.train} learns per-patch labels at the connector; set "
                          "model.dense_prediction: true and model.dense_from: connector, and give it data with "
                          "masks (e.g. a synth stream with dense_labels: true)")


def apply_stage(model: nn.Module, stage: StageConfig) -> dict:
    """Sets requires_grad per module; returns {"trainable": n, "frozen": n} parameter counts (also logged)."""
    parts = stage_kind(stage).trains(stage)
    for name, p in model.named_parameters():
        p.requires_grad_(any(name == part or name.startswith(part + ".") for part in parts) or "lora_" in name)
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
