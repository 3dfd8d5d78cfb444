"""Rotary position embeddings: the LM's 1D RoPE (with HF's rope scaling), Qwen2-VL's M-RoPE (temporal, height,
width position ids for vision tokens) and the vision tower's 2D RoPE for patches.

All tables are half-width: `apply_rope` rotates the pair (x[j], x[j + D/2]) by angle[j], which is HF's
`x * cos + rotate_half(x) * sin` with its full tables [angle, angle].
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from vlkit.errors import ImageTokenError


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's x * cos + rotate_half(x) * sin, bit for bit, from half-width tables and without materialising
    rotate_half(x) = [-x2, x1]."""
    a, b = x.chunk(2, -1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def scale_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """RoPE scaling of HF configs: `linear` divides all frequencies by `factor`; `llama3` (Llama 3.1+) divides
    only the low frequencies and interpolates smoothly in a band between them and the high ones."""
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """The LM's RoPE. With `mrope_section` (Qwen2-VL's M-RoPE; its sections sum to D/2) position ids may be
    (3, B, T): frequency chunk i of the half table takes its angles from axis i % 3 (temporal, height, width).
    (B, T) ids mean the three axes agree (text), which gives exactly the 1D RoPE."""

    def __init__(self, head_dim: int, theta: float, scaling: Optional[dict] = None,
                 mrope_section: Optional[Sequence[int]] = None):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        if scaling is not None:
            inv_freq = scale_inv_freq(inv_freq, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.mrope_section = list(mrope_section) if mrope_section else None

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, D/2): computed once per forward and shared by all layers."""
        freqs = position_ids.float()[..., None] * self.inv_freq  # (3,) B, T, D/2
        if position_ids.dim() == 3:
            if self.mrope_section is None:
                raise ValueError("(3, B, T) position ids need M-RoPE (text.rope: mrope)")
            chunks = freqs.split(self.mrope_section, -1)
            freqs = torch.cat([c[i % 3] for i, c in enumerate(chunks)], -1)
        return freqs.cos().to(dtype)[:, None], freqs.sin().to(dtype)[:, None]


Grid = tuple  # (rows, cols) of an image, or (frames, rows, cols) of a clip's tokens


def mrope_positions(input_ids: torch.Tensor, image_token_id: int, grids: Sequence[Grid],
                    position_ids: torch.Tensor, video_token_id: Optional[int] = None,
                    time_step: float = 1.0) -> torch.Tensor:
    """Qwen2-VL's get_rope_index on top of 1D positions (B, T) -> (3, B, T).

    The vision-token runs of `input_ids` take the token grids `grids` in order (row-major, as the connector emits
    them; a clip's (frames, rows, cols) frame by frame): the token at (f, i, j) of an item starting at position p
    gets (p + int(f * time_step), p + i, p + j), and the text after it continues from p + max(rows, cols) (for an
    image: its largest position + 1). Runs are image tokens, or `video_token_id` tokens when given. Text tokens
    get the same id on all three axes. A 1D position of 0 starts a new sequence (left padding, packed samples)."""
    base = position_ids.tolist()
    out = [[list(row) for row in base] for _ in range(3)]
    slots = {image_token_id} | ({video_token_id} if video_token_id is not None else set())
    grid_iter = iter(grids)
    for b, row in enumerate(input_ids.tolist()):
        shift, t = 0, 0
        while t < len(row):
            if base[b][t] == 0:
                shift = 0
            if row[t] not in slots:
                for axis in range(3):
                    out[axis][b][t] = base[b][t] + shift
                t += 1
                continue
            grid = next(grid_iter, (0, 0))
            frames, rows, cols = (1, *grid) if len(grid) == 2 else grid
            n = frames * rows * cols
            if n == 0 or t + n > len(row) or any(x != row[t] for x in row[t:t + n]):
                raise ImageTokenError("the image-token runs of the prompt do not match its images' token grids")
            start = base[b][t] + shift
            per_frame = rows * cols
            for k in range(n):
                f, r = divmod(k, per_frame)
                out[0][b][t + k] = start + int(f * time_step)
                out[1][b][t + k], out[2][b][t + k] = start + r // cols, start + r % cols
            shift += max(rows, cols) - n
            t += n
    return torch.tensor(out, dtype=position_ids.dtype, device=position_ids.device)


class VisionRotaryEmbedding(nn.Module):
    """2D RoPE for patches (Qwen2-VL's VisionRotaryEmbedding, "axial"): D/4 frequencies
    1 / theta^(2k / (D/2)), k < D/4; the half table is [row * freqs, col * freqs], so the first quarter of
    each rotated pair group turns with the patch row and the second with its column. transformers builds the
    same full table as [rows*f, cols*f, rows*f, cols*f] and applies it with rotate_half, in float32."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        half = head_dim // 2
        self.register_buffer("inv_freq", 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half)),
                             persistent=False)

    def forward(self, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (gh*gw, D/2) float32 for a gh x gw grid in row-major patch order."""
        dev = self.inv_freq.device
        rows = torch.arange(gh, device=dev).repeat_interleave(gw).float()
        cols = torch.arange(gw, device=dev).repeat(gh).float()
        freqs = torch.cat([rows[:, None] * self.inv_freq, cols[:, None] * self.inv_freq], -1)
        return freqs.cos(), freqs.sin()
