"""The text oracle: how well does the quickstart's language model learn VQA when it is given perfect perception?

The image is replaced by its exact scene description as text ("Scene: small blue circle at 0 5, large cyan
triangle at 2 2, ..."; `--fmt grid`: a 4 x 4 grid of cell words), so what it measures is how fast the LM learns
the lookups themselves, with nothing left to perceive (docs/training.md, rows 17-24).

    python benchmarks/text_oracle.py --out /tmp/oracle [--steps 1400] [--batch 32] [--fmt list|grid]
        [--turns 1] [--curriculum 2:700] [--question-first] [--seed 0] [--n-test 400]

Trains the quickstart recipe's LM shape (recipes/quickstart.yaml `model.text`, `init: fan_in`) with vlkit's trainer
on VQA samples of the synthetic train split (their images dropped), evaluates greedy exact match on VQA samples of
the test split, and prints JSON: accuracy overall and per question type with 95% bootstrap CIs, n and the
training time. `--curriculum K:S,...`: first S steps on scenes of at most K objects (stage by stage), the rest on
the full world.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CELLS = 8  # "at x y": the object's center on an 8 x 8 grid
GRID = 4  # --fmt grid: a 4 x 4 grid of cells, as the quickstart's LM token grid


def scene_text(objects: list[dict], size: int, fmt: str) -> str:
    def cell(o: dict, n: int) -> tuple[int, int]:
        x1, y1, x2, y2 = o["bbox"]
        return min(int((x1 + x2) / 2 / size * n), n - 1), min(int((y1 + y2) / 2 / size * n), n - 1)

    if fmt == "list":
        return "Scene: " + ", ".join(f"{o['size']} {o['color']} {o['shape']} at {' '.join(map(str, cell(o, CELLS)))}"
                                     for o in objects) + "."
    cells: list[list[str]] = [[] for _ in range(GRID * GRID)]
    for o in objects:
        x, y = cell(o, GRID)
        cells[y * GRID + x].append(f"{o['size']} {o['color']} {o['shape']}")
    return "Grid: " + " | ".join(" & ".join(c) if c else "-" for c in cells)


def as_text(sample: dict, size: int, fmt: str, question_first: bool) -> dict:
    """The sample with its image replaced by the scene's text (the first turn's question kept)."""
    conv = [dict(t) for t in sample["conversations"]]
    question = conv[0]["value"].replace("<image>", "").strip()
    scene = scene_text(sample["meta"]["objects"], size, fmt)
    conv[0]["value"] = f"{question}\n{scene}" if question_first else f"{scene}\n{question}"
    return {"id": sample["id"], "conversations": conv, "meta": sample["meta"]}


def write_split(path: Path, n: int, split: str, seed: int, a, **synth) -> list[dict]:
    from vlkit.config.synth import SynthConfig
    from vlkit.data.synth.tasks import make_memory_sample

    cfg = SynthConfig(split=split, turns=a.turns if split == "train" else 1, **synth)
    rows = [as_text(make_memory_sample("vqa", i, seed, cfg), cfg.size, a.fmt, a.question_first) for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/text_oracle")
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fmt", choices=("list", "grid"), default="list")
    ap.add_argument("--turns", type=int, default=1, help="questions per scene in training (synth.turns)")
    ap.add_argument("--curriculum", default="", help="K:S,... S steps on scenes of at most K objects first")
    ap.add_argument("--question-first", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=400)
    a = ap.parse_args()

    from vlkit.eval.metrics import summarize
    from vlkit.pipeline import load
    from vlkit.train.trainer import Recipe, train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = [tuple(map(int, p.split(":"))) for p in a.curriculum.split(",") if p]
    if sum(s for _, s in phases) >= a.steps:
        raise SystemExit(f"--curriculum steps ({sum(s for _, s in phases)}) must leave steps of --steps {a.steps}")
    quick = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    stage = {"train": "multitask", "lr": 2.0e-3, "warmup_steps": 50, "batch_size": a.batch}
    stages = []
    for k, (max_objects, steps) in enumerate(phases):
        f = out / f"train-phase{k}.jsonl"
        write_split(f, steps * a.batch, "train", a.seed + 100 + k, a, max_objects=max_objects)
        stages.append({**stage, "name": f"phase{k}", "steps": steps, "data": {"max_length": 400, "train": [str(f)]}})
    rest = a.steps - sum(s for _, s in phases)
    write_split(out / "train.jsonl", rest * a.batch, "train", a.seed, a)
    stages.append({**stage, "name": "oracle", "steps": rest,
                   "data": {"max_length": 400, "train": [str(out / "train.jsonl")]}})
    test = write_split(out / "test.jsonl", a.n_test, "test", a.seed + 1, a)
    recipe = {"model": {**quick["model"], "init": "fan_in", "dense_prediction": False},
              "tokenizer": quick["tokenizer"], "stages": stages,
              "train": {"out": str(out / "run"), "precision": "auto", "log_every": 50, "seed": a.seed, "keep_last": 1,
                        "grad_clip": 1.0}}
    recipe["model"].pop("dense_from", None)
    t0 = time.perf_counter()
    final = train(Recipe.from_dict(recipe), out=out / "run")
    train_s = time.perf_counter() - t0
    pipe = load(final)
    preds: list[str] = []
    for i in range(0, len(test), 64):
        preds += pipe.chat_batch([s["conversations"][0]["value"] for s in test[i:i + 64]], max_new_tokens=8)
    hits: dict[str, list[float]] = {}
    for s, p in zip(test, preds):
        ok = float(p.strip().lower().rstrip(".") == s["conversations"][1]["value"].lower())
        for key in ("all", s["meta"]["question_type"]):
            hits.setdefault(key, []).append(ok)
    print(json.dumps({"settings": {k: v for k, v in vars(a).items() if k != "out"}, "train_seconds": round(train_s, 1),
                      "vqa_accuracy": {k: summarize(v) for k, v in sorted(hits.items())}}, indent=2))


if __name__ == "__main__":
    main()
