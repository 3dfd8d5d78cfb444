"""`run_eval(..., blind=True)` / `vlkit eval --blind`: a model must beat its blind self (issue 22)."""
import json

import numpy as np
import pytest

from vlkit.eval import metrics as M
from vlkit.eval.report import scores_table
from vlkit.eval.runner import BLIND_FILL, PREDICTIONS_FILE, run_eval
from tests.eval.helpers import GREY, ColorPipe, write_color_data

COLORS20 = ["red", "green", "blue", "yellow"] * 5


def _read_samples(n):
    """ocr samples whose answer is in the prompt: a model solves them without looking at the image."""
    return [{"id": f"ocr-{i}", "image": f"images/{i % 4}.png", "task": "ocr", "meta": {"answers": [f"W{i}"]},
             "conversations": [{"from": "human", "value": f"<image>\nRead: W{i}"}, {"from": "gpt", "value": f"W{i}"}]}
            for i in range(n)]


def test_blank_images_of_the_same_size_reach_the_model(tmp_path):
    write_color_data(tmp_path / "data", COLORS20, size=(24, 16))
    pipe = ColorPipe()
    scores = run_eval(pipe, tmp_path / "data", out_dir=tmp_path / "out", blind=True, progress=False, resamples=200)
    assert len(pipe.calls) == 40
    seen = [ims[0] for _, ims in pipe.calls if ims[0].getpixel((0, 0)) != GREY]
    blank = [ims[0] for _, ims in pipe.calls if ims[0].getpixel((0, 0)) == GREY]
    assert len(seen) == len(blank) == 20
    assert GREY == BLIND_FILL
    for im in blank:  # every pixel grey, the original's size
        assert im.size == (24, 16) and np.all(np.asarray(im.convert("RGB")) == np.array(GREY, dtype=np.uint8))
    b = scores["tasks"]["vqa"]["blind"]
    assert (b["with_images"], b["blind"], b["difference"]) == (1.0, 0.0, 1.0)
    assert b["ci95"] == [1.0, 1.0] and b["beats_blind"] and b["n"] == 20
    assert scores["blind"]["not_beating_blind"] == []
    # the blind answers are the model's answers to blank images, not the normal ones
    records = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()]
    assert sorted(r["prediction"] for r in records if r["blind"]) == ["grey"] * 20
    assert sorted(r["prediction"] for r in records if not r["blind"]) == sorted(COLORS20)


def test_difference_and_paired_ci_per_task_and_the_flag(tmp_path):
    answers = list(COLORS20)
    for i in range(0, 20, 4):
        answers[i] = "purple"  # 5 of 20 ground-truth answers no model gets: with images 0.75
    write_color_data(tmp_path / "data", COLORS20, answers=answers, extra=_read_samples(12))
    scores = run_eval(ColorPipe(), tmp_path / "data", out_dir=tmp_path / "out", blind=True, progress=False,
                      resamples=500, seed=3)
    vqa, ocr = scores["tasks"]["vqa"]["blind"], scores["tasks"]["ocr"]["blind"]
    assert (vqa["with_images"], vqa["blind"], vqa["difference"]) == (0.75, 0.0, 0.75)
    assert scores["tasks"]["vqa"]["metrics"]["vqa_acc"]["value"] == vqa["with_images"]
    # paired: the CI is the bootstrap of the per-sample differences (the same resamples for both scores)
    per_sample = [float(a == c) for a, c in zip(answers, COLORS20)]
    assert vqa["ci95"] == pytest.approx(list(M.bootstrap_ci(20, M.mean_statistic(per_sample), 500, 3)))
    assert 0 < vqa["ci95"][0] < 0.75 < vqa["ci95"][1] <= 1 and vqa["beats_blind"]
    # the text alone answers ocr: equal scores, a zero difference, flagged
    assert (ocr["with_images"], ocr["blind"], ocr["difference"], ocr["ci95"]) == (1.0, 1.0, 0.0, [0.0, 0.0])
    assert not ocr["beats_blind"] and scores["blind"]["not_beating_blind"] == ["ocr"]
    md = (tmp_path / "out" / "scores.md").read_text()
    assert "| vqa | vqa_acc | 0.750 | 0.000 | +0.750 |" in md and "| ocr | exact_match | 1.000 | 1.000 | +0.000 |" in md
    assert "**Does not beat its blind self** (the CI of the difference includes or is below 0): ocr" in md
    assert md == scores_table(json.loads((tmp_path / "out" / "scores.json").read_text()))


def test_blind_predictions_are_cached_apart_from_the_normal_ones(tmp_path):
    write_color_data(tmp_path / "data", COLORS20)
    out = tmp_path / "out"
    normal = run_eval(ColorPipe(), tmp_path / "data", out_dir=out, progress=False, resamples=50)
    assert "blind" not in normal and "blind" not in normal["tasks"]["vqa"]
    pipe = ColorPipe()
    blind = run_eval(pipe, tmp_path / "data", out_dir=out, blind=True, progress=False, resamples=50)
    assert len(pipe.calls) == 20 and all(ims[0].getpixel((0, 0)) == GREY for _, ims in pipe.calls)
    assert blind["predictions"] == {"total": 40, "reused": 20, "new": 20}
    again = ColorPipe()
    assert run_eval(again, tmp_path / "data", out_dir=out, blind=True, progress=False, resamples=50) == {
        **blind, "predictions": {"total": 40, "reused": 40, "new": 0}}
    assert again.calls == []
    # a normal run afterwards still scores the answers given with images
    assert run_eval(ColorPipe(), tmp_path / "data", out_dir=out, progress=False,
                    resamples=50)["tasks"] == normal["tasks"]


def test_every_task_kind_gets_a_blind_score_except_text_to_image(tmp_path, monkeypatch):
    """The runner's fake pipe answers from the prompt alone (and segments every image alike): no task beats
    blind, segmentation's mIoU included; text-to-image has no input image to blank."""
    from vlkit.data.synth import verify

    from tests.eval.test_runner import FakePipe, build_dataset

    monkeypatch.setattr(verify, "check_generation", lambda image, objects, relation: {"correct": True})
    _, truth = build_dataset(tmp_path / "data")
    pipe = FakePipe(truth)
    scores = run_eval(pipe, tmp_path / "data", out_dir=tmp_path / "out", blind=True, progress=False, resamples=50)
    assert scores["blind"]["no_input_image"] == ["generation"] and len(pipe.gen_calls) == 3
    assert "blind" not in scores["tasks"]["generation"]
    flagged = [t for t in scores["tasks"] if t != "generation"]
    assert sorted(scores["blind"]["not_beating_blind"]) == sorted(flagged) and pipe.seg_calls == 6
    for t in flagged:
        b = scores["tasks"][t]["blind"]
        assert b["difference"] == 0.0 and b["ci95"] == [0.0, 0.0] and b["n"] == scores["tasks"][t]["n"]


def test_cli_blind_flag(tmp_path, monkeypatch, capsys):
    import vlkit
    from vlkit.apps.cli import main

    write_color_data(tmp_path / "data", COLORS20[:8])
    pipe = ColorPipe()
    monkeypatch.setattr(vlkit, "load", lambda path: pipe)
    assert main(["eval", "CKPT", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--blind"]) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["tasks"]["vqa"]["blind"]["blind"] == 0.0 and len(pipe.calls) == 16
    assert "## With images vs blind" in (tmp_path / "out" / "scores.md").read_text()
