"""Visual tokenizer quality and cost: train on synthetic shapes, print JSON (PSNR, codebook usage, perplexity,
seconds). Never part of the test suite.

    python benchmarks/vq_tokenizer.py                       # 64x64 scenes on plain backgrounds, recipes/vq.yaml settings
    python benchmarks/vq_tokenizer.py --depth 2 --steps 1200 --background any

Goals (DESIGN / issue 6): PSNR >= 25 dB and codebook usage >= 0.9 in a few minutes on 2 CPU cores.
PSNR is measured on training-distribution images held out from training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vlkit.config import VQConfig, from_dict, load_yaml  # noqa: E402
from vlkit.models.vq import VisualTokenizer  # noqa: E402
from vlkit.data.synth.world import sample_scene  # noqa: E402
from vlkit.train.vq_trainer import evaluate_visual_tokenizer, load_images, train_visual_tokenizer  # noqa: E402


def scenes(n: int, size: int, seed: int, background: str) -> list:
    """Images of the synthetic world (vlkit.data.synth)."""
    rng = np.random.default_rng(seed)
    bg = None if background == "any" else background
    return [sample_scene(rng, size=size, background=bg).image for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "recipes" / "vq.yaml"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--background", default="plain", help="plain | noise | stripes | checker | any")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    recipe = load_yaml(a.recipe)
    vq = dict(recipe.get("vq") or {})
    if a.depth:
        vq["depth"] = a.depth
    cfg = from_dict(VQConfig, vq, "vq")
    steps = a.steps or int(recipe.get("steps", 1500))
    batch = a.batch_size or int(recipe.get("batch_size", 16))
    lr = float(recipe.get("lr", 3e-3))

    train = scenes(a.n_train, cfg.image_size, a.seed, a.background)
    test = load_images(scenes(a.n_test, cfg.image_size, a.seed + 1, a.background), cfg.image_size)
    cpu0, t0 = time.process_time(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        train_visual_tokenizer(cfg, train, steps=steps, batch_size=batch, lr=lr, out_dir=Path(tmp) / "vq", seed=a.seed,
                               precision=a.precision, progress=os.isatty(2))
        seconds, cpu = time.time() - t0, time.process_time() - cpu0
        model = VisualTokenizer.from_pretrained(Path(tmp) / "vq")
    held_out = evaluate_visual_tokenizer(model, test)
    t1 = time.time()
    model.encode(test)
    encode_ms = (time.time() - t1) / len(test) * 1000
    print(json.dumps({
        "psnr_db": round(held_out["psnr"], 2), "codebook_usage": round(held_out["codebook_usage"], 3),
        "perplexity": round(held_out["perplexity"], 1), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
        "steps": steps, "batch_size": batch, "depth": cfg.depth, "codebook_size": cfg.codebook_size,
        "grid": f"{model.grid_size}x{model.grid_size}", "image_size": cfg.image_size, "background": a.background,
        "precision": a.precision, "threads": torch.get_num_threads(), "encode_ms_per_image": round(encode_ms, 2),
        "goal": {"psnr_db": 25, "codebook_usage": 0.9},
    }, indent=2))


if __name__ == "__main__":
    main()
