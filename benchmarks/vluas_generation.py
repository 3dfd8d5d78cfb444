"""Text-to-image correctness and NTP-M segmentation mIoU of one VLUAS model on the synthetic world.

1. Data: `--n` training samples per task (generation, segmentation), `--test-n` (100) held-out test samples per
   task.
2. The visual tokenizer (`vq.downsample` = 64 / `--grid`) is trained on the first `--vq-images` (8,000)
   generation images; its ceiling, the verifier's verdict on the test images after encode -> decode, is measured.
3. recipes/vluas-grid16.yaml (patch 64 / `--grid`, so the token grid is the code grid) is trained on the tasks
   and evaluated on the test split: generation correctness by the synthetic world's verifier (shape, colour and
   relation as prompted), segmentation mIoU with and without the edge-aware refinement. `--noise-steps` adds a
   last stage on the generation data with `data.prompt_noise` 0.5 (filler words inserted in the prompts).
Prints JSON.

    python benchmarks/vluas_generation.py --out /tmp/vluas_gen            # one model, 16 x 16, both tasks
    # 8 x 8, generation only: 0.81 [0.77, 0.84] at cfg 1.5 (0.76 without --noise-steps; docs/vision_as_target.md);
    # 101 min on 2 CPU cores, ~9 GB
    python benchmarks/vluas_generation.py --out /tmp/vluas_g8 --grid 8 --tasks generation --n 200000 --steps 18000 \
        --noise-steps 2000 --batch-size 64 --test-n 500
    python benchmarks/vluas_generation.py --out /tmp/ntpm --tasks segmentation --vision-target none  # NTP-M only
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from vluas_ablation import rounded  # benchmarks/ is on sys.path when this script runs

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "vluas-grid16.yaml"


def metric(scores: dict, task: str, name: str) -> dict:
    """One metric of run_eval's scores, rounded (vluas_ablation.rounded)."""
    return rounded(scores["tasks"][task]["metrics"][name])


def tokenizer_ceiling(vq_dir: Path, test: Path) -> float:
    """The fraction of held-out generation images that the verifier still accepts after encode -> decode."""
    import torch

    from vlkit.data.sources import read_samples
    from vlkit.data.synth.verify import check_generation
    from vlkit.models.vq import VisualTokenizer, tensor_to_pil

    vq = VisualTokenizer.from_pretrained(vq_dir).eval()
    samples = [s for s in read_samples(test) if s.get("task") == "generation"]
    with torch.no_grad():
        pixels = vq.preprocess([s["images"][0] for s in samples])
        recon = tensor_to_pil(vq.decode_codes(vq.encode(pixels)))
    ok = [check_generation(r, s["meta"]["objects"], s["meta"].get("relation"))["correct"] for r, s in zip(recon, samples)]
    return sum(ok) / len(ok)


def heldout_kind(meta: dict) -> str:
    """What a test prompt holds out: nothing ("seen"), a (colour, shape) pair never shown in training ("pair"), the
    short relation phrasing ("left of" with no "to the": "phrasing"), or both ("pair+phrasing")."""
    from vlkit.data.synth import DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES

    pair = any((o["color"], o["shape"]) in DEFAULT_HELDOUT_PAIRS for o in meta["objects"])
    phrase = any(f" {p} " in meta["prompt"] and f"the {p}" not in meta["prompt"] for p in DEFAULT_HELDOUT_PHRASES)
    return "+".join(k for k, on in (("pair", pair), ("phrasing", phrase)) if on) or "seen"


def heldout_kinds(test: Path, eval_dir: Path) -> dict:
    """Generation correctness by what a test prompt holds out (heldout_kind)."""
    from vlkit.data.sources import read_samples
    from vlkit.eval.metrics import summarize

    correct = {r["id"]: r["gen_correct"] for r in map(json.loads, open(eval_dir / "per_sample.jsonl"))
               if r["task"] == "generation"}
    groups: dict[str, list[float]] = {}
    for s in read_samples(test):
        if s.get("id") in correct:
            groups.setdefault(heldout_kind(s["meta"]), []).append(correct[s["id"]])
    return {k: rounded(summarize(groups[k])) for k in sorted(groups)}


# How the relation is worded, for the phrasing probe; "to the {} of" is the trained form, "{} of" the held-out one.
WORDINGS = ("to the {} of", "to {} of", "the {} of", "{} of", "so so {} of")


def phrasing_probe(pipe, test: Path, n: int = 80) -> dict:
    """Generation correctness on the test split's first `n` left/right prompts, reworded each way in WORDINGS
    (same objects, same seeds): which words the model needs in order to bind the first object."""
    from vlkit.data.sources import read_samples
    from vlkit.data.synth.verify import check_generation
    from vlkit.eval.metrics import summarize

    rows = [s["meta"] for s in read_samples(test)
            if s.get("task") == "generation" and s["meta"]["relation"] in ("left of", "right of")][:n]
    res = {}
    for wording in WORDINGS:
        ok = []
        for i, m in enumerate(rows):
            prompt = re.sub(r"(to the )?(left|right) of", lambda g: wording.format(g[2]), m["prompt"], count=1)
            ok.append(check_generation(pipe.generate_image(prompt, seed=i), m["objects"], m["relation"])["correct"])
        res[wording.format("X")] = rounded(summarize(ok))
    return res


