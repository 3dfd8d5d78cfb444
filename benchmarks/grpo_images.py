"""GRPO with the generation verifier's reward vs continued SFT at equal extra wall-clock, for a VLUAS text-to-image
model (issue 21, "Images"). docs/rl.md, "Images: GRPO with the verifier (benchmark)".

Every arm starts from the same checkpoint: `--init`, a VLUAS generation checkpoint (vluas_generation.py's
`final/`), or with `--train-steps N` one trained here by vluas_generation.train_model (generation only, `--grid`,
`--lm-n` samples, `--vq-steps`). The arms:

- `start`: no extra training.
- `sft`: an `sft` stage (connector + LM, as grpo) on the train split's generation samples: the reference images'
  codes, with the recipe's prompt dropout (0.1), so guidance keeps its unconditional branch.
- `grpo`: a `grpo` stage on the same prompts, rewards {image: 1.0} (the verifier's mean of its colour, shape and
  position checks), `--generations` images per prompt sampled unguided at `--temperature` (docs/rl.md, "Image
  rollouts (VLUAS)").

Budget: a short probe of each arm (`--probe-steps` from the start, a trainer callback timing every step, the
first not counted) gives its seconds per step; the arm then gets floor(`--seconds` / that) steps. Each arm's
stepping seconds are measured the same way and reported. `--clock cpu` times the process's CPU seconds, which
other jobs on a shared CPU do not inflate (run with OMP_NUM_THREADS=1 there); `wall` (default) wall-clock.

Evaluation: vlkit's runner, task `generation` (classifier-free guidance 1.5, a per-sample seed: the eval's
defaults), on a held-out test split (`--n-test` samples of split=test, which holds the held-out (colour, shape)
pairs and the held-out relation phrasing): correctness (the verifier's verdict) overall, on prompts with a
held-out pair, with the held-out phrasing, and on the rest ("seen"), each with its 95% bootstrap CI and n; paired
differences (grpo - sft, grpo - start, sft - start) on the same samples with paired 95% bootstrap CIs. Prints JSON;
progress goes to stderr.

    python benchmarks/grpo_images.py --init /tmp/vluas_g8/final --seconds 1800 --n-test 500
    # validation scale (docs/rl.md): trains a small start itself
    python benchmarks/grpo_images.py --train-steps 300 --lm-n 2000 --vq-steps 300 --seconds 60 --n-test 100 \\
        --clock cpu --out /tmp/grpo_images
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from arms import paired, per_sample, rounded
from vluas_generation import heldout_kind, train_model

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
ARMS = ("sft", "grpo")
DIFFERENCES = (("grpo", "sft"), ("grpo", "start"), ("sft", "start"))
# (slice, which test prompts: a predicate on heldout_kind)
SLICES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("all", lambda k: True), ("heldout_pair", lambda k: "pair" in k), ("heldout_phrasing", lambda k: "phrasing" in k),
    ("seen", lambda k: k == "seen"))


def log(**kw) -> None:
    print(json.dumps(kw), file=sys.stderr, flush=True)


def stage(arm: str, steps: int, a: argparse.Namespace, train_data: Path) -> dict:
    data = {"max_length": a.max_length, "train": [{"path": str(train_data), "tasks": ["generation"]}]}
    common = {"name": arm, "train": arm, "steps": steps, "warmup_steps": min(10, max(1, steps // 10)), "data": data}
    if arm == "sft":
        return {**common, "batch_size": a.batch_size, "lr": a.lr_sft}
    return {**common, "batch_size": a.prompts, "lr": a.lr_grpo,
            "grpo": {"num_generations": a.generations, "temperature": a.temperature, "rewards": {"image": 1.0}}}


def timed_train(init: Path, st: dict, out: Path, seed: int, clock: Callable[[], float]) -> tuple[Path, list[float]]:
    """Trains one stage from `init` in process; returns (final checkpoint, the clock after each step)."""
    from vlkit.config import Recipe
    from vlkit.train.trainer import train

    rec = {"init": str(init), "stages": [st],
           "train": {"out": str(out), "seed": seed, "log_every": 5, "keep_last": 1, "grad_clip": 1.0,
                     "precision": "auto"}}
    times: list[float] = []
    final = train(Recipe.from_dict(rec), out=out, callbacks=(lambda trainer, step: times.append(clock()),))
    return final, times


def seconds_per_step(times: list[float]) -> float:
    """The median step time from the callback's timestamps; the first step (warm-up) is not counted."""
    if len(times) < 2:
        raise ValueError("a timing probe needs at least 2 steps (--probe-steps >= 2)")
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def start_checkpoint(a: argparse.Namespace, out: Path) -> tuple[Path, dict]:
    if a.init:
        return Path(a.init), {"init": a.init}
    final = out / "start" / "final"
    if final.exists():
        return final, {"init": str(final)}
    final, res = train_model(out / "start", ["generation"], a.lm_n, a.train_steps, 32, 10, a.vq_steps,
                             min(a.lm_n, 8000), a.grid)
    log(start=str(final), **res)
    return final, {"init": str(final), **res}


