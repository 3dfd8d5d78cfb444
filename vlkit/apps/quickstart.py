"""`vlkit quickstart`: synthetic data -> tokenizer -> train (all stages) -> eval -> report, on a laptop CPU.

Writes <out>/data/{train,test}, <out>/final (the checkpoint), <out>/eval, and <out>/report.md with the score
table, a loss-curve PNG and a PNG grid of test predictions with boxes drawn.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import get_args, get_type_hints

from PIL import Image, ImageDraw

from vlkit.config import ModelConfig, load_yaml
from vlkit.errors import UserError
from vlkit.io import read_records, write_json
from vlkit.tokenizer import IMAGE_PLACEHOLDER

log = logging.getLogger("vlkit.quickstart")

EVAL_TASKS = ["vqa", "grounding", "ocr", "caption", "reg", "chart", "doc"]
TEST_PER_TASK = 300  # a 95% CI about +-0.05 wide
VAL_PER_TASK = 40  # the learning curve's validation split (train.eval_limit of it per point)
VLUAS_TASKS = ["generation", "segmentation"]  # added with --vision-target codes
VISION_TARGETS = get_args(get_type_hints(ModelConfig)["vision_target"])  # ("none", "codes")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RECIPE = RECIPES / "quickstart.yaml"
VLUAS_RECIPE = RECIPES / "quickstart-vluas.yaml"
VQ_RECIPE = RECIPES / "vq.yaml"


def recipe_dict(data_dir: Path, out: Path, fast: bool, recipe: Path = RECIPE, vq_dir: Path | None = None) -> dict:
    """The recipe with its placeholders filled: {data} (the data folder), {val} (the validation split), {vq}."""
    if not recipe.is_file():
        raise UserError(f"{recipe} not found: the quickstart runs from a source checkout (pip install -e .)")
    raw = (recipe.read_text().replace("{data}", str(data_dir)).replace("{val}", str(data_dir / "val"))
           .replace("{vq}", str(vq_dir)))
    tmp = out / "recipe.yaml"
    tmp.write_text(raw)
    data = load_yaml(tmp)
    data["train"]["out"] = str(out)
    if fast:  # a smoke run: same stages, tiny budget
        for stage in data["stages"]:
            stage["steps"] = 8
            stage["warmup_steps"] = 2
            stage["batch_size"] = 8
        data["train"]["log_every"] = 2
        if data["train"].get("eval_every"):
            data["train"].update(eval_every=8, eval_limit=4)
    return data


def train_visual_tokenizer(data_dir: Path, out: Path, fast: bool, seed: int) -> dict:
    """The VLUAS quickstart's first step: recipes/vq.yaml on the training images (a few steps with --fast);
    returns its metrics on the held-out test images."""
    from vlkit.config import VQConfig, from_dict
    from vlkit.models.vq import VisualTokenizer
    from vlkit.train import vq_trainer

    spec = load_yaml(VQ_RECIPE)
    cfg = from_dict(VQConfig, spec["vq"], "vq")
    steps, batch = (20, 8) if fast else (int(spec.get("steps", 1500)), int(spec.get("batch_size", 16)))
    train = vq_trainer.train_visual_tokenizer(
        cfg, data_dir / "train", steps=steps, batch_size=batch, lr=float(spec.get("lr", 3e-3)), out_dir=out, seed=seed,
        precision=spec.get("precision", "fp32"), warmup_steps=5 if fast else 50)
    test = vq_trainer.evaluate_visual_tokenizer(VisualTokenizer.from_pretrained(out),
                                                vq_trainer.load_images(data_dir / "test", cfg.image_size))
    return {**test, "steps": train["steps"], "seconds": round(train["seconds"], 1)}


def quickstart(out: str | Path = "runs/quickstart", fast: bool = False, seed: int = 0,
               vision_target: str = "none") -> dict:
    from vlkit.data.synth import generate_dataset
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load
    from vlkit.train.trainer import Recipe, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if vision_target not in VISION_TARGETS:
        raise UserError(f"vision_target={vision_target!r}: choose one of {', '.join(VISION_TARGETS)}")
    vluas = vision_target == "codes"
    tasks = EVAL_TASKS + (VLUAS_TASKS if vluas else [])
    per_task = 4 if fast else TEST_PER_TASK
    data_dir = out / "data"
    print(f"[1/4] synthetic data -> {data_dir} (held-out test split: {per_task} samples per task)")
    generate_dataset(data_dir / "test", n=per_task * len(tasks), tasks=tasks, split="test", seed=seed + 1)
    generate_dataset(data_dir / "val", n=(4 if fast else VAL_PER_TASK) * len(tasks), tasks=tasks, split="test",
                     seed=seed + 2)
    if vluas:  # the visual tokenizer trains on image files; the recipe reads them too
        generate_dataset(data_dir / "train", n=240 if fast else 12000, tasks=tasks, split="train", seed=seed)
    t_data = time.perf_counter() - t0

    vq_metrics = None
    if vluas:
        print(f"[1b/4] visual tokenizer -> {out / 'vq'}")
        vq_metrics = train_visual_tokenizer(data_dir, out / "vq", fast, seed)
    print("[2/4] tokenizer + training (all stages; the training data is a fresh synthetic stream)")
    recipe = Recipe.from_dict(recipe_dict(data_dir, out, fast, VLUAS_RECIPE if vluas else RECIPE, out / "vq"))
    recipe.train.seed = seed
    final = train(recipe, out=out)
    t_train = time.perf_counter() - t0 - t_data

    print("[3/4] evaluation on the held-out test split, with images and blind")
    scores = run_eval(load(final), data_dir / "test", tasks=tasks, batch_size=64, out_dir=out / "eval", blind=True)
    t_eval = time.perf_counter() - t0 - t_data - t_train

    print("[4/4] report")
    timing = {"data_s": round(t_data, 1), "train_s": round(t_train, 1), "eval_s": round(t_eval, 1),
              "total_s": round(time.perf_counter() - t0, 1)}
    report = write_report(out, final, scores, timing, per_task, vq_metrics)
    print(f"\nreport:     {report}\ncheckpoint: {final}\nchat:       vlkit chat {final} --image "
          f"{data_dir / 'test' / 'images'}/<file>.png\nserve:      vlkit serve {final}")
    if vluas:
        print(f"draw:       vlkit generate-image {final} \"a red circle above a blue square\" -o out.png\n"
              f"segment:    vlkit segment {final} IMAGE --classes circle,square,triangle -o mask.png")
    return {"scores": scores, "timing": timing, "checkpoint": str(final), "report": str(report), "vq": vq_metrics}


def write_report(out: Path, final: Path, scores: dict, timing: dict, per_task: int, vq_metrics) -> Path:
    """report.md (scores with CIs, with images vs blind, the learning curve, predictions), timing.json and
    scores.json (the scores with the wall-clock time) in `out`."""
    from vlkit.eval.report import scores_table

    curves = plot_curves(out / "metrics.jsonl", out / "curves.png")
    grid = prediction_grid(out / "eval" / "per_sample.jsonl", out / "data" / "test", out / "predictions.png")
    report = out / "report.md"
    report.write_text(
        "# vlkit quickstart report\n\n"
        f"Checkpoint: `{final}`  \nTraining data: a fresh synthetic stream (no sample seen twice); test: "
        f"{per_task} held-out samples per task (held-out compositions included)  \n"
        f"Wall-clock: {json.dumps(timing)}\n\n"
        "Held-out test split, 95% bootstrap CIs; the blind table scores the same model with every image "
        "blanked.\n\n" + scores_table(scores) + "\n\n"
        + (vq_section(vq_metrics, out) if vq_metrics else "") +
        f"## Learning curve\n\n![curves]({curves.name})\n\n## Test predictions\n\n![predictions]({grid.name})\n")
    write_json(out / "timing.json", timing)
    write_json(out / "scores.json", {"timing": timing, **scores})
    return report


def vq_section(metrics: dict, out: Path) -> str:
    keep = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    return (f"## Visual tokenizer (held-out test images)\n\n{json.dumps(keep)}\n\n![reconstructions](vq/recon.png)\n\n"
            "Generated images are in `eval/generations/`, predicted masks in `eval/masks/`.\n\n")


PALETTE = [(30, 90, 200), (220, 60, 40), (40, 160, 60), (150, 60, 200), (230, 140, 0), (0, 170, 180),
           (120, 120, 120), (200, 40, 140), (90, 60, 20)]


def _panel(d: ImageDraw.ImageDraw, box: tuple, series: dict, title: str, xlabel: str,
           y_range: tuple | None = None, marks: list | None = None) -> None:
    """Line plot of {name: [(x, y), ...]} inside `box` (left, top, right, bottom), with a legend."""
    left, top, right, bottom = box
    d.rectangle(box, outline="black")
    d.text((left, top - 14), title, fill="black")
    points = [p for pts in series.values() for p in pts]
    if not points:
        d.text((left + 10, top + 10), "no data", fill="gray")
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    x1 = max(x1, x0 + 1)
    y0, y1 = y_range or (0.0, max(p[1] for p in points) * 1.05 or 1.0)
    pt = lambda x, y: (left + (x - x0) / (x1 - x0) * (right - left),  # noqa: E731
                       bottom - (y - y0) / ((y1 - y0) or 1.0) * (bottom - top))
    for x, label in marks or []:  # stage boundaries
        d.line([(pt(x, y0)[0], top), (pt(x, y0)[0], bottom)], fill=(200, 200, 200))
        d.text((pt(x, y0)[0] + 3, top + 3), label, fill="gray")
    for k, (name, pts) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        if len(pts) > 1:
            d.line([pt(x, y) for x, y in pts], fill=color, width=2)
        for x, y in pts[-1:]:
            d.ellipse([pt(x, y)[0] - 2, pt(x, y)[1] - 2, pt(x, y)[0] + 2, pt(x, y)[1] + 2], fill=color)
        d.text((right + 6, top + 12 * k), name, fill=color)
    d.text((left - 40, top), f"{y1:.2f}", fill="black")
    d.text((left - 40, bottom - 10), f"{y0:.2f}", fill="black")
    d.text((left, bottom + 4), f"{x0:g}", fill="black")
    d.text((right - 60, bottom + 4), f"{x1:g} {xlabel}", fill="black")


def plot_curves(metrics: Path, png: Path, width: int = 760, panel: int = 200) -> Path:
    """The training loss against steps, and the validation scores of `train.eval_every` against steps and
    against seconds (PIL only)."""
    rows = read_records(metrics) if metrics.is_file() else []
    losses = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval" in r]
    tasks = sorted({t for r in evals for t, v in r["eval"].items() if v is not None})
    img = Image.new("RGB", (width, 3 * (panel + 50) + 10), "white")
    d = ImageDraw.Draw(img)
    marks = [(cur["global_step"], cur["stage"]) for prev, cur in zip(losses, losses[1:]) if cur["stage"] != prev["stage"]]
    box = lambda k: (60, 30 + k * (panel + 50), width - 110, 30 + k * (panel + 50) + panel)  # noqa: E731
    _panel(d, box(0), {"loss": [(r["global_step"], r["loss"]) for r in losses]}, "training loss", "steps",
           marks=marks)
    by_step = {t: [(r["global_step"], r["eval"][t]) for r in evals if r["eval"].get(t) is not None] for t in tasks}
    by_time = {t: [(r["seconds"], r["eval"][t]) for r in evals if r["eval"].get(t) is not None] for t in tasks}
    top = max([1.0] + [y for pts in by_step.values() for _, y in pts])  # CIDEr can pass 1
    _panel(d, box(1), by_step, "validation score (train.eval_every)", "steps", y_range=(0.0, top), marks=marks)
    _panel(d, box(2), by_time, "validation score against wall-clock", "s", y_range=(0.0, top))
    img.save(png)
    return png


def prediction_grid(per_sample: Path, data_dir: Path, png: Path, n: int = 16, cell: int = 192) -> Path:
    """Test images with predicted (red) and true (green) boxes, the question and the prediction."""
    from vlkit.data.sources import read_samples
    from vlkit.grounding import from_bins, parse_first_box

    samples = {s["id"]: s for s in read_samples(data_dir, check_images=False)}
    rows = read_records(per_sample) if per_sample.is_file() else []
    by_task: dict[str, list] = {}
    for r in rows:
        if r.get("id") in samples:
            by_task.setdefault(r.get("task", ""), []).append(r)
    picked = []
    while len(picked) < n and any(by_task.values()):
        for task in list(by_task):
            if by_task[task]:
                picked.append(by_task[task].pop(0))
    cols = 4
    grid = Image.new("RGB", (cols * cell, max(1, (len(picked) + cols - 1) // cols) * (cell + 48)), "white")
    d = ImageDraw.Draw(grid)
    for k, r in enumerate(picked):
        s = samples[r["id"]]
        img = Image.open(s["images"][0]).convert("RGB").resize((cell, cell), Image.NEAREST)
        di = ImageDraw.Draw(img)
        pred = str(r.get("prediction", ""))
        for color, box in (("lime", (s.get("meta", {}).get("boxes") or [None])[0]), ("red", parse_first_box(pred))):
            if box:  # a predicted box may come with its corners swapped: draw it anyway
                x0, y0, x1, y1 = from_bins(box, cell, cell)
                di.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=color, width=2)
        x, y = (k % cols) * cell, (k // cols) * (cell + 48)
        grid.paste(img, (x, y))
        q = s["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        d.text((x + 2, y + cell + 2), q[:34], fill="black")
        d.text((x + 2, y + cell + 16), ("-> " + pred)[:34], fill="blue")
        d.text((x + 2, y + cell + 30), f"{r.get('task')}", fill="gray")
    grid.save(png)
    return png
