"""Autoregressive generation: greedy / temperature / top-k / top-p, stop tokens, KV cache, batched prompts.

Batches are left padded and positions are padding-aware (position 0 at each prompt's first real token), so a
prompt gives the same tokens alone or in a batch. Finished rows leave the batch (their cache rows are dropped).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from vlkit.config import GenerationConfig, ImageGenerationConfig
from vlkit.errors import UserError
from vlkit.models.language import padding_positions

MIN_TEMPERATURE = 1e-3


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


def sample(logits: torch.Tensor, gen: GenerationConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if gen.vocab_limit is not None:
        logits = logits.clone()
        logits[..., gen.vocab_limit:] = float("-inf")
    if gen.temperature == 0.0:
        return logits.argmax(-1)
    # below MIN_TEMPERATURE the distribution is one-hot anyway; smaller ones would overflow float32 logits (nan)
    logits = filter_logits(logits / max(gen.temperature, MIN_TEMPERATURE), gen.top_k, gen.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


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
    positions = padding_positions(mask)
    cache = model.new_cache()
    embeds = model.embed(ids, flat_images)
    logits = model.forward_step(embeds, cache, positions, attention_mask=mask)
    rows = torch.arange(len(prompts), device=device)
    next_pos = positions[:, -1] + 1
    stops = set(gen.stop_token_ids)
    for step in range(gen.max_new_tokens):
        tokens = sample(logits, gen, generator)
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
        embeds = model.language.embed_tokens(tokens[:, None])
        logits = model.forward_step(embeds, cache, next_pos[:, None],
                                    attention_mask=torch.ones_like(tokens)[:, None])
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
    positions = padding_positions(mask)
    cache = model.new_cache()
    hidden = model.language(model.embed(ids), position_ids=positions, attention_mask=mask, cache=cache)[:, -1]
    next_pos = positions[:, -1:] + 1
    lo, hi = model.code_offset, model.code_offset + model.cfg.vq.codebook_size
    out = []
    for i in range(num_codes):
        logits = model.logits(hidden)[:, lo:hi].float()
        if guided:
            logits = logits[1:] + gen.cfg_scale * (logits[:1] - logits[1:])
        codes = sample(logits, pick, generator)[:, None]  # (1, 1): code 0
        if model.depth is not None:
            codes = model.depth.sample(hidden[:1], gen.temperature, gen.top_k, gen.top_p, generator, prefix=codes)
        out.append(codes[0])
        if i + 1 == num_codes:
            break
        emb = model.embed_codes(codes[:, None]).expand(len(prompts), 1, -1)
        hidden = model.language(emb, position_ids=next_pos, attention_mask=torch.ones_like(next_pos),
                                cache=cache)[:, -1]
        next_pos = next_pos + 1
    return torch.stack(out)
