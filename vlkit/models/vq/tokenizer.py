"""Visual tokenizer for "vision as target" (VILA-U, Youtu-VL VLUAS): image -> discrete codes -> image.

    pixels (B, 3, H, W) in [-1, 1]
      -> conv encoder, downsampling by `cfg.downsample`  -> features (B, code_dim, H', W')
      -> (residual) vector quantizer, EMA codebook        -> codes (B, H', W', D)
      -> conv decoder, upsampling by `cfg.downsample`    -> reconstruction (B, 3, H, W) in [-1, 1]

Pixels are normalized to [-1, 1] (`vlkit.images.normalize_pixels`, what `preprocess` does); `psnr` is measured on
that scale with a data range of 2, which equals the usual PSNR of the 0..255 image.

The code grid: vlkit.models.vq.grid; the quantizer: .quantizer; the optional losses: .losses.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlkit.config import VQConfig, from_dict, to_dict
from vlkit.errors import UserError
from vlkit.images import pixels_to_pil
from vlkit.io import WEIGHTS_FILE, write_dir_atomically
from vlkit.models.vq.autoencoder import Decoder, Encoder
from vlkit.models.vq.grid import check_vq_config, code_grid_size
from vlkit.models.vq.losses import gradient_loss, info_nce
from vlkit.models.vq.metrics import codebook_usage, perplexity
from vlkit.models.vq.quantizer import ResidualVectorQuantizer
from vlkit.models.weights import load_state, read_weights, save_weights


class TokenizerInputError(UserError):
    """Pixels or codes handed to the visual tokenizer have the wrong shape, size or range."""


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
        img = self.contrastive_proj(q.float().mean((2, 3)))
        return info_nce(img, text_embeds.float(), self.logit_scale.exp().clamp(max=100))

    # --- persistence ------------------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors atomically (temp dir, then rename over `out_dir`)."""
        out = Path(out_dir)
        write_dir_atomically(out, lambda tmp: save_weights(tmp, to_dict(self.cfg), self.state_dict(),
                                                           kind="visual_tokenizer"))
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VisualTokenizer":
        cfg, state = read_weights(path, "visual tokenizer", _vq_config, map_location)
        model = cls(cfg)
        load_state(model, state, str(Path(path) / WEIGHTS_FILE))
        return model.to(map_location).eval()


def _vq_config(d: dict) -> VQConfig:
    cfg = from_dict(VQConfig, d, "vq")
    check_vq_config(cfg)
    return cfg


def tensor_to_pil(pixels: torch.Tensor) -> list:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    return pixels_to_pil(pixels)
