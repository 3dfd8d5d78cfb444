"""Train the visual tokenizer (models/vq.py): a plain PyTorch AdamW loop you can read top to bottom.

    train_visual_tokenizer(VQConfig(), "data/synth/train", steps=1500, out_dir="runs/vq")
    vlkit train recipes/vq.yaml            # the CLI routes a recipe with a `vq:` section here

Writes to `out_dir`: the tokenizer (config.json + model.safetensors, loadable with
`VisualTokenizer.from_pretrained`), `recon.png` (originals top row, reconstructions bottom row) and
`metrics.json` (PSNR, codebook usage fraction, perplexity, seconds) measured on up to `eval_images` images.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch

from vlkit.config import ConfigError, VQConfig, apply_overrides, from_dict, load_yaml
from vlkit.data.sources import DataError, detect_format, read_samples
from vlkit.errors import UserError
from vlkit.images import SIGNED, ImageError, load_image, to_tensor
from vlkit.io import read_records, write_json
from vlkit.models.vq import VisualTokenizer, codebook_usage, perplexity, psnr, tensor_to_pil


class VisualTokenizerDataError(UserError):
    """The images given to the visual tokenizer trainer cannot be used (missing dir, no images, wrong type)."""


ImagesArg = Union[str, Path, Iterable[Any], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# images


def _images_from_data(path: Path) -> list:
    """Images (paths or PIL images) named by the samples of a data dir or JSON(L) file, each once.

    Any source `vlkit.data.sources.read_samples` reads (folders of JSONL, tar shards, saved HF datasets); a
    folder it does not recognise is searched for annotation files below it, else used as an image folder."""
    try:
        detect_format(path)
    except DataError:  # e.g. a plain image folder, or annotations only in subfolders
        return _images_without_reader(path)
    out: list = []
    seen: set = set()
    for sample in read_samples(path):
        objects = sample.get("image_objects")
        if objects:  # tar / HF sources hand over decoded images
            out.extend(objects)
            continue
        for p in sample.get("images") or []:
            if p not in seen:
                seen.add(p)
                out.append(Path(p))
    if not out:
        raise VisualTokenizerDataError(f"the samples under {path} name no images")
    return out


def _images_without_reader(path: Path) -> list:
    """The images named by *.jsonl / *.json files anywhere below `path`, else the image files below it."""
    files = [path] if path.is_file() else sorted(path.rglob("*.jsonl")) + sorted(path.rglob("*.json"))
    if not files:
        found = sorted(p for ext in ("png", "jpg", "jpeg", "webp") for p in path.rglob(f"*.{ext}"))
        if found:
            return found
        raise VisualTokenizerDataError(f"{path} has no data.jsonl (or *.jsonl) files and no images")
    paths: list[Path] = []
    for f in files:
        for s in read_records(f):
            imgs = s.get("images") or ([s["image"]] if s.get("image") else [])
            for rel in imgs:
                p = Path(str(rel)) if Path(str(rel)).is_absolute() else f.parent / str(rel)
                if p not in paths:
                    paths.append(p)
    if not paths:
        raise VisualTokenizerDataError(f"the samples under {path} name no images")
    return paths


def load_images(images: ImagesArg, size: int, limit: Optional[int] = None) -> torch.Tensor:
    """Images (dir, JSON(L) file, list/iterable of PIL images or paths, or a tensor) -> (N, 3, size, size) in
    [-1, 1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise VisualTokenizerDataError(f"an image tensor must be (N, 3, H, W), got {tuple(images.shape)}")
        return images.float()
    if isinstance(images, (str, Path)):
        path = Path(images)
        if not path.exists():
            raise VisualTokenizerDataError(f"data path {path} does not exist")
        images = _images_from_data(path)
    tensors = []
    skipped = 0
    for im in images:
        if limit is not None and len(tensors) >= limit:
            break
        try:
            tensors.append(to_tensor(load_image(im), size, SIGNED, SIGNED))
        except ImageError as exc:
            skipped += 1
            if skipped <= 3:
                print(f"skipping an image: {exc}")
    if not tensors:
        raise VisualTokenizerDataError("no usable images to train the tokenizer on")
    if skipped:
        print(f"skipped {skipped} unreadable images")
    return torch.stack(tensors)


# ---------------------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def evaluate_visual_tokenizer(model: VisualTokenizer, pixels: torch.Tensor, batch_size: int = 64) -> dict:
    """PSNR (dB, 0..255 scale), codebook usage fraction and perplexity of the codes, over `pixels`."""
    model.eval()
    codes, sq_err = [], 0.0
    for i in range(0, len(pixels), batch_size):
        x = pixels[i:i + batch_size]
        c = model.encode(x)
        recon = model.decode_codes(c)
        sq_err += torch.nn.functional.mse_loss(recon, x, reduction="sum").item()
        codes.append(c)
    codes_t = torch.cat(codes)
    mse = sq_err / pixels.numel()
    k = model.cfg.codebook_size
    return {"psnr": 10 * math.log10(4.0 / mse) if mse > 0 else float("inf"),
            "codebook_usage": codebook_usage(codes_t, k), "perplexity": perplexity(codes_t, k),
            "eval_images": len(pixels)}


def save_recon_grid(model: VisualTokenizer, pixels: torch.Tensor, path: Path, n: int = 8) -> None:
    """Originals on the top row, their reconstructions through the codes on the bottom row."""
    from PIL import Image

    x = pixels[:n]
    recon = model.decode_codes(model.encode(x))
    top, bottom = tensor_to_pil(x), tensor_to_pil(recon)
    s = x.shape[-1]
    grid = Image.new("RGB", (s * len(top), 2 * s), (255, 255, 255))
    for i, (a, b) in enumerate(zip(top, bottom)):
        grid.paste(a, (i * s, 0))
        grid.paste(b, (i * s, s))
    grid.save(path)


def train_visual_tokenizer(cfg: VQConfig, images: ImagesArg, steps: int = 1500, batch_size: int = 32,
                           lr: float = 2e-3, out_dir: str | Path = "runs/vq", seed: int = 0, precision: str = "fp32",
                           progress: bool = True, warmup_steps: int = 50, eval_images: int = 256,
                           log_every: int = 50) -> dict:
    """Train a VisualTokenizer on `images` and save it to `out_dir`; returns the final metrics.

    `images`: a data dir (data.jsonl files whose `images` are relative to the file, or a plain image folder),
    a JSON(L) file, a list/iterable of PIL images or paths, or an (N, 3, H, W) tensor in [-1, 1].
    `precision`: fp32 (default; on CPU this small conv net is faster in fp32) or bf16 (autocast for the conv
    encoder/decoder; the quantizer always runs in fp32).
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision={precision!r} is not allowed; choose one of ['fp32', 'bf16']")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name}={value!r} must be a positive integer")
    if not lr > 0:
        raise ConfigError(f"lr={lr!r} must be positive")
    torch.manual_seed(seed)
    start = time.time()
    model = VisualTokenizer(cfg)  # validates cfg
    data = load_images(images, cfg.image_size)
    if data.shape[-1] != cfg.image_size or data.shape[-2] != cfg.image_size:
        data = torch.nn.functional.interpolate(data, size=(cfg.image_size,) * 2, mode="bilinear", antialias=True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 5%
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="vq tokenizer", unit="step")
    history = []
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = data[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5  # horizontal flips: free extra variety
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            rec = {"step": step, "loss": out["loss"].item(), "psnr": psnr(out["recon"], x),
                   "usage": out["usage"], "perplexity": out["perplexity"],
                   "restarts": model.quantizer.last_restarts}
            history.append(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.1f}", usage=f"{rec['usage']:.2f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    train_seconds = time.time() - start

    model.eval()
    metrics = evaluate_visual_tokenizer(model, data[:eval_images])
    metrics.update({"steps": steps, "batch_size": batch_size, "train_images": len(data), "seconds": train_seconds,
                    "codebook_size": cfg.codebook_size, "depth": cfg.depth, "grid": model.grid_size})
    out = Path(out_dir)
    model.save_pretrained(out)
    save_recon_grid(model, data, out / "recon.png")
    write_json(out / "metrics.json", {**metrics, "history": history})
    if progress:
        print(f"tokenizer saved to {out}: PSNR {metrics['psnr']:.2f} dB, codebook usage "
              f"{metrics['codebook_usage']:.1%}, perplexity {metrics['perplexity']:.1f}")
    return metrics


RECIPE_KEYS = {"vq", "data", "steps", "batch_size", "lr", "out", "seed", "precision", "warmup_steps", "progress",
               "eval_images"}


def train_visual_tokenizer_from_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> dict:
    """Run a tokenizer recipe (recipes/vq.yaml): keys vq: {VQConfig}, data: DIR, steps, batch_size, lr, out."""
    path = Path(path)
    recipe = apply_overrides(load_yaml(path), list(overrides or []))
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(RECIPE_KEYS)}")
    if "data" not in recipe:
        raise ConfigError(f"{path}: `data` (a data dir with data.jsonl files, or an image folder) is required")
    cfg = from_dict(VQConfig, recipe.get("vq") or {}, "vq")
    data = Path(str(recipe["data"]))
    if not data.is_absolute() and not data.exists():
        data = path.parent / data  # relative to the recipe as a fallback
    kwargs = {k: recipe[k] for k in ("steps", "batch_size", "lr", "seed", "precision", "warmup_steps", "progress",
                                     "eval_images") if k in recipe}
    if "lr" in kwargs:
        kwargs["lr"] = float(kwargs["lr"])
    return train_visual_tokenizer(cfg, data, out_dir=recipe.get("out", "runs/vq"), **kwargs)