def scores(ckpt: Path, test: Path, out: Path, kinds: dict[str, str]) -> tuple[dict, dict]:
    """Evaluates `ckpt` on the generation test split -> ({slice: summary}, {slice: {sample id: correct}})."""
    from vlkit.eval.metrics import summarize
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load

    run_eval(load(ckpt), test, tasks=["generation"], out_dir=out, progress=False)
    correct = per_sample(out, "generation", "gen_correct")
    values = {name: {i: v for i, v in correct.items() if keep(kinds[i])} for name, keep in SLICES}
    summary = {}
    for name, vals in values.items():
        s = summarize(vals.values())
        summary[name] = {"value": rounded(s["value"]), "ci95": rounded(s["ci95"]), "n": s["n"]}
    return summary, values


def last_rewards(run: Path) -> dict:
    """The grpo run's mean reward over its first and last logged steps (metrics.jsonl)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    return {"first_logged": rows[0]["reward"], "last_logged": rows[-1]["reward"],
            "steps_logged": [r["step"] for r in (rows[0], rows[-1])]} if rows else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", help="the starting VLUAS generation checkpoint")
    ap.add_argument("--train-steps", type=int, help="without --init: train a start for this many LM steps")
    ap.add_argument("--lm-n", type=int, default=8000, help="--train-steps: the start's generation samples")
    ap.add_argument("--vq-steps", type=int, default=2000, help="--train-steps: the visual tokenizer's steps")
    ap.add_argument("--grid", type=int, choices=[8, 16], default=8, help="--train-steps: codes per side")
    ap.add_argument("--out", default="/tmp/grpo_images")
    ap.add_argument("--seconds", type=float, default=600, help="extra stepping seconds per arm (of --clock)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--probe-steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="the arms' training seed (data order, rollouts)")
    ap.add_argument("--train-n", type=int, default=4000, help="the arms' training prompts (split=train)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out test prompts (split=test)")
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32, help="sft: samples per step")
    ap.add_argument("--lr-sft", type=float, default=5e-4)
    ap.add_argument("--prompts", type=int, default=8, help="grpo: prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="grpo: images per prompt")
    ap.add_argument("--temperature", type=float, default=1.0, help="grpo: rollout temperature")
    ap.add_argument("--lr-grpo", type=float, default=1e-4)
    a = ap.parse_args()
    if not a.init and not a.train_steps:
        ap.error("give --init CHECKPOINT or --train-steps N")
    from vlkit.data.sources import read_samples
    from vlkit.data.synth import generate_dataset

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    init, res = start_checkpoint(a, out)
    train_data, test = out / "train_data", out / "test"
    if not (train_data / "data.jsonl").exists():
        generate_dataset(train_data, n=a.train_n, tasks=["generation"], split="train", seed=2, progress=False)
    if not (test / "data.jsonl").exists():
        generate_dataset(test, n=a.n_test, tasks=["generation"], split="test", seed=1, progress=False)
    kinds = {s["id"]: heldout_kind(s["meta"]) for s in read_samples(test)}
    clock = CLOCKS[a.clock]
    res.update({"seconds_per_arm": a.seconds, "clock": a.clock, "seed": a.seed, "n_test": len(kinds), "arms": {}})
    summaries, values = {}, {}
    summaries["start"], values["start"] = scores(init, test, out / "eval_start", kinds)
    res["arms"]["start"] = {"scores": summaries["start"]}
    log(arm="start", **summaries["start"]["all"])
    for arm in ARMS:
        _, probe = timed_train(init, stage(arm, a.probe_steps, a, train_data), out / f"probe_{arm}", a.seed, clock)
        rate = seconds_per_step(probe)
        steps = max(1, math.floor(a.seconds / rate))
        log(arm=arm, seconds_per_step=round(rate, 3), steps=steps)
        final, times = timed_train(init, stage(arm, steps, a, train_data), out / arm, a.seed, clock)
        used = (times[-1] - times[0]) + seconds_per_step(times) if len(times) > 1 else rate
        summaries[arm], values[arm] = scores(final, test, out / f"eval_{arm}", kinds)
        res["arms"][arm] = {"steps": steps, "probe_seconds_per_step": round(rate, 3),
                            "stepping_seconds": round(used, 1), "scores": summaries[arm]}
        if arm == "grpo":
            res["arms"][arm]["reward"] = last_rewards(out / arm)
        log(arm=arm, **summaries[arm]["all"])
    res["differences"] = {f"{x}_minus_{y}": {k: {key: p[key] for key in ("difference", "ci95", "n")}
                                             for k, p in ((k, paired(values[x][k], values[y][k]))
                                                          for k in values[x] if values[x][k])}
                          for x, y in DIFFERENCES}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
