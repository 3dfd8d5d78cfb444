"""Text-to-image correctness and NTP-M segmentation mIoU of a VLUAS model on the synthetic world.

A focused run: the visual tokenizer is trained on the generation task's images (shapes on black), then the
recipes/quickstart-vluas.yaml model is trained on generation + segmentation samples only, and evaluated on the
held-out test split (generation correctness by the synthetic world's verifier, segmentation mIoU). Prints JSON.

    python benchmarks/vluas_generation.py --data runs/quickstart-vluas/data --out /tmp/vluas_gen [--steps 900]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from vlkit.config import VQConfig
    from vlkit.data.sources import read_samples
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load
    from vlkit.train.quickstart import VLUAS_RECIPE, recipe_dict
    from vlkit.train.trainer import Recipe, train
    from vlkit.train.vq_trainer import train_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a synthetic data dir with train/ and test/ incl. generation, segmentation")
    ap.add_argument("--out", default="/tmp/vluas_gen")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--vq-steps", type=int, default=800)
    a = ap.parse_args()
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images = [s["images"][0] for s in read_samples(data / "train") if s.get("task") == "generation"]
    cfg = VQConfig(codebook_size=256, code_dim=32, depth=1, hidden_size=64, num_layers=2, downsample=8, image_size=64,
                   ema_decay=0.8, dead_code_threshold=0.05)
    vq = train_tokenizer(cfg, images, steps=a.vq_steps, batch_size=16, lr=2e-3, out_dir=out / "vq", warmup_steps=30,
                         progress=False)
    t_vq = time.perf_counter() - t0
    spec = recipe_dict(data, out, False, VLUAS_RECIPE, out / "vq")
    spec["train"]["out"] = str(out)
    stage = spec["stages"][-1]
    stage["steps"] = a.steps
    stage["data"]["train"] = [{"path": str(data / "train"), "tasks": ["generation"], "weight": 1.0},
                              {"path": str(data / "train"), "tasks": ["segmentation"], "weight": 1.0}]
    final = train(Recipe.from_dict(spec), out=out)
    t_train = time.perf_counter() - t0 - t_vq
    scores = run_eval(load(final), data / "test", tasks=["generation", "segmentation"], out_dir=out / "eval",
                      progress=False)
    res = {"vq_train_psnr": round(vq["psnr"], 2), "vq_usage": round(vq["codebook_usage"], 3),
           "vq_seconds": round(t_vq, 1), "lm_steps": a.steps, "train_seconds": round(t_train, 1)}
    for task, metric in (("generation", "gen_correct"), ("segmentation", "miou")):
        m = scores["tasks"][task]["metrics"][metric]
        res[metric] = {"value": round(m["value"], 4), "ci95": [round(x, 4) for x in m["ci95"]], "n": m["n"]}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
