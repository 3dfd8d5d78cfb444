"""Visual tokenizer for "vision as target" (VILA-U, Youtu-VL VLUAS): image -> discrete codes -> image.

    pixels (B, 3, H, W) in [-1, 1]
      -> conv encoder, downsampling by `cfg.downsample`  -> features (B, code_dim, H', W')
      -> (residual) vector quantizer, EMA codebook        -> codes (B, H', W', D)
      -> conv decoder, upsampling by `cfg.downsample`    -> reconstruction (B, 3, H, W) in [-1, 1]

Pixels are normalized to [-1, 1] (`x / 127.5 - 1`, what `preprocess` does); `psnr` is measured on that scale
with a data range of 2, which equals the usual PSNR of the 0..255 image.

Code grid. `H' = image_size / downsample` must equal the LM's image-token grid, so that code i is the target
of image token i. With a plain ViT + linear/mlp connector `downsample = vision.patch_size`; the spatial_merge
connector merges `merge_size` x `merge_size` patches into one token, so `downsample = patch_size * merge_size`.
`lm_grid_downsample(model_cfg)` computes it and `check_code_grid(model_cfg)` raises ConfigError on a mismatch.

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

Losses: reconstruction = L1 + L2 (L1 keeps edges sharp, L2 drives PSNR), plus the commitment loss, plus two
optional terms that are off by default: `perceptual_weight` x an L1 loss on image gradients at three scales (a
cheap, download-free edge term; not LPIPS), and `contrastive_weight` x a CLIP-style InfoNCE between the pooled
quantized features and caller-supplied text embeddings (VILA-U's text alignment; `forward(..., text_embeds=)`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlkit.config import ConfigError, VQConfig, from_dict, to_dict
from vlkit.errors import CheckpointError, UserError
from vlkit.io import write_dir_atomically

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class TokenizerInputError(UserError):
    """Pixels or codes handed to the visual tokenizer have the wrong shape, size or range."""


# ---------------------------------------------------------------------------------------------------------
# config helpers


def check_vq_config(cfg: VQConfig) -> None:
    """Every field in its range and the code grid whole (VQConfig.validate); raises ConfigError naming the key."""
    cfg.validate()


def code_grid_size(cfg: VQConfig) -> int:
    """Codes per side: image_size / downsample."""
    return cfg.image_size // cfg.downsample


def lm_grid_downsample(model_cfg: Any) -> int:
    """Pixels per LM image token along each side for a ModelConfig (what `vq.downsample` must be)."""
    vision, conn = model_cfg.vision, model_cfg.connector
    if conn.type == "spatial_merge":
        return vision.patch_size * conn.merge_size
    if conn.type == "resampler":
        side = math.isqrt(conn.num_queries)
        if side * side != conn.num_queries or vision.image_size % side:
            raise ConfigError(f"connector.num_queries={conn.num_queries} does not give a square grid dividing "
                              f"vision.image_size={vision.image_size}")
        return vision.image_size // side
    return vision.patch_size


def check_code_grid(model_cfg: Any) -> None:
    """Raise ConfigError unless the tokenizer's code grid equals the LM's image-token grid."""
    vq = model_cfg.vq
    need = lm_grid_downsample(model_cfg)
    if vq.downsample != need or vq.image_size != model_cfg.vision.image_size:
        raise ConfigError(
            f"vq.downsample={vq.downsample}, vq.image_size={vq.image_size} give a {code_grid_size(vq)}x"
            f"{code_grid_size(vq)} code grid, but the {model_cfg.connector.type} connector at "
            f"vision.image_size={model_cfg.vision.image_size} needs vq.downsample={need} and "
            f"vq.image_size={model_cfg.vision.image_size}")


# ---------------------------------------------------------------------------------------------------------
# metrics


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB; default range 2 for [-1, 1] pixels (use 1 or 255 for other scales)."""
    mse = F.mse_loss(a.detach().float(), b.detach().float()).item()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(data_range ** 2 / mse)


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    return torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).float()


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codebook that occurs at least once in `codes` (all depths pooled)."""
    return (code_histogram(codes, codebook_size) > 0).float().mean().item()


def perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code distribution: the effective number of codes in use (max = codebook_size)."""
    hist = code_histogram(codes, codebook_size)
    p = hist / hist.sum().clamp(min=1)
    return math.exp(-(p * torch.log(p.clamp(min=1e-12))).sum().item())


