"""Decoder LM with Llama/Qwen2 structure and parameter names: RMSNorm, RoPE, grouped-query attention,
SwiGLU MLP, optional tied embeddings, and a KV cache.

The model returns hidden states; the head (`lm_head`) is applied by the caller only where logits are needed.
Positions are explicit (`position_ids`), so left-padded batches get padding-aware positions.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.config import TextConfig
from vlkit.models.attention import sdpa
from vlkit.models.rope import RotaryEmbedding, apply_rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class KVCache:
    """Per-layer keys/values (B, H_kv, T, D) for all positions seen so far, plus their validity mask (B, T)."""

    def __init__(self, num_layers: int):
        self.keys: list[Optional[torch.Tensor]] = [None] * num_layers
        self.values: list[Optional[torch.Tensor]] = [None] * num_layers
        self.mask: Optional[torch.Tensor] = None  # 1 = a real token, 0 = padding

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], 2)
            v = torch.cat([self.values[layer], v], 2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished sequences leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        if self.mask is not None:
            self.mask = self.mask[rows]

    def concat(self, other: "KVCache") -> "KVCache":
        """The rows of this cache, then those of `other`; the shorter one is left padded (masked out) to the
        longer length, so every row still attends only to its own tokens."""
        la, lb = self.length, other.length
        n = max(la, lb)
        out = KVCache(len(self.keys))
        out.keys = [torch.cat([_pad_left(a, n - la, 2), _pad_left(b, n - lb, 2)], 0)
                    for a, b in zip(self.keys, other.keys)]
        out.values = [torch.cat([_pad_left(a, n - la, 2), _pad_left(b, n - lb, 2)], 0)
                      for a, b in zip(self.values, other.values)]
        out.mask = torch.cat([_pad_left(self.mask, n - la, 1), _pad_left(other.mask, n - lb, 1)], 0)
        return out

    def trim(self) -> None:
        """Drop leading columns that are padding in every row (left behind by rows that left)."""
        valid = self.mask.any(0)
        first = int(valid.long().argmax()) if bool(valid.any()) else self.length
        if first > 0:
            self.keys = [k[:, :, first:] for k in self.keys]
            self.values = [v[:, :, first:] for v in self.values]
            self.mask = self.mask[:, first:]


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, mask: Optional[torch.Tensor], cache: Optional[KVCache]) -> torch.Tensor:
        b, t, _ = x.shape
        # RoPE in the tables' dtype (the residual stream's: fp32 under autocast, as in HF)
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2).to(cos.dtype)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2).to(cos.dtype)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # GQA inside SDPA (query head i reads kv head i // (heads / kv_heads), as repeat_interleave did)
        y = sdpa(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LanguageModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.dim_per_head, cfg.rope_theta, cfg.rope_scaling,
                                      cfg.mrope_sections if cfg.rope == "mrope" else None)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, inputs_embeds: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                attn_mask_4d: Optional[torch.Tensor] = None) -> torch.Tensor:
        """inputs_embeds (B, T, D); attention_mask (B, T) of 1/0 for the new tokens (padding); the cache
        remembers earlier masks. attn_mask_4d (B, 1, T, T) overrides (packed sequences). -> hidden (B, T, D)."""
        b, t, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=inputs_embeds.device).expand(b, t)
        mask = attn_mask_4d
        if mask is None and (attention_mask is not None or (cache is not None and cache.mask is not None)):
            new = attention_mask if attention_mask is not None else torch.ones(b, t, device=inputs_embeds.device)
            full = new.bool() if cache is None or cache.mask is None else torch.cat([cache.mask, new.bool()], 1)
            if cache is not None:
                cache.mask = full
            mask = causal_mask(full, t)
        elif mask is None and t == 1:
            mask = None  # a single query over a full cache attends to everything
        elif mask is None and past > 0:
            mask = causal_mask(torch.ones(b, past + t, dtype=torch.bool, device=inputs_embeds.device), t)
        cos, sin = self.rotary(position_ids, inputs_embeds.dtype)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return self.norm(x)


def causal_mask(key_valid: torch.Tensor, t: int) -> torch.Tensor:
    """(B, S) key validity -> (B, 1, t, S) boolean mask for the last t queries: causal and padding-aware.
    Each query may always see itself, so padded rows stay finite (their outputs are never used)."""
    s = key_valid.shape[1]
    q_idx = torch.arange(s - t, s, device=key_valid.device)[:, None]
    k_idx = torch.arange(s, device=key_valid.device)[None]
    causal = k_idx <= q_idx
    allowed = causal[None] & key_valid[:, None, :]
    allowed = allowed | (k_idx == q_idx)[None]
    return allowed[:, None]


def padding_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding: positions count real tokens only (0 at the first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
