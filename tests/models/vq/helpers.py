"""Shared builders for the visual tokenizer tests: a small tokenizer and random pixels in [-1, 1]."""
import torch

from vlkit.config import VQConfig
from vlkit.models.vq import VisualTokenizer

SMALL = dict(codebook_size=32, code_dim=8, hidden_size=32, num_layers=1, downsample=8, image_size=32)


def small_tokenizer(**kw) -> VisualTokenizer:
    torch.manual_seed(0)
    return VisualTokenizer(VQConfig(**{**SMALL, **kw}))


def pixels(b=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1
