"""`vlkit quickstart`: synthetic data -> tokenizer -> train (all stages) -> eval -> report, on a laptop CPU.

Writes <out>/data/{train,test}, <out>/final (the checkpoint), <out>/eval, and <out>/report.md with the score
table, a loss-curve PNG and a PNG grid of test predictions with boxes drawn.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PIL import Image, ImageDraw

from vlkit.config import load_yaml
from vlkit.errors import UserError

log = logging.getLogger("vlkit.quickstart")

EVAL_TASKS = ["vqa", "grounding", "ocr", "caption", "reg", "chart", "doc"]
VLUAS_TASKS = ["generation", "segmentation"]  # added with --vision-target codes
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RECIPE = RECIPES / "quickstart.yaml"
VLUAS_RECIPE = RECIPES / "quickstart-vluas.yaml"
VQ_RECIPE = RECIPES / "vq.yaml"


def recipe_dict(data_dir: Path, out: Path, fast: bool, recipe: Path = RECIPE, vq_dir: Path | None = None) -> dict:
    if not recipe.is_file():
        raise UserError(f"{recipe} not found: the quickstart runs from a source checkout (pip install -e .)")
    raw = recipe.read_text().replace("{data}", str(data_dir)).replace("{vq}", str(vq_dir))
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
    return data


def train_visual_tokenizer(data_dir: Path, out: Path, fast: bool, seed: int) -> dict:
    """The VLUAS quickstart's first step: recipes/vq.yaml on the training images (a few steps with --fast);
    returns its metrics on the held-out test images."""
    from vlkit.config import VQConfig, from_dict
    from vlkit.models.vq import VisualTokenizer
    from vlkit.train.vq_trainer import evaluate_tokenizer, load_images, train_tokenizer

    spec = load_yaml(VQ_RECIPE)
    cfg = from_dict(VQConfig, spec["vq"], "vq")
    steps, batch = (20, 8) if fast else (int(spec.get("steps", 1500)), int(spec.get("batch_size", 16)))
    train = train_tokenizer(cfg, data_dir / "train", steps=steps, batch_size=batch, lr=float(spec.get("lr", 3e-3)),
                            out_dir=out, seed=seed, precision=spec.get("precision", "fp32"), warmup_steps=5 if fast else 50)
    test = evaluate_tokenizer(VisualTokenizer.from_pretrained(out), load_images(data_dir / "test", cfg.image_size))
    return {**test, "steps": train["steps"], "seconds": round(train["seconds"], 1)}


def quickstart(out: str | Path = "runs/quickstart", fast: bool = False, seed: int = 0,
               vision_target: str = "none") -> dict:
    from vlkit.data.synth import generate_dataset
    from vlkit.eval.report import scores_table
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load
    from vlkit.train.trainer import Recipe, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if vision_target not in ("none", "codes"):
        raise UserError(f"vision_target={vision_target!r}: choose none or codes")
    vluas = vision_target == "codes"
    tasks = EVAL_TASKS + (VLUAS_TASKS if vluas else [])
    n_train, n_test = (240, 40) if fast else (10000, 700)
    if vluas and not fast:
        n_train, n_test = 12000, 900
    data_dir = out / "data"
    print(f"[1/4] synthetic data -> {data_dir}")
    generate_dataset(data_dir / "train", n=n_train, tasks=tasks, split="train", seed=seed)
    generate_dataset(data_dir / "test", n=n_test, tasks=tasks, split="test", seed=seed + 1)
    t_data = time.perf_counter() - t0

    vq_metrics = None
    if vluas:
        print(f"[1b/4] visual tokenizer -> {out / 'vq'}")
        vq_metrics = train_visual_tokenizer(data_dir, out / "vq", fast, seed)
    print("[2/4] tokenizer + training (all stages)")
    recipe = Recipe.from_dict(recipe_dict(data_dir, out, fast, VLUAS_RECIPE if vluas else RECIPE, out / "vq"))
    recipe.train.seed = seed
    final = train(recipe, out=out)
    t_train = time.perf_counter() - t0 - t_data

    print("[3/4] evaluation on the held-out test split")
    pipe = load(final)
    scores = run_eval(pipe, data_dir / "test", tasks=tasks, batch_size=64, out_dir=out / "eval")
    t_eval = time.perf_counter() - t0 - t_data - t_train

    print("[4/4] report")
    loss_png = plot_losses(out / "metrics.jsonl", out / "loss.png")
    grid_png = prediction_grid(out / "eval" / "per_sample.jsonl", data_dir / "test", out / "predictions.png")
    timing = {"data_s": round(t_data, 1), "train_s": round(t_train, 1), "eval_s": round(t_eval, 1),
              "total_s": round(time.perf_counter() - t0, 1)}
    report = out / "report.md"
    report.write_text(
        "# vlkit quickstart report\n\n"
        f"Checkpoint: `{final}`  \nData: {n_train} train / {n_test} test synthetic samples "
        f"(held-out compositions in the test split)  \nWall-clock: {json.dumps(timing)}\n\n"
        "Held-out test split, 95% bootstrap CIs.\n\n" + scores_table(scores) + "\n\n"
        + (vq_section(vq_metrics, out) if vq_metrics else "") +
        f"## Training loss\n\n![loss]({loss_png.name})\n\n## Test predictions\n\n![predictions]({grid_png.name})\n")
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(f"\nreport:     {report}\ncheckpoint: {final}\nchat:       vlkit chat {final} --image "
          f"{data_dir / 'test' / 'images'}/<file>.png\nserve:      vlkit serve {final}")
    if vluas:
        print(f"draw:       vlkit generate-image {final} \"a red circle above a blue square\" -o out.png\n"
              f"segment:    vlkit segment {final} IMAGE --classes circle,square,triangle -o mask.png")
    return {"scores": scores, "timing": timing, "checkpoint": str(final), "report": str(report), "vq": vq_metrics}


def vq_section(metrics: dict, out: Path) -> str:
    keep = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    return (f"## Visual tokenizer (held-out test images)\n\n{json.dumps(keep)}\n\n![reconstructions](vq/recon.png)\n\n"
            "Generated images are in `eval/generations/`, predicted masks in `eval/masks/`.\n\n")


def plot_losses(metrics: Path, png: Path, size: tuple[int, int] = (640, 320)) -> Path:
    """A plain line plot of training loss over global steps (PIL only; stage boundaries marked)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 50, w - 10, 10, h - 30
    d.rectangle([left, top, right, bottom], outline="black")
    if rows:
        xs = [r["global_step"] for r in rows]
        ys = [r["loss"] for r in rows]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        y0, y1 = 0.0, max(ys) * 1.05
        pt = lambda x, y: (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))  # noqa: E731
        d.line([pt(x, y) for x, y in zip(xs, ys)], fill=(30, 90, 200), width=2)
        for prev, cur in zip(rows, rows[1:]):
            if cur["stage"] != prev["stage"]:
                x = pt(cur["global_step"], 0)[0]
                d.line([(x, top), (x, bottom)], fill=(200, 200, 200))
                d.text((x + 3, top + 3), cur["stage"], fill="gray")
        d.text((5, top), f"{y1:.2f}", fill="black")
        d.text((5, bottom - 10), "0", fill="black")
        d.text((left, bottom + 8), f"step {x0}", fill="black")
        d.text((right - 70, bottom + 8), f"step {x1}", fill="black")
    d.text((w // 2 - 40, bottom + 8), "training loss", fill="black")
    img.save(png)
    return png


def prediction_grid(per_sample: Path, data_dir: Path, png: Path, n: int = 16, cell: int = 192) -> Path:
    """Test images with predicted (red) and true (green) boxes, the question and the prediction."""
    from vlkit.data.sources import read_samples
    from vlkit.grounding import from_bins, parse_first_box

    samples = {s["id"]: s for s in read_samples(data_dir, check_images=False)}
    rows = [json.loads(line) for line in per_sample.read_text().splitlines() if line.strip()] if per_sample.is_file() else []
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
        q = s["conversations"][0]["value"].replace("<image>", "").strip()
        d.text((x + 2, y + cell + 2), q[:34], fill="black")
        d.text((x + 2, y + cell + 16), ("-> " + pred)[:34], fill="blue")
        d.text((x + 2, y + cell + 30), f"{r.get('task')}", fill="gray")
    grid.save(png)
    return png
