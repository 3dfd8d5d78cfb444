"""`vlkit inspect CKPT`: does a checkpoint look at its images? Cheap signs, from a few images, no labels needed.

- image-token vs text-token scale: the mean norm of the connector's outputs against the LM's embedding rows;
- how much the image tokens depend on the image: the cosine similarity of different images' mean image token,
  and the share of the image tokens' energy that varies across images (near 0: every image looks alike to the LM);
- optionally (with data) the blind-baseline gap of `vlkit eval --blind` on a few samples per task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from vlkit.errors import UserError


def image_token_stats(pipe, images: list) -> dict:
    """Scale and image-dependence of the image tokens for PIL `images` (at least 2)."""
    if len(images) < 2:
        raise UserError("inspect needs at least 2 images to compare")
    model = pipe.model
    pixels = [pipe.image_tensor(im).to(pipe.device) for im in images]
    with torch.no_grad():
        feats = torch.stack([f.float() for f in model.encode_images(pixels)])  # B, N, D
        text = model.input_embeddings().weight.float()
    means = torch.nn.functional.normalize(feats.mean(1), dim=-1)
    cos = means @ means.T
    off = cos[~torch.eye(len(images), dtype=torch.bool, device=cos.device)]
    centred = feats - feats.mean(0, keepdim=True)
    return {
        "images": len(images),
        "image_token_norm": round(feats.norm(dim=-1).mean().item(), 4),
        "text_embedding_norm": round(text.norm(dim=-1).mean().item(), 4),
        "norm_ratio": round((feats.norm(dim=-1).mean() / text.norm(dim=-1).mean()).item(), 2),
        "cross_image_cosine": round(off.mean().item(), 4),
        "image_dependent_energy": round((centred.pow(2).sum() / feats.pow(2).sum().clamp_min(1e-12)).item(), 4),
    }


def inspect_checkpoint(pipe, data: str | Path, n: int = 64, blind_limit: Optional[int] = None,
                       out_dir: Optional[str | Path] = None) -> dict:
    """image_token_stats on the first `n` images of `data`; with blind_limit, also a blind eval of that many
    samples per task (scores with images, blind, and their difference with a CI)."""
    from vlkit.data.sources import load_sample_images, read_samples

    images = []
    for sample in read_samples(data):
        images += load_sample_images(sample)
        if len(images) >= n:
            break
    report = {"checkpoint": str(getattr(pipe, "path", "")), **image_token_stats(pipe, images[:n])}
    if blind_limit:
        from vlkit.eval.runner import run_eval

        scores = run_eval(pipe, data, limit=blind_limit, blind=True, progress=False,
                          out_dir=out_dir or Path(getattr(pipe, "path", ".")) / "inspect")
        report["blind"] = {t: {k: r["blind"][k] for k in ("metric", "with_images", "blind", "difference", "ci95",
                                                            "beats_blind")}
                           for t, r in scores["tasks"].items() if "blind" in r}
    return report
