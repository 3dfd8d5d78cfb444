"""Scaled dot-product attention shared by the vision encoder and the decoder LM, with one CPU rule, and varlen
attention over segments of a packed sequence (the vision encoder's images, temporal patches and windows).

Under bf16 autocast on CPU, attention runs in fp32: PyTorch's CPU flash-attention kernel is about 3x slower forward
+ backward in bf16 than in fp32 (measured with torch 2.13 on an AVX-512 CPU without AMX, at the quickstart model's
shapes (32, 4, 88, 32): 24 ms vs 8 ms per layer, the bf16 backward being the slow part), and fp32 attention is
also the more accurate one. The q/k/v casts cost little next to that. On CUDA the autocast dtype is kept (the
flash kernels there are made for bf16/fp16).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
         is_causal: bool = False, enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention, in fp32 under CPU autocast (see the module docstring); the output then
    comes back in v's dtype (the autocast dtype, as the projections made it)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                               is_causal=is_causal, enable_gqa=enable_gqa)
        return y.to(v.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa)


class Segments:
    """Variable-length attention in plain PyTorch: each token of a packed sequence attends only to the tokens of its
    own segment (an image, a clip's temporal patch, a window). The tokens of a segment need not be contiguous.
    Segments of equal length are gathered into one batch for `sdpa`, so attention costs sum(n_i^2), not the
    (sum n_i)^2 of a block-diagonal mask, and no mask is built. The grouping is computed once per forward and
    shared by every layer."""

    def __init__(self, ids: torch.Tensor):
        """ids: (S,) the segment of each token (any integers)."""
        order = torch.argsort(ids, stable=True)
        counts = torch.unique_consecutive(ids[order], return_counts=True)[1].tolist()
        by_length: dict[int, list[torch.Tensor]] = {}
        for seg in order.split(counts):
            by_length.setdefault(len(seg), []).append(seg)
        self.groups = [torch.stack(segs) for segs in by_length.values()]  # (G, L) token indexes each
        self.inverse = torch.argsort(torch.cat([g.flatten() for g in self.groups]))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H, S, d) each -> (B, H, S, d)."""
        b = q.shape[0]
        outs = []
        for idx in self.groups:
            g, n = idx.shape

            def gather(t: torch.Tensor) -> torch.Tensor:  # (B, H, S, d) -> (B * G, H, L, d)
                return t[:, :, idx.flatten()].unflatten(2, (g, n)).transpose(1, 2).flatten(0, 1)

            y = sdpa(gather(q), gather(k), gather(v))
            outs.append(y.unflatten(0, (b, g)).transpose(1, 2).flatten(2, 3))  # (B, H, G * L, d)
        return torch.cat(outs, 2)[:, :, self.inverse]
