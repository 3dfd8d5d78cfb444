"""Optional training losses of the visual tokenizer (beyond L1 + L2 reconstruction and commitment).

Losses: reconstruction = L1 + L2 (L1 keeps edges sharp, L2 drives PSNR), plus the commitment loss, plus two
optional terms that are off by default: `perceptual_weight` x an L1 loss on image gradients at three scales (a
cheap, download-free edge term; not LPIPS), and `contrastive_weight` x a CLIP-style InfoNCE between the pooled
quantized features and caller-supplied text embeddings (VILA-U's text alignment; `forward(..., text_embeds=)`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gradient_loss(a: torch.Tensor, b: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """L1 between horizontal/vertical image differences at `scales` dyadic scales (edge-aware, download-free)."""
    total = a.new_zeros(())
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        if min(a.shape[-2:]) < 2:
            break
        total = total + F.l1_loss(a.diff(dim=-1), b.diff(dim=-1)) + F.l1_loss(a.diff(dim=-2), b.diff(dim=-2))
    return total


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP-style InfoNCE between paired rows of a (B, C) and b (B, C) (both L2-normalized here);
    `scale` multiplies the cosine similarities."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = scale * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
