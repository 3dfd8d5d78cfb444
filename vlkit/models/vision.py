"""ViT vision encoder with SigLIP/CLIP parameter names (embeddings.*, encoder.layers.N.*, post_layernorm).

Position embeddings are learned for the config's grid and bicubically interpolated for other resolutions, so
one encoder serves any image size (the pixels beyond the last whole patch are not seen, as in transformers).
With `position: rope2d` (Qwen2-VL) there is no table: every attention layer rotates queries and keys by the
patch's row and column (vlkit.models.rope.VisionRotaryEmbedding), and `forward_packed` runs images of any mix
of sizes as one sequence with block-diagonal attention, each image seeing only itself.

Patch order is row-major here; transformers' Qwen2-VL feeds patches block-major (each merge_size x merge_size
block contiguous), and Qwen2.5-VL reorders them window by window. Attention and MLPs act per token and the
positions travel with the tokens, so the features are the same up to that permutation, which the spatial_merge
connector undoes (it concatenates each block's patches in the same (i, j) -> i * m + j order as Qwen2-VL's
PatchMerger); windows are an attention mask here, not a reordering.

Qwen2-VL's tower is this one with options (VisionConfig): a Conv3d patch embedding over `temporal_patch_size`
frames (a clip's temporal patches are encoded as separate images, as in transformers), RMSNorm / SwiGLU blocks
and window attention (Qwen2.5-VL).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.config import VisionConfig
from vlkit.models.attention import Segments, sdpa
from vlkit.models.language import RMSNorm
from vlkit.models.rope import VisionRotaryEmbedding, apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin (N, head_dim / 2), float32

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
}
NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


class ConvStem(nn.Module):
    """A small CNN in place of the patchify conv ("Early convolutions help transformers see better", Xiao et al.
    2021): log2(patch_size) stages of 3x3 conv, normalisation, GELU and 2x2 max-pooling, channels doubling up
    to hidden_size, then a 1x1 projection. Same output grid as the patch conv. From scratch on small data a patch
    conv learns colour but not shape; this stem learns both within a few hundred steps (docs/training.md)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n = int(math.log2(cfg.patch_size))
        if 2 ** n != cfg.patch_size:
            raise ValueError(f"the conv stem needs a power-of-two patch_size, got {cfg.patch_size}")
        chans = [cfg.num_channels] + [max(16, cfg.hidden_size >> (n - 1 - i)) for i in range(n)]
        layers: list[nn.Module] = []
        for i in range(n):
            # GroupNorm(1, C): per image, so no batch statistics (BatchNorm learnt shape a little faster in a probe)
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1), nn.GroupNorm(1, chans[i + 1]), nn.GELU(),
                       nn.MaxPool2d(2)]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(chans[-1], cfg.hidden_size, 1)

    def reset_parameters(self) -> None:
        """PyTorch's default (Kaiming) init: the ViT's N(0, 0.02) starves a stack of convolutions."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(pixels))


class TemporalPatchConv(nn.Conv3d):
    """Qwen2-VL's patch embedding: a bias-free Conv3d over `temporal_patch_size` frames x patch x patch. An image
    is repeated in time (as transformers' processor does); a clip (T, C, H, W) gives ceil(T / tp) temporal
    patches, its last frame repeated to fill the last one."""

    def __init__(self, cfg: VisionConfig):
        tp, p = cfg.temporal_patch_size, cfg.patch_size
        super().__init__(cfg.num_channels, cfg.hidden_size, (tp, p, p), (tp, p, p), bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> (B, D, gh, gw)."""
        frames = pixels[:, :, None].expand(-1, -1, self.kernel_size[0], -1, -1)
        return super().forward(frames)[:, :, 0]

    def clip(self, frames: torch.Tensor) -> torch.Tensor:
        """A clip (T, C, H, W) -> (ceil(T / tp), D, gh, gw), one map per temporal patch."""
        tp = self.kernel_size[0]
        pad = -frames.shape[0] % tp
        if pad:
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        return super().forward(frames.transpose(0, 1)[None])[0].transpose(0, 1)


def patchify_conv(cfg: VisionConfig) -> nn.Module:
    if cfg.temporal_patch_size > 1:
        return TemporalPatchConv(cfg)
    # CLIP's patch conv has no bias
    return nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=not cfg.class_token)