# ---------------------------------------------------------------------------------------------------------
# quantizer


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
        x = _gather_all(x)
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
        x = _gather_all(x)
        pick = torch.randint(0, x.shape[0], (n_dead,), device=x.device)
        new = x[pick].to(self.codebook.dtype)
        new = _broadcast(new)
        floor = self.dead_code_threshold * self.cluster_size.mean().clamp(min=self.eps)
        self.codebook[dead] = new
        self.cluster_size[dead] = floor  # at the threshold: unused again next step -> restarted again
        self.embed_sum[dead] = new * floor
        return n_dead

    def ema_usage(self) -> float:
        """Fraction of codes that are alive by the EMA statistics."""
        return 1.0 - self.dead_codes().float().mean().item()


def _dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():  # DDP: every rank applies the same EMA update
        torch.distributed.all_reduce(t)
    return t


def _gather_all(x: torch.Tensor) -> torch.Tensor:
    return x  # restart samples are drawn on each rank and rank 0's are broadcast (see _broadcast)


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _dist_on():
        t = t.contiguous()
        torch.distributed.broadcast(t, src=0)
    return t


# ---------------------------------------------------------------------------------------------------------
# encoder / decoder


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


# ---------------------------------------------------------------------------------------------------------
# the tokenizer


class VisualTokenizer(nn.Module):
    """Image <-> discrete codes on the LM's image-token grid. See the module docstring."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        check_vq_config(cfg)
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.depth, cfg.ema_decay,
                                                 cfg.dead_code_threshold)
        self.decoder = Decoder(cfg)
        if cfg.contrastive_weight > 0:  # VILA-U text alignment head; absent (no weights) by default
            self.contrastive_proj = nn.Linear(cfg.code_dim, cfg.contrastive_dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @property
    def grid_size(self) -> int:
        return code_grid_size(self.cfg)

    @property
    def num_codes(self) -> int:
        """Codes per image and depth (= LM image tokens per image)."""
        return self.grid_size ** 2

    # --- input handling ---------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images / paths / arrays -> (B, 3, S, S) in [-1, 1] at `image_size` (bicubic resize)."""
        from vlkit.images import load_image, to_tensor

        s = self.cfg.image_size
        batch = [to_tensor(load_image(im), s, (0.5,) * 3, (0.5,) * 3) for im in images]
        return torch.stack(batch).to(self._device())

    def _device(self) -> torch.device:
        return self.quantizer.codebook.device

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        s = self.cfg.image_size
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise TokenizerInputError(f"pixels must be a (B, 3, H, W) tensor, got {shape}")
        h, w = pixels.shape[-2:]
        if h % self.cfg.downsample or w % self.cfg.downsample:
            raise TokenizerInputError(f"pixel size {h}x{w} is not a multiple of vq.downsample={self.cfg.downsample} "
                                      f"(the tokenizer was built for {s}x{s})")

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Accept (B, H', W', D), (B, N, D) or (B, N) (depth 1) -> (B, N, D) long."""
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point:
            raise TokenizerInputError(f"codes must be integers, got dtype {codes.dtype}")
        d = self.cfg.depth
        if codes.ndim == 4:
            codes = codes.reshape(codes.shape[0], -1, codes.shape[-1])
        elif codes.ndim == 2 and d == 1:
            codes = codes[..., None]
        if codes.ndim != 3 or codes.shape[-1] != d:
            raise TokenizerInputError(f"codes must have shape (B, H', W', {d}) or (B, N, {d}), "
                                      f"got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            bad = codes[(codes < 0) | (codes >= self.cfg.codebook_size)][0].item()
            raise TokenizerInputError(f"code {bad} is out of range; codes must be in [0, {self.cfg.codebook_size})")
        n = codes.shape[1]
        if math.isqrt(n) ** 2 != n:
            raise TokenizerInputError(f"{n} codes per image do not form a square grid")
        return codes.long().to(self._device())

    # --- core -------------------------------------------------------------------------------------------

    def encode_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output (B, code_dim, H', W') before quantization."""
        self._check_pixels(pixels)
        return self.encoder(pixels)

    def quantize_features(self, z: torch.Tensor, update: Optional[bool] = None):
        """(B, C, H', W') -> (straight-through quantized (B, C, H', W'), codes (B, H', W', D), QuantizerOutput)."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        out = self.quantizer(flat, update=update)
        q = out.quantized.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return q, out.codes.reshape(b, h, w, self.cfg.depth), out

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> codes LongTensor (B, H', W', D). Never updates the codebook."""
        z = self.encode_features(pixels)
        _, codes, _ = self.quantize_features(z, update=False)
        return codes

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H', W', D) / (B, N, D) / (B, N) -> (B, N, code_dim), the sum of the D code vectors."""
        return self.quantizer.lookup(self._check_codes(codes))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes -> pixels (B, 3, H, W) in [-1, 1]."""
        emb = self.embed_codes(codes)  # (B, N, C)
        b, n, c = emb.shape
        side = math.isqrt(n)
        q = emb.transpose(1, 2).reshape(b, c, side, side)
        return self.decoder(q).float().clamp(-1, 1)

    def forward(self, pixels: torch.Tensor, text_embeds: Optional[torch.Tensor] = None) -> dict:
        """Reconstruct and compute losses. In train mode the codebook is EMA-updated as a side effect.

        Returns recon, loss, recon_loss, commit_loss, codes (B, H', W', D), usage (fraction of the codebook
        used in this batch), perplexity, and perceptual_loss / contrastive_loss when those terms are on.
        """
        z = self.encode_features(pixels)
        q, codes, qout = self.quantize_features(z)
        recon = self.decoder(q.to(z.dtype)).float()
        target = pixels.float()
        recon_loss = F.l1_loss(recon, target) + F.mse_loss(recon, target)
        loss = recon_loss + self.cfg.commitment_weight * qout.commit_loss
        out = {"recon": recon, "recon_loss": recon_loss, "commit_loss": qout.commit_loss, "codes": codes,
               "quant_error": qout.residual_error}
        if self.cfg.perceptual_weight > 0:
            out["perceptual_loss"] = gradient_loss(recon, target)
            loss = loss + self.cfg.perceptual_weight * out["perceptual_loss"]
        if self.cfg.contrastive_weight > 0 and text_embeds is not None:
            out["contrastive_loss"] = self.contrastive_loss(q, text_embeds)
            loss = loss + self.cfg.contrastive_weight * out["contrastive_loss"]
        out["loss"] = loss
        out["usage"] = codebook_usage(codes, self.cfg.codebook_size)
        out["perplexity"] = perplexity(codes, self.cfg.codebook_size)
        return out

    def contrastive_loss(self, q: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between mean-pooled quantized features and text embeddings (B, contrastive_dim)."""
        if text_embeds.ndim != 2 or text_embeds.shape != (q.shape[0], self.cfg.contrastive_dim):
            raise TokenizerInputError(f"text_embeds must have shape ({q.shape[0]}, {self.cfg.contrastive_dim}), "
                                      f"got {tuple(text_embeds.shape)}")
        img = F.normalize(self.contrastive_proj(q.float().mean((2, 3))), dim=-1)
        txt = F.normalize(text_embeds.float(), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.t()
        labels = torch.arange(q.shape[0], device=q.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    # --- persistence ------------------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors atomically (temp dir, then rename over `out_dir`)."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "vlkit": "visual_tokenizer"})

        out = Path(out_dir)
        write_dir_atomically(out, write)
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VisualTokenizer":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"visual tokenizer directory {path} does not exist")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise CheckpointError(f"visual tokenizer {path} has no {name}; expected {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            cfg = from_dict(VQConfig, json.loads((path / CONFIG_NAME).read_text()), "vq")
            model = cls(cfg)
        except (json.JSONDecodeError, ConfigError) as exc:
            raise CheckpointError(f"{path / CONFIG_NAME} is not a valid tokenizer config: {exc}") from None
        try:
            state = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path / WEIGHTS_NAME} cannot be read ({exc}); is it corrupt?") from None
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"{path / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise CheckpointError(f"{path / WEIGHTS_NAME}: {k} has shape {tuple(v.shape)}, config expects "
                                      f"{tuple(own[k].shape)}")
        model.load_state_dict(state)
        return model.to(map_location).eval()


def gradient_loss(a: torch.Tensor, b: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """L1 between horizontal/vertical image differences at `scales` dyadic scales (edge-aware, download-free)."""
    total = a.new_zeros(())
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        if min(a.shape[-2:]) < 2:
            break
        total = total + F.l1_loss(a.diff(dim=-1), b.diff(dim=-1)) + F.l1_loss(a.diff(dim=-2), b.diff(dim=-2))
    return total


def tensor_to_pil(pixels: torch.Tensor) -> list:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    from PIL import Image

    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in arr]
