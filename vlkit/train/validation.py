"""The learning curve: during training, every `train.eval_every` steps, score greedy answers on a small cached
validation split, so a user sees within minutes whether the model learns to see (not only that its loss falls).

Each evaluation writes its predictions under `<out>/evals/step-NNNNNNN/` and returns a metrics row
`{"stage", "step", "global_step", "seconds", "eval": {task: primary score}}` that the trainer appends to
metrics.jsonl and TensorBoard; the quickstart report plots it against steps and seconds.
"""
from __future__ import annotations

import logging
from pathlib import Path

from vlkit.config import ConfigError, TrainConfig

log = logging.getLogger("vlkit.train")


class Validator:
    def __init__(self, cfg: TrainConfig, out: Path):
        if not cfg.eval_data:
            raise ConfigError("train.eval_every needs train.eval_data: a data folder with a validation split "
                              "(e.g. `vlkit data synth --split test`)")
        if not Path(cfg.eval_data).exists():
            raise ConfigError(f"train.eval_data={cfg.eval_data!r} does not exist")
        self.cfg, self.out = cfg, out

    def __call__(self, pipe, stage: str, step: int, global_step: int, seconds: float) -> dict:
        from vlkit.eval.runner import run_eval
        from vlkit.infer.chat import ChatBundle

        model = pipe.model
        was_training = model.training
        model.eval()
        try:
            scores = run_eval(ChatBundle.of(pipe), self.cfg.eval_data, tasks=self.cfg.eval_tasks, batch_size=64,
                              limit=self.cfg.eval_limit, out_dir=self.out / "evals" / f"step-{global_step:07d}",
                              resamples=100, progress=False)
        finally:
            model.train(was_training)
        row = {"stage": stage, "step": step, "global_step": global_step, "seconds": round(seconds, 1),
               "eval": {task: primary_score(r) for task, r in scores["tasks"].items()}}
        log.info("eval at step %d: %s", global_step, row["eval"])
        return row


def primary_score(result: dict):
    """A task result's primary metric value (None when nothing was scored)."""
    metric = result.get("metrics", {}).get(result.get("primary"), {})
    value = metric.get("value")
    return None if value is None else round(float(value), 4)