STEMS = {"patch": patchify_conv, "conv": ConvStem}


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embedding = STEMS[cfg.stem](cfg)
        n = self.grid * self.grid + (1 if cfg.class_token else 0)
        self.class_embedding = nn.Parameter(torch.randn(cfg.hidden_size) * 0.02) if cfg.class_token else None
        self.position_embedding = nn.Embedding(n, cfg.hidden_size) if cfg.position == "learned" else None

    def positions(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.position_embedding.weight
        cls_pos, grid_pos = (pos[:1], pos[1:]) if self.cfg.class_token else (pos[:0], pos)
        if (gh, gw) != (self.grid, self.grid):
            g = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g.float(), size=(gh, gw), mode="bicubic", align_corners=False).to(pos.dtype)
            grid_pos = g.permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([cls_pos, grid_pos], 0)

    def forward(self, pixels: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> (B, gh*gw (+1), D); with `clip`, the frames (T, C, H, W) of one clip
        -> (T', gh*gw (+1), D), one row per temporal patch (vision.temporal_patch_size 1: each frame is one)."""
        dtype = next(self.patch_embedding.parameters()).dtype
        if clip and isinstance(self.patch_embedding, TemporalPatchConv):
            x = self.patch_embedding.clip(pixels.to(dtype))
        else:
            x = self.patch_embedding(pixels.to(dtype))  # B, D, gh, gw
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # row-major patch order
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], 1)
        return x if self.position_embedding is None else x + self.positions(gh, gw)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.heads = cfg.num_heads
        d = cfg.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, rope: Optional[Rope] = None,
                segments: Optional[Segments] = None) -> torch.Tensor:
        """segments: who attends to whom (images of a packed sequence, windows); None: every token to every token."""
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        if rope is not None:  # in float32, as transformers' Qwen2-VL
            q, k = (apply_rope(t.float(), *rope).to(v.dtype) for t in (q, k))
        y = sdpa(q, k, v) if segments is None else segments.attend(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionGatedMLP(nn.Module):
    """Qwen2.5-VL's vision MLP: down(act(gate(x)) * up(x)), with biases."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


MLPS = {"fc": VisionMLP, "swiglu": VisionGatedMLP}


class VisionLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = NORMS[cfg.norm](cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = NORMS[cfg.norm](cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLPS[cfg.mlp](cfg)

    def forward(self, x: torch.Tensor, rope: Optional[Rope] = None,
                segments: Optional[Segments] = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), rope, segments)
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_norm else None
        self.encoder = nn.Module()
        # only the layers that feed the selected feature are built (LLaVA's -2 drops the last one)
        n_used = cfg.feature_layer % (cfg.num_layers + 1)
        self.encoder.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(n_used))
        use_post = cfg.post_norm and n_used == cfg.num_layers
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if use_post else None
        self.rotary = (VisionRotaryEmbedding(cfg.hidden_size // cfg.num_heads, cfg.rope_theta)
                       if cfg.position == "rope2d" else None)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patches per side. Like transformers' patch conv, the last height % p rows and width % p columns are
        not seen (SigLIP-so400m-patch14-384: 384 px -> 27 patches)."""
        p = self.cfg.patch_size
        if height < p or width < p:
            raise ValueError(f"image size {height}x{width} is smaller than the patch size {p}")
        return height // p, width // p

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, gh*gw, D) patch features in row-major order (class token dropped)."""
        grid = self.grid_size(*pixels.shape[-2:])
        rope = self.rotary(*grid) if self.rotary is not None else None
        window = Segments(self._window_ids(*grid)) if self.cfg.window_size else None
        x = self._layers(self.embeddings(pixels), rope, (None, window))
        return x[:, 1:] if self.cfg.class_token else x

    def forward_packed(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Images (3, H_i, W_i) of any sizes -> [(gh_i*gw_i, D)], run as ONE sequence of all their patches with
        block-diagonal attention (each image attends only to its own patches): no padding, and each image's
        features are what encoding it alone gives. A clip (T, 3, H, W) -> (T' * gh*gw, D): each of its T' temporal
        patches (T' = T with temporal_patch_size 1) attends only to itself, as in transformers' Qwen2-VL. Attention
        is varlen (attention.Segments): it costs what encoding each image alone costs."""
        parts = [self.embeddings(img, clip=True) if img.dim() == 4 else self.embeddings(img[None])
                 for img in images]  # (T', n, D) each
        grids = [self.grid_size(*img.shape[-2:]) for img in images]
        segments = [(p.shape[1], grid) for p, grid in zip(parts, grids) for _ in range(p.shape[0])]
        rope = None
        if self.rotary is not None:
            tables = [self.rotary(*grid) for _, grid in segments]
            rope = (torch.cat([c for c, _ in tables]), torch.cat([s for _, s in tables]))
        x = self._layers(torch.cat([p.flatten(0, 1) for p in parts])[None], rope, self._packed_segments(segments))[0]
        skip = 1 if self.cfg.class_token else 0
        return [f.view(p.shape)[:, skip:].flatten(0, 1) for f, p in zip(x.split([p.shape[0] * p.shape[1] for p in parts]),
                                                                        parts)]

    def _window_ids(self, gh: int, gw: int) -> torch.Tensor:
        """The attention window of each patch of a gh x gw grid, row-major: windows of window_size / patch_size
        patches a side tile the grid from its top-left corner (the last ones may be cut)."""
        w = self.cfg.window_size // self.cfg.patch_size
        dev = next(self.embeddings.parameters()).device
        rows = torch.arange(gh, device=dev).repeat_interleave(gw) // w
        cols = torch.arange(gw, device=dev).repeat(gh) // w
        return rows * -(-gw // w) + cols

    def _packed_segments(self, segments: list[tuple[int, tuple[int, int]]]) -> tuple:
        """(full, window) attention segments of a packed sequence of segments (length, grid); None where every
        token may see every other."""
        dev = next(self.embeddings.parameters()).device
        lengths = torch.tensor([n for n, _ in segments], device=dev)
        full = Segments(torch.repeat_interleave(torch.arange(len(segments), device=dev), lengths)) \
            if len(segments) > 1 else None
        if not self.cfg.window_size:
            return full, None
        ids, offset = [], 0
        for _, grid in segments:
            w = self._window_ids(*grid)
            ids.append(w + offset)
            offset += int(w.max()) + 1
        return full, Segments(torch.cat(ids))

    def _layers(self, x: torch.Tensor, rope: Optional[Rope], segments: tuple) -> torch.Tensor:
        """segments: (full, window) attention segments; layers use the windows unless vision.window_size is 0 or
        they are listed in vision.full_attention_layers."""
        full, window = segments
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        for i, layer in enumerate(self.encoder.layers):
            windowed = window is not None and i not in self.cfg.full_attention_layers
            x = layer(x, rope, window if windowed else full)
        return x if self.post_layernorm is None else self.post_layernorm(x)


def init_weights(module: nn.Module, scheme: str = "normal", std: float = 0.02) -> None:
    """normal: every Linear/Conv/Embedding weight ~ N(0, std), biases 0; fan_in: N(0, 1/fan_in) (embeddings:
    1/dim). A conv stem keeps PyTorch's default init either way."""
    def sigma(fan: int) -> float:
        return std if scheme == "normal" else fan ** -0.5

    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, std=sigma(m.weight[0].numel()))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=sigma(m.weight.shape[1]))
    for m in module.modules():
        if isinstance(m, ConvStem):
            m.reset_parameters()


def sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (gh*gw, dim): half the channels encode y, half x."""
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs a dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    out = []
    for coord in (ys.flatten(), xs.flatten()):
        ang = coord[:, None] * omega[None]
        out += [ang.sin(), ang.cos()]
    return torch.cat(out, 1)


def square_grid(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} is not a square number")
    return side
