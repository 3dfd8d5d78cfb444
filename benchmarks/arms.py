"""What the quality benchmarks that compare training arms share (native_resolution.py, video_qa.py): one tokenizer
for every arm, a one-stage recipe trained in process with vlkit's trainer, an evaluation with vlkit's runner, and
paired differences between arms on the same held-out samples with vlkit's bootstrap (vlkit.eval.scoring).
Nothing here scores anything itself."""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

from vlkit.eval.scoring import MeanMetric, paired_difference

# the tokenizer's corpus: this many samples of the training stream (every arm shares the tokenizer)
CORPUS_SAMPLES = 1000
# two-sided 95% quantiles of Student's t for 1..20 degrees of freedom (more: about 2.09 or less)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086)


def t_interval(xs: list[float]) -> tuple[float, Optional[float]]:
    """The mean of `xs` (repeated runs: seeds, timing windows) and the half-width of its 95% t-interval (None for
    one value)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    return m, T975[min(len(xs) - 1, len(T975)) - 1] * statistics.stdev(xs) / math.sqrt(len(xs))


def quickstart_model() -> dict:
    """The quickstart's `model:` section (recipes/quickstart.yaml: the shape that learns to see from scratch on a
    CPU: conv stem, 2x2 merge, 4 x 128 LM, fan_in init) without its dense-label head (text and video samples have
    no per-patch labels)."""
    import yaml

    model = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "quickstart.yaml").read_text())["model"]
    return {k: v for k, v in model.items() if not k.startswith("dense_")}


def shared_tokenizer(stream: Callable[[int], dict], path: Path, vocab_size: int = 512) -> Path:
    from vlkit.data.sources import corpus_text
    from vlkit.tokenizer import Tokenizer

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Tokenizer.train(list(corpus_text(stream(g) for g in range(CORPUS_SAMPLES))), vocab_size=vocab_size).save(path)
    return path


def train_arm(model: dict, data: dict, tokenizer: Path, out: Path, steps: int, batch: int, lr: float,
              seed: int) -> tuple[Path, dict]:
    """Trains a fresh model (the `model:` recipe section) for one multitask stage on `data` (the stage's `data:`);
    returns (final checkpoint, {train_seconds, final_loss}). A finished run of the same recipe in `out` is reused
    (its recorded seconds), so a benchmark interrupted after training resumes at its evaluation."""
    from vlkit.config import Recipe, to_dict
    from vlkit.train.trainer import train

    recipe = Recipe.from_dict({
        "model": model, "tokenizer": {"path": str(tokenizer)},
        "train": {"out": str(out), "seed": seed, "log_every": max(1, steps // 10)},
        "stages": [{"name": "multitask", "train": "multitask", "steps": steps, "batch_size": batch, "lr": lr,
                    "warmup_steps": max(1, steps // 20), "data": data}]})
    done = out / "train_seconds.json"
    if done.exists() and json.loads((out / "recipe.json").read_text()) == json.loads(json.dumps(to_dict(recipe))):
        seconds = json.loads(done.read_text())
    else:
        t0 = time.perf_counter()
        train(recipe, out=out)
        seconds = round(time.perf_counter() - t0, 1)
        done.write_text(json.dumps(seconds))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    return out / "final", {"train_seconds": seconds, "final_loss": rows[-1]["loss"]}


def evaluate(final: Path, data: Path, tasks: list[str], out: Path, blind: bool = False) -> dict:
    """vlkit's evaluation of the checkpoint on `data` (scores.json and per_sample.jsonl in `out`)."""
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load

    return run_eval(load(final), data, tasks=tasks, batch_size=32, out_dir=out, progress=False, blind=blind)


def per_sample(eval_dir: Path, task: str, metric: str) -> dict[str, float]:
    """{sample id: the metric's value} from an evaluation's per_sample.jsonl."""
    rows = [json.loads(line) for line in (eval_dir / "per_sample.jsonl").read_text().splitlines()]
    return {r["id"]: float(r[metric]) for r in rows if r["task"] == task}


def paired(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict:
    """a - b on the samples both scored: each arm's mean with its 95% CI and the difference with a paired 95%
    bootstrap CI (vlkit.eval.scoring.paired_difference); `n`: the samples."""
    ids = sorted(set(a) & set(b))
    d = paired_difference(MeanMetric([a[i] for i in ids]), MeanMetric([b[i] for i in ids]), range(len(ids)),
                          seed=seed)
    return {"a": rounded(d["with_images"]), "a_ci95": rounded(d["with_images_ci95"]), "b": rounded(d["blind"]),
            "b_ci95": rounded(d["blind_ci95"]), "difference": rounded(d["difference"]), "ci95": rounded(d["ci95"]),
            "n": len(ids)}


def rounded(x: Optional[float | list]) -> Optional[float | list]:
    if x is None:
        return None
    return [round(v, 4) for v in x] if isinstance(x, list) else round(x, 4)