def train_model(out: Path, tasks: list[str], n: int, steps: int, batch_size: int, test_n: int, vq_steps: int,
                vq_images: int, grid: int, noise_steps: int = 0, vision_target: str = "codes") -> tuple[Path, dict]:
    """Steps 1 to 3 of this script's recipe: the data (out/data/train and out/data/test), the visual tokenizer
    (out/vq) and the LM. -> (the final checkpoint, {the tokenizer's figures, timings})."""
    from vlkit.apps.quickstart import recipe_dict
    from vlkit.config import VQConfig
    from vlkit.data.sources import read_samples
    from vlkit.data.synth import generate_dataset
    from vlkit.train.trainer import Recipe, train
    from vlkit.train.vq_trainer import train_visual_tokenizer

    patch = 64 // grid
    data = out / "data"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = sorted(set(tasks) | ({"generation"} if vision_target == "codes" else set()))  # the tokenizer's images
    generate_dataset(data / "train", n=n * len(made), tasks=made, split="train", seed=0, progress=False)
    generate_dataset(data / "test", n=2 * test_n, tasks=["generation", "segmentation"], split="test", seed=1,
                     progress=False)
    res: dict = {"grid": grid, "tasks": tasks, "vision_target": vision_target}
    spec = recipe_dict(data, out, False, RECIPE, out / "vq")
    if vision_target == "codes":
        images = [s["images"][0] for s in read_samples(data / "train") if s.get("task") == "generation"]
        images = images[:vq_images]  # held in memory as float tensors: 200,000 would take 10 GB
        cfg = VQConfig(codebook_size=256, code_dim=32, depth=1, hidden_size=64, num_layers=2, downsample=patch,
                       image_size=64, ema_decay=0.8, dead_code_threshold=0.05)
        vq = train_visual_tokenizer(cfg, images, steps=vq_steps, batch_size=32, lr=2e-3, out_dir=out / "vq",
                                    warmup_steps=50, progress=False)
        res.update({"vq_psnr": round(vq["psnr"], 2), "vq_usage": round(vq["codebook_usage"], 3),
                    "vq_ceiling_gen_correct": round(tokenizer_ceiling(out / "vq", data / "test"), 3)})
    else:
        spec["model"]["vision_target"] = "none"
        spec.pop("vq")
    t_vq = time.perf_counter() - t0
    spec["model"]["vision"]["patch_size"] = patch
    stage = spec["stages"][-1]
    stage["steps"], stage["batch_size"] = steps, batch_size
    stage["data"]["train"] = [src for src in stage["data"]["train"] if src["tasks"][0] in tasks]
    if noise_steps:
        gen_data = [src for src in stage["data"]["train"] if src["tasks"][0] == "generation"]
        spec["stages"].append(dict(stage, name="prompt-noise", steps=noise_steps, lr=5e-4, warmup_steps=100,
                                   data=dict(stage["data"], train=gen_data, prompt_noise=0.5)))
    final = train(Recipe.from_dict(spec), out=out)
    t_train = time.perf_counter() - t0 - t_vq
    res.update({"data_and_vq_seconds": round(t_vq, 1), "lm_steps": steps, "noise_steps": noise_steps,
                "lm_batch_size": batch_size, "train_seconds": round(t_train, 1)})
    return final, res


class Unrefined:
    """The pipeline with `segment(..., refine=False)`: plain bilinear decoding, for comparison."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def segment(self, image, classes):
        return self.pipe.segment(image, classes, refine=False)


def main() -> None:
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/vluas_gen")
    ap.add_argument("--n", type=int, default=8000, help="training samples per task")
    ap.add_argument("--steps", type=int, default=1500, help="LM steps")
    ap.add_argument("--batch-size", type=int, default=32, help="LM batch size")
    ap.add_argument("--test-n", type=int, default=100, help="held-out test samples per task")
    ap.add_argument("--vq-steps", type=int, default=2000, help="tokenizer steps (batch 32)")
    ap.add_argument("--vq-images", type=int, default=8000, help="the tokenizer trains on the first this many")
    ap.add_argument("--grid", type=int, choices=[8, 16], default=16, help="image tokens (= codes) per side")
    ap.add_argument("--noise-steps", type=int, default=0,
                    help="a last stage of this many steps (lr 5e-4) with data.prompt_noise 0.5 on the generation data")
    ap.add_argument("--tasks", default="generation,segmentation")
    ap.add_argument("--vision-target", choices=["codes", "none"], default="codes",
                    help="none: no tokenizer and no code targets (segmentation only)")
    a = ap.parse_args()
    tasks = [t for t in a.tasks.split(",") if t]
    if not tasks or set(tasks) - {"generation", "segmentation"}:
        ap.error(f"--tasks {a.tasks!r}: choose from generation, segmentation")
    if a.vision_target == "none" and "generation" in tasks:
        ap.error("generation needs --vision-target codes")
    if a.noise_steps and "generation" not in tasks:
        ap.error("--noise-steps adds prompt noise to generation prompts: it needs --tasks with generation")
    out = Path(a.out)
    data = out / "data"
    final, res = train_model(out, tasks, a.n, a.steps, a.batch_size, a.test_n, a.vq_steps, a.vq_images, a.grid,
                             a.noise_steps, a.vision_target)
    pipe = load(final)
    if "generation" in tasks:
        gen = run_eval(pipe, data / "test", tasks=["generation"], out_dir=out / "eval", progress=False)
        res["gen_correct"] = metric(gen, "generation", "gen_correct")
        res["gen_correct_by_heldout"] = heldout_kinds(data / "test", out / "eval")
        res["gen_correct_by_wording"] = phrasing_probe(pipe, data / "test")
    if "segmentation" in tasks:
        seg = run_eval(pipe, data / "test", tasks=["segmentation"], out_dir=out / "eval", progress=False)
        raw = run_eval(Unrefined(pipe), data / "test", tasks=["segmentation"], out_dir=out / "eval_raw",
                       progress=False)
        res["miou"] = metric(seg, "segmentation", "miou")
        res["miou_no_refine"] = metric(raw, "segmentation", "miou")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
