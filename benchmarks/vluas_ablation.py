"""The ablation the VLUAS papers claim: does predicting visual codes help understanding?

Same model (recipes/quickstart-vluas.yaml architecture), same data (understanding tasks only), same steps and batch,
`vision_target: none` vs `codes`. Prints JSON with VQA (and its counting questions), grounding and OCR scores,
each with its 95% bootstrap CI, plus the wall-clock of each arm (codes also pays for the code loss).

    python benchmarks/vluas_ablation.py --out /tmp/ablation [--data DIR --vq DIR] [--steps 500]

--data: a synthetic data dir with train/ and test/ (e.g. runs/quickstart-vluas/data); generated if absent.
--vq: a trained visual tokenizer with an 8x8 code grid (e.g. runs/quickstart-vluas/vq); trained if absent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

UNDERSTANDING = [
    {"tasks": ["vqa"], "weight": 1.0},
    {"tasks": ["grounding", "reg"], "weight": 0.5},
    {"tasks": ["ocr"], "weight": 0.5},
    {"tasks": ["caption", "chart", "doc"], "weight": 0.25},
]
EVAL = ["vqa", "grounding", "ocr"]


def metric(scores: dict, task: str, name: str, group: tuple[str, str] | None = None) -> dict:
    t = scores["tasks"][task]
    if group is not None:
        t = t["breakdown"][group[0]][group[1]]
    return rounded(t["metrics"][name])


def rounded(m: dict) -> dict:
    """A {"value", "ci95", "n"} summary with 4 decimals (ci95 None stays None)."""
    return {"value": round(m["value"], 4), "ci95": m["ci95"] and [round(x, 4) for x in m["ci95"]], "n": m["n"]}


def run_arm(target: str, data: Path, vq: Path, out: Path, steps: int, batch: int, seed: int) -> dict:
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load
    from vlkit.apps.quickstart import VLUAS_RECIPE, recipe_dict
    from vlkit.train.trainer import Recipe, train

    out.mkdir(parents=True, exist_ok=True)
    spec = recipe_dict(data, out, False, VLUAS_RECIPE, vq)
    spec["model"]["vision_target"] = target
    spec["model"]["dense_prediction"] = False
    if target == "none":
        spec.pop("vq")
    spec["train"].update(out=str(out), seed=seed)
    multitask = spec["stages"][-1]
    multitask.update(steps=steps, batch_size=batch)
    multitask["data"]["train"] = [{"path": str(data / "train"), **src} for src in UNDERSTANDING]
    t0 = time.perf_counter()
    final = train(Recipe.from_dict(spec), out=out)
    train_s = time.perf_counter() - t0
    scores = run_eval(load(final), data / "test", tasks=EVAL, batch_size=64, out_dir=out / "eval", progress=False)
    losses = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return {"train_seconds": round(train_s, 1), "final_loss": losses[-1]["loss"],
            "vqa_acc": metric(scores, "vqa", "vqa_acc"),
            "count_acc": metric(scores, "vqa", "vqa_acc", ("question_type", "count")),
            "grounding_acc@0.5": metric(scores, "grounding", "acc@0.5"),
            "ocr_em": metric(scores, "ocr", "exact_match")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/vluas_ablation")
    ap.add_argument("--data")
    ap.add_argument("--vq")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if a.data else out / "data"
    if not a.data:
        from vlkit.data.synth import generate_dataset

        tasks = ["vqa", "grounding", "reg", "ocr", "caption", "chart", "doc"]
        generate_dataset(data / "train", n=a.n_train, tasks=tasks, split="train", seed=a.seed)
        generate_dataset(data / "test", n=a.n_test, tasks=EVAL, split="test", seed=a.seed + 1)
    vq = Path(a.vq) if a.vq else out / "vq"
    if not a.vq:
        from vlkit.apps.quickstart import train_visual_tokenizer

        train_visual_tokenizer(data, vq, False, a.seed)
    result = {"steps": a.steps, "batch_size": a.batch_size, "data": str(data), "vq": str(vq)}
    for target in ("none", "codes"):
        result[target] = run_arm(target, data, vq, out / target, a.steps, a.batch_size, a.seed)
        print(json.dumps({target: result[target]}), file=sys.stderr)
    result["codes_minus_none"] = {k: round(result["codes"][k]["value"] - result["none"][k]["value"], 4)
                                  for k in ("vqa_acc", "count_acc", "grounding_acc@0.5", "ocr_em")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
