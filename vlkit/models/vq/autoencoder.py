"""Convolutional encoder (pixels -> features on the code grid) and decoder (back to pixels) of the visual
tokenizer; both change resolution by `VQConfig.downsample`."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlkit.config import VQConfig


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(ch), ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(ch), ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def _groups(ch: int) -> int:
    for g in (8, 4, 2):
        if ch % g == 0:
            return g
    return 1


def _level_channels(hidden: int, levels: int) -> list[int]:
    """Channels per resolution level, widest at the code grid: level i has hidden / 2^(levels - i), >= 16."""
    return [max(16, hidden >> (levels - i)) for i in range(levels + 1)]


def _factor(downsample: int) -> tuple[int, int]:
    """downsample = patch * 2^levels: stride-2 stages for the powers of two, one patch conv for the rest."""
    levels = 0
    while downsample % 2 == 0:
        downsample //= 2
        levels += 1
    return downsample, levels


class Encoder(nn.Module):
    """Stem conv, stride-2 convs down to the code grid; residual blocks only on the two coarsest levels, where
    they are cheap (full-resolution blocks cost most of the CPU time and buy little on flat-colored images)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        patch, levels = _factor(cfg.downsample)
        ch = _level_channels(cfg.hidden_size, levels)
        self.stem = nn.Conv2d(3, ch[0], patch if patch > 1 else 3, stride=patch, padding=0 if patch > 1 else 1)
        layers: list[nn.Module] = []
        for i in range(levels):
            layers.append(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1))
            if i + 1 >= levels - 1:
                layers.append(ResBlock(ch[i + 1]))
        layers += [ResBlock(ch[-1]) for _ in range(cfg.num_layers)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch[-1]), ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.stem(x)))


class Decoder(nn.Module):
    """Mirror of the encoder: conv on the code grid (neighbouring codes inform each patch), residual blocks,
    transposed stride-2 convs back to full resolution."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        patch, levels = _factor(cfg.downsample)
        ch = _level_channels(cfg.hidden_size, levels)
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, ch[-1], 3, padding=1)]
        layers += [ResBlock(ch[-1]) for _ in range(cfg.num_layers)]
        for i in range(levels, 0, -1):
            if i >= levels - 1:
                layers.append(ResBlock(ch[i]))
            layers.append(nn.ConvTranspose2d(ch[i], ch[i - 1], 4, stride=2, padding=1))
        layers += [nn.GroupNorm(_groups(ch[0]), ch[0]), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        if patch > 1:
            self.out = nn.ConvTranspose2d(ch[0], 3, patch, stride=patch)
        else:
            self.out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(q))
