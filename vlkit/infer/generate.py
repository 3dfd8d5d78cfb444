"""Autoregressive generation: greedy / temperature / top-k / top-p, stop tokens, KV cache, batched prompts.

Batches are left padded and positions are padding-aware (position 0 at each prompt's first real token), so a
prompt gives the same tokens alone or in a batch. Finished rows leave the batch (their cache rows are dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from vlkit.errors import UserError
from vlkit.models.sampling import sample

SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)  # a 64-bit signed integer (torch.Generator.manual_seed takes these)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    stop_token_ids: tuple = ()
    seed: Optional[int] = None
    vocab_limit: Optional[int] = None  # only ids below this may be generated (VLUAS: text ids, not codes)

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens!r} must be a positive integer")
        if not 0.0 <= self.temperature <= 100.0:
            raise UserError(f"temperature={self.temperature!r} must be in [0, 100]")
        if self.top_k < 0:
            raise UserError(f"top_k={self.top_k!r} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p={self.top_p!r} must be in (0, 1]")
        if self.seed is not None and not (isinstance(self.seed, int) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            raise UserError(f"seed={self.seed!r} must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]")

    def sample(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, V) logits -> (B,) token ids under these settings (vlkit.models.sampling)."""
        return sample(logits, self.temperature, self.top_k, self.top_p, generator, vocab_limit=self.vocab_limit)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n - len(s):] = 1
    return ids, mask


@torch.no_grad()
def generate_stream(model, prompts: Sequence[Sequence[int]], images: Sequence[Sequence[torch.Tensor]],
                    gen: GenerationConfig, pad_id: int) -> Iterator[tuple[int, int]]:
    """Yields (row, token) as tokens are produced; a row's stop token is yielded, then the row leaves."""
    gen.validate()
    if not prompts:
        return
    device = next(model.parameters()).device
    generator = None
    if gen.seed is not None:
        generator = torch.Generator(device=device).manual_seed(gen.seed)
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    flat_images = [img.to(device) for row in images for img in row]
    cache = model.new_cache()
    logits, next_pos = model.prefill(ids, cache, attention_mask=mask, images=flat_images)
    rows = torch.arange(len(prompts), device=device)
    stops = set(gen.stop_token_ids)
    for step in range(gen.max_new_tokens):
        tokens = gen.sample(logits, generator)
        alive = []
        for i, (r, t) in enumerate(zip(rows.tolist(), tokens.tolist())):
            yield r, t
            if t not in stops:
                alive.append(i)
        if not alive or step == gen.max_new_tokens - 1:
            return
        if len(alive) < len(rows):
            keep = torch.tensor(alive, device=device)
            cache.select(keep)
            rows, tokens, next_pos = rows[keep], tokens[keep], next_pos[keep]
        logits = model.decode(tokens, cache, next_pos)
        next_pos = next_pos + 1


def generate(model, prompts: Sequence[Sequence[int]], images: Sequence[Sequence[torch.Tensor]],
             gen: GenerationConfig, pad_id: int) -> list[list[int]]:
    """Generated ids per prompt, stop token excluded."""
    out: list[list[int]] = [[] for _ in prompts]
    stops = set(gen.stop_token_ids)
    for row, tok in generate_stream(model, prompts, images, gen, pad_id):
        if tok not in stops:
            out[row].append(tok)
    return out


class TextStreamer:
    """Turns a growing list of token ids into new text pieces (waits while a multi-byte character is split)."""

    def __init__(self, decode):
        self.decode = decode
        self.ids: list[int] = []
        self.sent = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[self.sent:], len(text)
        return piece

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.decode(self.ids)
        piece, self.sent = text[self.sent:], len(text)
        return piece


# ---------------------------------------------------------------------------------------------------------
# image generation (vision as target)


@dataclass
class ImageGenerationConfig:
    cfg_scale: float = 1.5  # classifier-free guidance: uncond + scale * (cond - uncond); 1 = cond only, 0 = uncond only
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None

    def validate(self) -> None:
        if not isinstance(self.cfg_scale, (int, float)) or not 0.0 <= self.cfg_scale <= 50.0:
            raise UserError(f"cfg_scale={self.cfg_scale!r} must be a number in [0, 50]")
        GenerationConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed).validate()


@torch.no_grad()
def generate_codes(model, cond: Sequence[int], uncond: Sequence[int], num_codes: int, gen: ImageGenerationConfig,
                   pad_id: int) -> torch.Tensor:
    """Sample `num_codes` visual codes (row-major) after a prompt that ends with `<|gen_start|><|vision_start|>`.

    Both prompts run as one batch; code 0 of each position is sampled from the guided code logits, deeper
    residual codes (if any) from the depth transformer on the conditional hidden state. -> (num_codes, D) codes.
    """
    gen.validate()
    if model.code_offset is None:
        raise UserError("this model does not predict visual codes (vision_target is not 'codes')")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(gen.seed) if gen.seed is not None else None
    pick = GenerationConfig(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    guided = gen.cfg_scale != 1.0
    prompts = [list(cond), list(uncond)] if guided else [list(cond)]
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    cache = model.new_cache()
    hidden, next_pos = model.prefill(ids, cache, attention_mask=mask, hidden=True)
    out = []
    for i in range(num_codes):
        logits = model.code_logits(hidden)
        if guided:
            logits = logits[1:] + gen.cfg_scale * (logits[:1] - logits[1:])
        first = pick.sample(logits, generator)[:, None]  # (1, 1): code 0
        codes = model.sample_codes(hidden[:1], first, gen.temperature, gen.top_k, gen.top_p, generator)
        out.append(codes[0])
        if i + 1 == num_codes:
            break
        hidden = model.decode_codes(codes, cache, next_pos)
        next_pos = next_pos + 1
    return torch.stack(out)
