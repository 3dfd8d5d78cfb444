"""The visual tokenizer's code grid and the LM's image-token grid.

Code grid. `H' = image_size / downsample` must equal the LM's image-token grid, so that code i is the target
of image token i. With a plain ViT + linear/mlp connector `downsample = vision.patch_size`; the spatial_merge
connector merges `merge_size` x `merge_size` patches into one token, so `downsample = patch_size * merge_size`.
`lm_grid_downsample(model_cfg)` computes it and `check_code_grid(model_cfg)` raises ConfigError on a mismatch.
"""
from __future__ import annotations

from typing import Any

from vlkit.config import ConfigError, VQConfig
from vlkit.models.connectors import CONNECTORS


def check_vq_config(cfg: VQConfig) -> None:
    """Every field in its range and the code grid whole (VQConfig.validate); raises ConfigError naming the key."""
    cfg.validate()


def code_grid_size(cfg: VQConfig) -> int:
    """Codes per side: image_size / downsample."""
    return cfg.image_size // cfg.downsample


def lm_grid_downsample(model_cfg: Any) -> int:
    """Pixels per LM image token along each side for a ModelConfig (what `vq.downsample` must be); each
    connector class says how it maps the vision grid to tokens (`Connector.pixels_per_token`)."""
    return CONNECTORS[model_cfg.connector.type].pixels_per_token(model_cfg.connector, model_cfg.vision)


def check_code_grid(model_cfg: Any) -> None:
    """Raise ConfigError unless the tokenizer's code grid equals the LM's image-token grid."""
    vq = model_cfg.vq
    need = lm_grid_downsample(model_cfg)
    if vq.downsample != need or vq.image_size != model_cfg.vision.image_size:
        raise ConfigError(
            f"vq.downsample={vq.downsample}, vq.image_size={vq.image_size} give a {code_grid_size(vq)}x"
            f"{code_grid_size(vq)} code grid, but the {model_cfg.connector.type} connector at "
            f"vision.image_size={model_cfg.vision.image_size} needs vq.downsample={need} and "
            f"vq.image_size={model_cfg.vision.image_size}")
