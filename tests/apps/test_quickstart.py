import json

import vlkit
from vlkit.apps.quickstart import EVAL_TASKS, quickstart
from vlkit.eval.runner import load_samples
from vlkit.eval.tasks import get_task
from vlkit.io import read_records


def test_fast_quickstart_end_to_end(tmp_path):
    res = quickstart(out=tmp_path / "qs", fast=True)
    out = tmp_path / "qs"
    for f in ("report.md", "curves.png", "predictions.png", "scores.json", "final/model.safetensors", "final/tokenizer.json",
              "final/config.json", "eval/scores.json"):
        assert (out / f).is_file(), f
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    multitask = [r["loss"] for r in rows if r["stage"] == "multitask" and "loss" in r]
    assert multitask[-1] < multitask[0]
    assert [r["global_step"] for r in rows if "eval" in r] == [16]  # the learning curve (none in the vision stage)
    assert {r["stage"] for r in rows} == {"vision", "multitask"}
    report = (out / "report.md").read_text()
    scores, timing = res["scores"], res["timing"]
    _check_report(report, scores, timing)
    assert json.loads((out / "timing.json").read_text()) == timing
    assert json.loads((out / "scores.json").read_text()) == json.loads(json.dumps({"timing": timing, **scores}))
    # the checkpoint is the model the eval asked: the same weights and config, and the cached vqa answers again
    pipe = vlkit.load(out / "final")
    assert pipe.fingerprint() == scores["fingerprint"]
    vqa = get_task("vqa")
    samples = [s for s in load_samples(out / "data" / "test") if s["task"] == "vqa"]
    answers = pipe.chat_batch([vqa.prompt(s) for s in samples], [vqa.inputs(s) for s in samples],
                              max_new_tokens=vqa.max_new_tokens, temperature=0.0)
    cached = {r["id"]: r["prediction"] for r in read_records(out / "eval" / "predictions.jsonl")
              if r["task"] == "vqa" and not r["blind"]}
    assert {s["id"]: a for s, a in zip(samples, answers)} == cached and len(cached) == 4


def _check_report(report, scores, timing):
    """Every eval task's headline metric with its CI, every task with images vs blind, and the timing."""
    assert set(scores["tasks"]) == set(EVAL_TASKS)
    scores_part, blind_part = report.split("## With images vs blind")
    for task in EVAL_TASKS:
        t = scores["tasks"][task]
        head = t["metrics"][t["primary"]]
        lo, hi = head["ci95"]
        assert head["n"] == 4 and lo <= head["value"] <= hi
        assert f"| {task} | {t['primary']} * | {head['value']:.3f} | [{lo:.3f}, {hi:.3f}] | 4 |" in scores_part
        b = t["blind"]
        assert b["metric"] == t["primary"] and b["n"] == 4 and b["with_images"] == head["value"]
        assert f"| {task} | {b['metric']} | {b['with_images']:.3f} | {b['blind']:.3f} |" in blind_part
    assert scores["blind"]["not_beating_blind"] == [t for t in EVAL_TASKS if not scores["tasks"][t]["blind"]["beats_blind"]]
    assert set(timing) == {"data_s", "train_s", "eval_s", "total_s"}
    assert timing["train_s"] > 0 and timing["eval_s"] > 0
    assert timing["total_s"] >= timing["data_s"] + timing["train_s"] + timing["eval_s"] - 0.2  # each part rounded
    assert f"Wall-clock: {json.dumps(timing)}" in report


def test_fast_vluas_quickstart_generates_images_and_segments(tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    import vlkit

    out = tmp_path / "qsv"
    res = quickstart(out=out, fast=True, vision_target="codes")
    assert (out / "vq" / "recon.png").is_file() and (out / "final" / "vq" / "config.json").is_file()
    assert 0 < res["vq"]["codebook_usage"] <= 1 and res["vq"]["psnr"] > 0
    tasks = res["scores"]["tasks"]
    assert {"generation", "segmentation", "vqa"} <= set(tasks)
    assert len(list((out / "eval" / "generations").glob("*.png"))) > 0
    assert len(list((out / "eval" / "masks").glob("*.png"))) > 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    multitask = [r["loss"] for r in rows if r["stage"] == "multitask"]
    assert multitask[-1] < multitask[0]
    pipe = vlkit.load(out / "final")
    assert pipe.can_generate_images and pipe.can_segment
    assert pipe.config.text_vocab_size == len(pipe.tokenizer)
    # the CLI: generate-image writes a PNG of the tokenizer's size; segment writes a mask and an overlay
    png, mask = tmp_path / "gen.png", tmp_path / "mask.png"
    cli = [sys.executable, "-m", "vlkit"]
    subprocess.run(cli + ["generate-image", str(out / "final"), "a red circle", "-o", str(png), "--seed", "1"],
                   check=True, capture_output=True)
    assert Image.open(png).size == (64, 64)
    # unset sampling flags take pipe.generate_image's defaults; set ones are passed through
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(pipe.generate_image("a red circle", seed=1)))
    greedy = tmp_path / "greedy.png"
    subprocess.run(cli + ["generate-image", str(out / "final"), "a red circle", "-o", str(greedy), "--seed", "1",
                          "--temperature", "0", "--cfg-scale", "2"], check=True, capture_output=True)
    want = pipe.generate_image("a red circle", seed=1, temperature=0, cfg_scale=2)
    assert np.array_equal(np.asarray(Image.open(greedy)), np.asarray(want))
    image = next((out / "data" / "test" / "images").glob("*.png"))
    r = subprocess.run(cli + ["segment", str(out / "final"), str(image), "--classes", "circle,square", "-o", str(mask)],
                       check=True, capture_output=True, text=True)
    assert "overlay" in r.stdout
    m = np.asarray(Image.open(mask))
    assert m.shape == Image.open(image).size[::-1] and set(np.unique(m)) <= {0, 1, 2}
    assert (tmp_path / "mask_overlay.png").is_file()


def test_prediction_grid_draws_a_predicted_box_with_swapped_corners(tmp_path):
    from vlkit.data.sources import read_samples
    from vlkit.data.synth import generate_dataset
    from vlkit.apps.quickstart import prediction_grid

    generate_dataset(tmp_path / "test", n=2, tasks=["grounding"], split="test", seed=0)
    ids = [s["id"] for s in read_samples(tmp_path / "test", check_images=False)]
    rows = [{"id": ids[0], "task": "grounding", "prediction": "<ref>x</ref><box>(900,800),(100,200)</box>"},
            {"id": ids[1], "task": "grounding", "prediction": "no box at all"}]
    per_sample = tmp_path / "per_sample.jsonl"
    per_sample.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = prediction_grid(per_sample, tmp_path / "test", tmp_path / "grid.png")
    from PIL import Image

    grid = Image.open(png).convert("RGB")
    assert any(grid.getpixel((x, y)) == (255, 0, 0) for x in range(192) for y in range(192))  # the red box
