"""Scaled dot-product attention shared by the vision encoder and the decoder LM, with one CPU rule.

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
