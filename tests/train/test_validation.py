"""train.eval_every: a learning curve of per-task scores on a validation split, logged beside the loss."""
import json

import pytest

from vlkit.config import ConfigError, DataConfig, StageConfig, TrainConfig
from vlkit.train.trainer import Recipe, train
from tests.train.test_trainer import make_pipe


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    from vlkit.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("val") / "val", n=12, tasks=["vqa", "grounding"], split="test",
                            seed=5, progress=False)


def _recipe(out, val_dir, **train_kw):
    data = DataConfig(train=[{"synth": {"tasks": ["vqa", "grounding"]}}], max_length=200)
    return Recipe(train=TrainConfig(out=str(out), precision="fp32", log_every=1, **train_kw),
                  stages=[StageConfig(name="m", train="multitask", steps=4, lr=3e-3, warmup_steps=1, batch_size=4,
                                      data=data)])


def test_eval_every_logs_per_task_scores_against_steps_and_seconds(tokenizer, tmp_path, val_dir):
    train(_recipe(tmp_path / "run", val_dir, eval_every=2, eval_data=str(val_dir), eval_limit=3),
          pipe=make_pipe(tokenizer))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval" in r]
    assert [r["global_step"] for r in evals] == [2, 4]
    for r in evals:
        assert set(r["eval"]) == {"vqa", "grounding"}
        assert all(0.0 <= v <= 1.0 for v in r["eval"].values())
        assert r["seconds"] > 0
    assert evals[1]["seconds"] > evals[0]["seconds"]
    # the predictions behind each point are kept, 3 per task
    preds = (tmp_path / "run" / "evals" / "step-0000004" / "per_sample.jsonl").read_text().splitlines()
    assert len(preds) == 6
    assert len([r for r in rows if "loss" in r]) == 4  # the loss rows are unchanged


def test_eval_every_needs_existing_eval_data(tokenizer, tmp_path, val_dir):
    with pytest.raises(ConfigError, match="eval_data"):
        train(_recipe(tmp_path / "a", val_dir, eval_every=2), pipe=make_pipe(tokenizer))
    with pytest.raises(ConfigError, match="does not exist"):
        train(_recipe(tmp_path / "b", val_dir, eval_every=2, eval_data=str(tmp_path / "nope")),
              pipe=make_pipe(tokenizer))
