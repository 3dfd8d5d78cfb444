"""Connectors map vision features (B, gh*gw, Dv) on a gh x gw grid to LM embeddings (B, N, Dt).

A registry: `CONNECTORS[name]` is the class; each declares how many tokens it makes for a grid
(`num_tokens`) and how many pixels one token covers along each side (`pixels_per_token`, what a visual
tokenizer's code grid must match).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.config import ConfigError, ConnectorConfig, VisionConfig
from vlkit.models.vision import NORMS, sincos_2d, square_grid


class Connector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, vision_dim: int, text_dim: int):
        super().__init__()
        self.cfg = cfg

    def token_grid(self, gh: int, gw: int) -> tuple[int, int]:
        """The (rows, cols) grid of LM tokens made from a gh x gw patch grid, in row-major token order (the
        height and width position ids of M-RoPE)."""
        return gh, gw

    def num_tokens(self, gh: int, gw: int) -> int:
        rows, cols = self.token_grid(gh, gw)
        return rows * cols

    @classmethod
    def pixels_per_token(cls, cfg: ConnectorConfig, vision: VisionConfig) -> int:
        """Pixels per LM image token along each side at `vision.image_size` (one token per patch here)."""
        return vision.patch_size

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError


class LinearConnector(Connector):
    def __init__(self, cfg, vision_dim, text_dim):
        super().__init__(cfg, vision_dim, text_dim)
        self.proj = nn.Linear(vision_dim, text_dim)

    def forward(self, x, grid):
        return self.proj(x)


class MLPConnector(Connector):
    """LLaVA-1.5: Linear -> GELU -> Linear (names follow llava-hf's multi_modal_projector)."""

    def __init__(self, cfg, vision_dim, text_dim):
        super().__init__(cfg, vision_dim, text_dim)
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, x, grid):
        return self.linear_2(F.gelu(self.linear_1(x)))


class ResamplerConnector(Connector):
    """Qwen-VL: learnable queries, one cross-attention layer; fixed 2D sin-cos position embeddings added to the
    queries (their own square grid) and to the keys (interpolated to the input grid)."""

    def __init__(self, cfg, vision_dim, text_dim):
        super().__init__(cfg, vision_dim, text_dim)
        self.query_grid = square_grid(cfg.num_queries)
        if text_dim % cfg.num_heads:
            raise ValueError(f"resampler: text hidden size {text_dim} not divisible by num_heads={cfg.num_heads}")
        self.query = nn.Parameter(torch.randn(cfg.num_queries, text_dim) * 0.02)
        self.kv_proj = nn.Linear(vision_dim, text_dim, bias=False) if vision_dim != text_dim else nn.Identity()
        self.ln_q = nn.LayerNorm(text_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(text_dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(text_dim, cfg.num_heads, batch_first=True)
        self.ln_post = nn.LayerNorm(text_dim, eps=1e-6)
        self.proj = nn.Linear(text_dim, text_dim)
        self.register_buffer("query_pos", sincos_2d(text_dim, self.query_grid, self.query_grid), persistent=False)

    def token_grid(self, gh, gw):
        return self.query_grid, self.query_grid

    @classmethod
    def pixels_per_token(cls, cfg, vision):
        """The queries form a square grid over the whole image."""
        side = math.isqrt(cfg.num_queries)
        if side * side != cfg.num_queries or vision.image_size % side:
            raise ConfigError(f"connector.num_queries={cfg.num_queries} does not give a square grid dividing "
                              f"vision.image_size={vision.image_size}")
        return vision.image_size // side

    def key_pos(self, gh: int, gw: int, dim: int, device) -> torch.Tensor:
        # the key grid is the query grid's sin-cos table interpolated to the input grid (Qwen-VL's get_abs_pos)
        base = self.query_pos.reshape(1, self.query_grid, self.query_grid, dim).permute(0, 3, 1, 2)
        if (gh, gw) != (self.query_grid, self.query_grid):
            base = F.interpolate(base, size=(gh, gw), mode="bicubic", align_corners=False)
        return base.permute(0, 2, 3, 1).reshape(gh * gw, dim).to(device)

    def forward(self, x, grid):
        kv = self.ln_kv(self.kv_proj(x))
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        pos_k = self.key_pos(grid[0], grid[1], kv.shape[-1], x.device).to(kv.dtype)
        out, _ = self.attn(q + self.query_pos.to(q.dtype), kv + pos_k, kv, need_weights=False)
        return self.proj(self.ln_post(out))


class SpatialMergeConnector(Connector):
    """Youtu-VL / Qwen2-VL: LayerNorm, concatenate each m x m block of patches, 2-layer MLP.
    The vision grid is row-major; each block's patches are concatenated row by row (offset (i, j) at i*m + j),
    which is also Idefics3's pixel-shuffle order. `norm=False, merge_proj="linear"` is Idefics3's connector
    (no LayerNorm, one bias-free Linear named `proj`, like its modality_projection.proj); `norm_type="rmsnorm"` is
    Qwen2.5-VL's merger."""

    def __init__(self, cfg, vision_dim, text_dim):
        super().__init__(cfg, vision_dim, text_dim)
        m = cfg.merge_size
        self.ln_q = NORMS[cfg.norm_type](vision_dim, eps=1e-6) if cfg.norm else nn.Identity()
        if cfg.merge_proj == "linear":
            self.proj = nn.Linear(vision_dim * m * m, text_dim, bias=False)
        else:
            self.proj = None
            self.mlp = nn.Sequential(nn.Linear(vision_dim * m * m, vision_dim * m * m), nn.GELU(),
                                     nn.Linear(vision_dim * m * m, text_dim))

    @classmethod
    def pixels_per_token(cls, cfg, vision):
        return vision.patch_size * cfg.merge_size

    def token_grid(self, gh, gw):
        m = self.cfg.merge_size
        if gh % m or gw % m:
            raise ValueError(f"spatial_merge needs a patch grid divisible by merge_size={m}, got {gh}x{gw}")
        return gh // m, gw // m

    def forward(self, x, grid):
        gh, gw = grid
        m = self.cfg.merge_size
        self.token_grid(gh, gw)
        b, _, d = x.shape
        x = self.ln_q(x).view(b, gh // m, m, gw // m, m, d).permute(0, 1, 3, 2, 4, 5)  # blocks contiguous
        x = x.reshape(b, (gh // m) * (gw // m), m * m * d)
        return self.proj(x) if self.proj is not None else self.mlp(x)


CONNECTORS: dict[str, type[Connector]] = {
    "linear": LinearConnector,
    "mlp": MLPConnector,
    "resampler": ResamplerConnector,
    "spatial_merge": SpatialMergeConnector,
}


def build_connector(cfg: ConnectorConfig, vision_dim: int, text_dim: int) -> Connector:
    return CONNECTORS[cfg.type](cfg, vision_dim, text_dim)
