"""vlkit.train.checkpoint: periodic checkpoints with the trainer state, pruning, the latest one, metrics on resume."""
import json
import random

import numpy as np
import pytest
import torch

from vlkit.errors import CheckpointError
from vlkit.train import checkpoint as ckpt


class _Pipe:
    """What save_checkpoint needs of a pipeline: save_pretrained(target, extra=...) writing into a temp dir."""

    def save_pretrained(self, target, extra=None):
        tmp = target.with_name(target.name + ".tmp")
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text("{}")
        extra(tmp)
        tmp.rename(target)


def test_save_keeps_the_last_and_restores_state_and_rng(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    for step in (2, 4, 6):
        ckpt.save_checkpoint(_Pipe(), tmp_path, step, {"stage": 0, "step": step}, opt, keep_last=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-0000004", "step-0000006"]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest == ckpt.checkpoint_dir(tmp_path, 6)
    state, opt_state, rng = ckpt.load_trainer_state(latest)
    assert state["step"] == 6 and opt_state["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    ckpt.set_rng_state(rng, state["python_rng"])
    # the generators are back where they were when the checkpoint was written (before `expected` was drawn)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_a_checkpoint_without_state_is_not_the_latest_and_a_broken_one_names_itself(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    broken = ckpt.checkpoint_dir(tmp_path, 9) / ckpt.STATE_DIR
    broken.mkdir(parents=True)
    (broken / "state.json").write_text("{")
    ckpt.checkpoint_dir(tmp_path, 12).mkdir()  # half written: no trainer state
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path, 9)
    with pytest.raises(CheckpointError, match="step-0000009"):
        ckpt.load_trainer_state(ckpt.checkpoint_dir(tmp_path, 9))


def test_resume_drops_metric_rows_past_the_checkpoint_and_a_torn_line(tmp_path):
    drop_metrics_after = ckpt.drop_metrics_after

    path = tmp_path / "metrics.jsonl"
    rows = [{"stage": "s", "step": i, "global_step": i, "loss": 1.0 / i} for i in range(1, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "s", "step": 8, "glo')
    assert drop_metrics_after(path, 4) == 4  # rows 5, 6, 7 and the torn line
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows[:4])
    assert drop_metrics_after(path, 4) == 0 and drop_metrics_after(tmp_path / "none.jsonl", 4) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left behind
