"""Residual vector quantizer with an EMA codebook (the visual tokenizer's bottleneck).

Quantizer (VQ-VAE-2 / RQ-VAE style):
- the codebook is a buffer updated by exponential moving averages (decay `ema_decay`) of cluster sizes and
  of the sums of assigned vectors, with Laplace smoothing of cluster sizes; it gets no gradient;
- dead-code restart: a code whose EMA cluster size falls below `dead_code_threshold` x the mean cluster size
  (a fraction of an average code's usage, so the knob does not depend on batch or codebook size) is
  re-initialized from random current encoder outputs (for depth > 1: the residuals of all depths, which include
  the encoder outputs) and starts again at the threshold, so an unlucky restart is retried at the next step;
- commitment loss `commitment_weight * mean ||z - sg(q)||^2` (averaged over depths), and the straight-through
  estimator `z + sg(q - z)`: the encoder receives exactly the gradient of the decoder input;
- residual quantization of depth D with one shared codebook: depth d quantizes what depths < d left over, the
  quantized feature is the sum of the D code vectors (`embed_codes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (M, C) straight-through: forward value = sum of code vectors, gradient -> z
    codes: torch.Tensor  # (M, D) long
    commit_loss: torch.Tensor  # scalar, unweighted
    residual_error: torch.Tensor  # scalar, mean ||z - q||^2 (no gradient)


class ResidualVectorQuantizer(nn.Module):
    """EMA codebook shared by D residual depths; inputs are flat (M, C) vectors."""

    def __init__(self, codebook_size: int, code_dim: int, depth: int = 1, ema_decay: float = 0.99,
                 dead_code_threshold: float = 1e-3, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.code_dim, self.depth = codebook_size, code_dim, depth
        self.ema_decay, self.dead_code_threshold, self.eps = ema_decay, dead_code_threshold, eps
        # buffers, not parameters: the codebook learns only from the EMA updates
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.last_restarts = 0

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the closest code (squared L2) for each row of x (M, C)."""
        cb = self.codebook
        dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ cb.t() + cb.pow(2).sum(1)[None]
        return dist.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (..., D) -> summed code vectors (..., C)."""
        return F.embedding(codes, self.codebook).sum(-2)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Greedy residual quantization: (sum of code vectors, codes (M, D), the residual fed to each depth)."""
        residual, total = z, torch.zeros_like(z)
        codes, inputs = [], []
        for _ in range(self.depth):
            idx = self.nearest(residual)
            vec = self.codebook[idx]
            inputs.append(residual)
            codes.append(idx)
            total = total + vec
            residual = residual - vec
        return total, torch.stack(codes, 1), inputs

    def forward(self, z: torch.Tensor, update: Optional[bool] = None) -> QuantizerOutput:
        """Quantize z (M, C); in training mode (or update=True) also apply the EMA update and restarts."""
        update = self.training if update is None else update
        z = z.float()  # distances and EMA statistics in fp32, also under bf16 autocast
        with torch.no_grad():
            if update and not bool(self.initialized):
                self.init_from(z.detach())
            q, codes, inputs = self.quantize(z.detach())
            if update:
                self.ema_update(torch.cat(inputs), codes.t().reshape(-1))
                self.restart_dead_codes(torch.cat(inputs))
                # the codebook moved: requantize so that codes and q match the codebook that is saved
                q, codes, _ = self.quantize(z.detach())
        # commitment: pull the encoder towards its (cumulative) quantization at every depth
        commit = z.new_zeros(())
        cum = torch.zeros_like(z)
        for d in range(self.depth):
            cum = cum + self.codebook[codes[:, d]]
            commit = commit + F.mse_loss(z, cum.detach())
        commit = commit / self.depth
        quantized = z + (q - z).detach()  # straight-through
        return QuantizerOutput(quantized, codes, commit, F.mse_loss(z.detach(), q))

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """Data-dependent init: the codebook starts as random encoder outputs (no dead codes from a bad scale)."""
        idx = torch.randint(0, x.shape[0], (self.codebook_size,), device=x.device)
        self.codebook.copy_(x[idx])
        _broadcast(self.codebook)
        # cluster sizes start at zero: codes that win no vector in the first step are restarted right away
        self.cluster_size.zero_()
        self.embed_sum.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA of cluster sizes and vector sums, Laplace-smoothed sizes, codebook = sums / sizes."""
        onehot = F.one_hot(idx, self.codebook_size).type(x.dtype)  # (M, K)
        counts = onehot.sum(0)
        sums = onehot.t() @ x
        counts, sums = _all_reduce(counts), _all_reduce(sums)
        d = self.ema_decay
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        # codes with no EMA mass keep their vector (0/0 otherwise); the restart below handles them
        alive = self.cluster_size > 0
        self.codebook[alive] = self.embed_sum[alive] / smoothed[alive, None]

    def dead_codes(self) -> torch.Tensor:
        """Boolean mask of codes whose EMA usage is below `dead_code_threshold` x the mean usage."""
        mean = self.cluster_size.mean()
        if mean <= 0:
            return torch.ones_like(self.cluster_size, dtype=torch.bool)
        return self.cluster_size < self.dead_code_threshold * mean

    @torch.no_grad()
    def restart_dead_codes(self, x: torch.Tensor) -> int:
        """Re-initialize exactly the dead codes from random rows of x (current encoder outputs/residuals)."""
        dead = self.dead_codes()
        n_dead = int(dead.sum())
        self.last_restarts = n_dead
        if n_dead == 0:
            return 0
        pick = torch.randint(0, x.shape[0], (n_dead,), device=x.device)
        new = x[pick].to(self.codebook.dtype)
        new = _broadcast(new)
        floor = self.dead_code_threshold * self.cluster_size.mean().clamp(min=self.eps)
        self.codebook[dead] = new
        self.cluster_size[dead] = floor  # at the threshold: unused again next step -> restarted again
        self.embed_sum[dead] = new * floor
        return n_dead


def _dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():  # DDP: every rank applies the same EMA update
        torch.distributed.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor on every rank (restart samples are drawn on each rank; rank 0's are used)."""
    if _dist_on():
        t = t.contiguous()
        torch.distributed.broadcast(t, src=0)
    return t
