"""Autoregressive generation: greedy / temperature / top-k / top-p, stop tokens, KV cache, batched prompts.

Batches are left padded and positions are padding-aware (position 0 at each prompt's first real token), so a
prompt gives the same tokens alone or in a batch. Finished rows leave the batch (their cache rows are dropped).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from vlkit.config import GenerationConfig, ImageGenerationConfig
from vlkit.errors import UserError
from vlkit.models.sampling import sample


def sample_tokens(logits: torch.Tensor, gen: GenerationConfig,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids under `gen`'s settings (vlkit.models.sampling)."""
    return sample(logits, gen.temperature, gen.top_k, gen.top_p, generator, vocab_limit=gen.vocab_limit,
                  suppress=gen.suppress_token_ids)


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
        tokens = sample_tokens(logits, gen, generator)
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
        first = sample_tokens(logits, pick, generator)[:, None]  # (1, 1): code 0
        codes = model.sample_codes(hidden[:1], first, gen.temperature, gen.top_k, gen.top_p, generator)
        out.append(codes[0])
        if i + 1 == num_codes:
            break
        hidden = model.decode_codes(codes, cache, next_pos)
        next_pos = next_pos + 1
    return torch.stack(out)


@torch.no_grad()
def sample_code_rows(model, prompts: Sequence[Sequence[int]], num_codes: int, gen: ImageGenerationConfig,
                     pad_id: int, images: Sequence[Sequence[torch.Tensor]] = ()) -> torch.Tensor:
    """Unguided, batched visual-code sampling (a grpo stage's image rollouts): `num_codes` codes (row-major) after
    each prompt, which ends with `<|gen_start|><|vision_start|>`; every row is its own draw, so a prompt repeated G
    times gives G images. Code 0 of each position is drawn from `code_logits` (the LM head restricted to the code
    range) / temperature, top-k and top-p filtered. `images`: each prompt's input images, if it has any.
    -> (B, num_codes) codebook indices.

    Depth-1 tokenizers only: a depth transformer's residual codes would need their own log-probs in the policy
    loss. gen.cfg_scale must be 1 (guidance mixes a second, unconditional pass into the sampled distribution)."""
    gen.validate()
    if model.code_offset is None:
        raise UserError("this model does not predict visual codes (vision_target is not 'codes')")
    if model.depth is not None:
        raise UserError(f"batched code sampling supports depth-1 visual tokenizers only; this model's has depth "
                        f"{model.cfg.vq.depth} (residual codes from the depth transformer)")
    if gen.cfg_scale != 1.0:
        raise UserError(f"batched code sampling is unguided: cfg_scale must be 1.0, got {gen.cfg_scale}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(gen.seed) if gen.seed is not None else None
    pick = GenerationConfig(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
    ids, mask = left_pad(prompts, pad_id)
    cache = model.new_cache()
    flat_images = [img.to(device) for row in images for img in row]
    hidden, next_pos = model.prefill(ids.to(device), cache, attention_mask=mask.to(device), images=flat_images,
                                     hidden=True)
    out = []
    for i in range(num_codes):
        codes = sample_tokens(model.code_logits(hidden), pick, generator)  # (B,)
        out.append(codes)
        if i + 1 == num_codes:
            break
        hidden = model.decode_codes(codes[:, None], cache, next_pos)
        next_pos = next_pos + 1
    return torch.stack(out, 1)
