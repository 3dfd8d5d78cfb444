"""Reconstruction and codebook metrics of the visual tokenizer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB; default range 2 for [-1, 1] pixels (use 1 or 255 for other scales)."""
    mse = F.mse_loss(a.detach().float(), b.detach().float()).item()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(data_range ** 2 / mse)


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    return torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).float()


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codebook that occurs at least once in `codes` (all depths pooled)."""
    return (code_histogram(codes, codebook_size) > 0).float().mean().item()


def perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code distribution: the effective number of codes in use (max = codebook_size)."""
    hist = code_histogram(codes, codebook_size)
    p = hist / hist.sum().clamp(min=1)
    return math.exp(-(p * torch.log(p.clamp(min=1e-12))).sum().item())
