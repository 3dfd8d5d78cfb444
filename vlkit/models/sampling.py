"""Picking token ids from logits: greedy, temperature, top-k and nucleus (top-p) filtering.

The one home for sampling: text generation (vlkit.infer), the serving engine and the depth transformer's
residual visual codes all call `sample`.
"""
from __future__ import annotations

from typing import Optional

import torch

MIN_TEMPERATURE = 1e-3  # below it the distribution is one-hot anyway; smaller ones would overflow float32 logits


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the top-k tokens and the smallest set whose probability reaches top_p."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep tokens until the mass before them reaches top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: Optional[torch.Generator] = None, vocab_limit: Optional[int] = None,
           suppress: tuple[int, ...] = ()) -> torch.Tensor:
    """(M, V) logits -> (M,) ids. temperature 0 is argmax; otherwise top-k, then top-p filtering of
    logits / temperature (at least MIN_TEMPERATURE) and one draw with `generator`. `vocab_limit`: only ids below
    it can be picked (VLUAS text generation: text ids, not visual codes); `suppress`: ids that are never picked."""
    if vocab_limit is not None or suppress:
        logits = logits.clone()
    if vocab_limit is not None:
        logits[..., vocab_limit:] = float("-inf")
    if suppress:
        logits[..., list(suppress)] = float("-inf")
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = filter_logits(logits / max(temperature, MIN_TEMPERATURE), top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
