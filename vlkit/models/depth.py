"""Depth transformer for residual visual codes (RQ-Transformer, Lee et al. 2022; VILA-U).

A residual tokenizer of depth D gives D codes per image position. The LM runs once per position and
produces a hidden state h; this small causal transformer then runs over the D depth steps of that position:

    step 0 input: proj(h)                        -> logits for code 0
    step d input: embed(code d-1) + depth_pos[d] -> logits for code d   (attends to steps 0..d)

so code d is predicted from h and codes 0..d-1 only. Training uses teacher forcing: `forward(h, codes)` returns
logits (B, N, D, K) for all depths at once. Generation calls `sample(h, ...)`, one depth step at a time; a
`prefix` of known codes (e.g. code 0 taken from the LM head) is kept and only the remaining depths are sampled.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlkit.errors import UserError
from vlkit.models.attention import sdpa
from vlkit.models.sampling import sample


class DepthInputError(UserError):
    """Hidden states or codes handed to the depth transformer have the wrong shape or range."""


class _Block(nn.Module):
    """Pre-norm causal self-attention + GELU MLP."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        att = sdpa(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class DepthTransformer(nn.Module):
    """Predicts the D residual codes of one position from the LM hidden state (see module docstring).

    hidden_size: the LM's hidden size (width of h); codebook_size: K; depth: D;
    dim: the transformer's own width (default min(hidden_size, 256): it is tiny next to the LM).
    """

    def __init__(self, hidden_size: int, codebook_size: int, depth: int, num_layers: int = 2, num_heads: int = 4,
                 dim: Optional[int] = None):
        super().__init__()
        dim = dim or min(hidden_size, 256)
        for name, value in (("hidden_size", hidden_size), ("codebook_size", codebook_size), ("depth", depth),
                            ("num_layers", num_layers), ("num_heads", num_heads), ("dim", dim)):
            if not isinstance(value, int) or value <= 0:
                raise DepthInputError(f"DepthTransformer {name}={value!r} must be a positive integer")
        if dim % num_heads:
            raise DepthInputError(f"DepthTransformer dim={dim} must be divisible by num_heads={num_heads}")
        self.hidden_size, self.codebook_size, self.depth, self.dim = hidden_size, codebook_size, depth, dim
        self.in_proj = nn.Linear(hidden_size, dim)
        self.code_embed = nn.Embedding(codebook_size, dim)
        self.depth_pos = nn.Parameter(torch.zeros(depth, dim))
        nn.init.normal_(self.depth_pos, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size)

    def _inputs(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """h (M, H), codes (M, T-1) -> step inputs (M, T, dim): proj(h), then the embeddings of the codes."""
        x = self.in_proj(h)[:, None]
        if codes.shape[1]:
            x = torch.cat([x, self.code_embed(codes)], 1)
        return x + self.depth_pos[: x.shape[1]]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def _check(self, h: torch.Tensor, codes: Optional[torch.Tensor], max_depth: int) -> None:
        if h.ndim not in (2, 3) or h.shape[-1] != self.hidden_size:
            raise DepthInputError(f"h must be (B, N, {self.hidden_size}) or (B, {self.hidden_size}), "
                                  f"got {tuple(h.shape)}")
        if codes is None:
            return
        if codes.shape[:-1] != h.shape[:-1] or codes.shape[-1] > max_depth or codes.dtype.is_floating_point:
            raise DepthInputError(f"codes must be integers of shape {tuple(h.shape[:-1])} + (<= {max_depth},), "
                                  f"got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise DepthInputError(f"codes must be in [0, {self.codebook_size}), got values in "
                                  f"[{codes.min().item()}, {codes.max().item()}]")

    def forward(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. h (B, N, H), codes (B, N, D) -> logits (B, N, D, K); logits[..., d, :] see codes < d."""
        self._check(h, codes, self.depth)
        if codes.shape[-1] != self.depth:
            raise DepthInputError(f"codes must have depth {self.depth}, got {codes.shape[-1]}")
        lead = h.shape[:-1]
        x = self._inputs(h.reshape(-1, self.hidden_size), codes.reshape(-1, self.depth)[:, :-1].long())
        return self._run(x).reshape(*lead, self.depth, self.codebook_size)

    def loss(self, h: torch.Tensor, codes: torch.Tensor, start_depth: int = 0) -> torch.Tensor:
        """Mean cross-entropy over depths >= start_depth (start_depth=1 when the LM head predicts code 0)."""
        logits = self(h, codes)[..., start_depth:, :]
        return F.cross_entropy(logits.float().reshape(-1, self.codebook_size), codes[..., start_depth:].reshape(-1).long())

    @torch.no_grad()
    def sample(self, h: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               generator: Optional[torch.Generator] = None, prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h (B, N, H) or (B, H) -> codes (B, N, D) or (B, D). temperature 0 is greedy.

        `prefix` (..., P) holds known first codes, which are kept; depths P..D-1 are sampled.
        """
        self._check(h, prefix, self.depth)
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise DepthInputError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got temperature={temperature}, "
                                  f"top_p={top_p}, top_k={top_k}")
        lead = h.shape[:-1]
        hf = h.reshape(-1, self.hidden_size)
        codes = prefix.reshape(hf.shape[0], -1).long() if prefix is not None else hf.new_zeros((hf.shape[0], 0), dtype=torch.long)
        while codes.shape[1] < self.depth:
            # D is small (2-4): rerunning the prefix is cheaper to read than a KV cache and costs little
            logits = self._run(self._inputs(hf, codes))[:, -1].float()
            nxt = sample(logits, temperature, top_k, top_p, generator)
            codes = torch.cat([codes, nxt[:, None]], 1)
        return codes.reshape(*lead, self.depth)

