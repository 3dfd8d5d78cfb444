"""Generate a synthetic dataset on disk, and inspect any dataset (counts, answers, a PNG grid)."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from vlkit.chat import ROLES
from vlkit.data.sources import WRITE_FORMATS, DataError, open_sink
from vlkit.config.synth import DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES, OCR_KINDS, SPLITS, SynthConfig
from vlkit.data.synth.tasks import DEFAULT_TASKS, TASKS, make_sample
from vlkit.data.synth.world import COLOR_NAMES, SHAPES
from vlkit.tokenizer import IMAGE_PLACEHOLDER

TaskSpec = Union[None, str, Sequence[str], Mapping[str, float]]


def task_weights(tasks: TaskSpec) -> dict[str, float]:
    """None: every task of DEFAULT_TASKS once; a list (repeats add weight) or a {task: weight} dict; a
    comma-separated string."""
    if tasks is None:
        return {t: 1.0 for t in DEFAULT_TASKS}
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if isinstance(tasks, Mapping):
        weights = {str(k): float(v) for k, v in tasks.items()}
    else:
        weights = {}
        for t in tasks:
            weights[t] = weights.get(t, 0.0) + 1.0
    unknown = [t for t in weights if t not in TASKS]
    if unknown:
        raise DataError(f"unknown synthetic task(s) {unknown}; choose from {list(TASKS)}")
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise DataError(f"task weights must be >= 0 with a positive sum, got {weights}")
    return {t: w for t, w in weights.items() if w > 0}


def task_plan(weights: Mapping[str, float], n: int, seed: int, split: str) -> list[str]:
    """Exactly round(n * w / sum w) samples per task (largest remainder), in a seeded random order."""
    names = list(weights)
    total = sum(weights.values())
    exact = np.array([n * weights[t] / total for t in names])
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    plan = [t for t, c in zip(names, counts) for _ in range(c)]
    order = np.random.default_rng([seed, SPLITS.index(split), 7919]).permutation(len(plan))
    return [plan[i] for i in order]


def parse_heldout(heldout) -> tuple[tuple, tuple]:
    """'default' | 'none' | 'color:shape,color:shape' | [(color, shape), ...] -> (pairs, phrasings)."""
    if heldout is None or heldout == "none":
        return (), ()
    if heldout == "default":
        return DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES
    if isinstance(heldout, str):
        items = [p.split(":") for p in heldout.split(",") if p.strip()]
    else:
        items = [list(p) for p in heldout]
    pairs = []
    for item in items:
        if len(item) != 2 or item[0].strip() not in COLOR_NAMES or item[1].strip() not in SHAPES:
            raise DataError(f"heldout={heldout!r}: expected 'default', 'none' or color:shape pairs with colors "
                            f"from {COLOR_NAMES} and shapes from {SHAPES}")
        pairs.append((item[0].strip(), item[1].strip()))
    return tuple(pairs), DEFAULT_HELDOUT_PHRASES


# --- worker side: the config travels once per worker, jobs are (task, index) ---
_WORKER: dict = {}


def _init_worker(seed: int, cfg: SynthConfig) -> None:
    _WORKER["seed"], _WORKER["cfg"] = seed, cfg


def _work(job: tuple[str, int]):
    return make_sample(job[0], job[1], _WORKER["seed"], _WORKER["cfg"])


def _pool_context():
    methods = mp.get_all_start_methods()
    # fork starts in milliseconds; the workers only render with numpy/Pillow (no torch, no threads)
    return mp.get_context("fork" if "fork" in methods and sys.platform.startswith("linux") else None)


def generate_dataset(out, n: int = 1000, tasks: TaskSpec = None, split: str = "train", seed: int = 0,
                     size: int = 64, fmt: str = "jsonl", heldout="default", progress: bool = True,
                     workers: Optional[int] = None, shard_size: int = 1000, max_iou: float = 0.0,
                     aspect: str = "square", aspect_ratio: float = 8 / 3, video_frames: int = 8,
                     ocr_kinds: tuple = OCR_KINDS) -> Path:
    """Write `n` synthetic samples under `out` and return `out` as a Path.

    fmt="jsonl": `out/data.jsonl` + `out/images/` (+ `out/masks/` for segmentation, `out/videos/<id>/000.png`,
    ... for video_qa clips); "webdataset": tar shards of `shard_size` samples (clips as frame members); "hf": a
    saved HF dataset (clips in its `videos` column). `tasks`: None (all tasks, equal weights), a
    list (repeat a name to weight it), a {task: weight} dict or a comma-separated string; None: DEFAULT_TASKS (the
    multi-image and video tasks only by name). The output is a
    function of (n, tasks, split, seed, size, heldout, max_iou, aspect, aspect_ratio, video_frames, ocr_kinds) only:
    byte-identical for every `workers`. `aspect`: "square" text images (default), or "wide", "tall", "mixed" ones
    at native resolution (SynthConfig); `video_frames`: frames per video_qa clip; `ocr_kinds`: what OCR samples
    show (SynthConfig.ocr_kinds).
    `heldout`: "default" keeps the held-out compositions out of the train split (see tasks.py), "none"
    keeps nothing out, or a list of (color, shape) pairs."""
    if split not in SPLITS:
        raise DataError(f"split={split!r}; choose one of {list(SPLITS)}")
    if fmt not in WRITE_FORMATS:
        raise DataError(f"format={fmt!r}; choose one of {list(WRITE_FORMATS)}")
    if not isinstance(n, int) or n < 0:
        raise DataError(f"n={n!r} must be a non-negative integer")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed={seed!r} must be a non-negative integer")
    if not isinstance(size, int) or not 32 <= size <= 2048:
        raise DataError(f"size={size!r} must be an integer in [32, 2048]")
    if not 0.0 <= max_iou < 1.0:
        raise DataError(f"max_iou={max_iou!r} must be in [0, 1)")
    pairs, phrases = parse_heldout(heldout)
    cfg = SynthConfig(size=size, split=split, heldout_pairs=pairs, heldout_phrases=phrases, max_iou=max_iou,
                      aspect=aspect, aspect_ratio=aspect_ratio, video_frames=video_frames, ocr_kinds=tuple(ocr_kinds))
    weights = task_weights(tasks)
    plan = task_plan(weights, n, seed, split)
    jobs = list(zip(plan, range(n)))
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n >= 500 else 1
    out = Path(out)

    from tqdm import tqdm

    with open_sink(out, fmt, shard_size) as sink, \
            tqdm(total=n, disable=not progress, unit="sample", desc=f"synth {split}", dynamic_ncols=True) as bar:
        if workers <= 1:
            _init_worker(seed, cfg)
            results = map(_work, jobs)
            pool = None
        else:
            pool = _pool_context().Pool(workers, initializer=_init_worker, initargs=(seed, cfg))
            results = pool.imap(_work, jobs, chunksize=64)  # ordered: the files do not depend on timing
        try:
            for sample, files in results:
                sink.add(sample, files)
                bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return out


# ---------------------------------------------------------------------------------------------------------
# inspection


def _answer(sample: dict) -> Optional[str]:
    meta = sample.get("meta") or {}
    for key in ("answers", "captions"):
        if meta.get(key):
            return str(meta[key][0])
    if meta.get("prompt"):
        return str(meta["prompt"])
    turns = [t["value"] for t in sample.get("conversations", []) if t.get("from") in ("gpt", "assistant")]
    return turns[0] if turns else None


def inspect_dataset(path, out_png=None, n_show: int = 16, top: int = 10) -> dict:
    """Print counts per task (and category, held-out) and the most common answers per task; write a PNG grid
    of samples with their boxes drawn and Q/A printed (default `path/inspect.png`, or next to a file).
    Returns {"total", "tasks": {task: n}, "categories": {task: {category: n}}, "heldout": {task: n},
    "answers": {task: {answer: n}} (the `top` most common), "skipped": {reason: n}, "png": path}."""
    from vlkit.data.sources import ReadStats, read_samples

    path = Path(path)
    stats = ReadStats()
    tasks: Counter = Counter()
    categories: dict[str, Counter] = {}
    held: Counter = Counter()
    answers: dict[str, Counter] = {}
    shown: list[dict] = []
    per_task_shown: Counter = Counter()
    for sample in read_samples(path, stats=stats):
        task = sample.get("task") or "unknown"
        meta = sample.get("meta") or {}
        tasks[task] += 1
        categories.setdefault(task, Counter())[str(meta.get("category", "-"))] += 1
        if meta.get("heldout"):
            held[task] += 1
        a = meta.get("phrase") if task == "grounding" else _answer(sample)
        if a is not None and task not in ("caption", "generation", "segmentation"):
            answers.setdefault(task, Counter())[a if len(a) <= 40 else a[:37] + "..."] += 1
        # show a few of each task first, then fill up
        if per_task_shown[task] < max(1, n_show // 8) and len(shown) < n_show:
            shown.append(sample)
            per_task_shown[task] += 1
    total = sum(tasks.values())
    skipped = f", skipped {stats.n_skipped} ({dict(stats.skipped)})" if stats.n_skipped else ""
    print(f"{path}: {total} samples{skipped}")
    for task, c in tasks.most_common():
        cats = ", ".join(f"{k}={v}" for k, v in sorted(categories[task].items()))
        print(f"  {task:<13} {c:>7}  held-out {held[task]:>6}  [{cats}]")
    for task, counter in answers.items():
        common = ", ".join(f"{a!r}:{k}" for a, k in counter.most_common(top))
        print(f"  answers {task}: {common}")
    png = Path(out_png) if out_png else (path / "inspect.png" if path.is_dir() else path.with_suffix(".inspect.png"))
    if shown:
        _grid(shown, png)
        print(f"wrote {png}")
    return {"total": total, "tasks": dict(tasks), "categories": {k: dict(v) for k, v in categories.items()},
            "heldout": dict(held), "answers": {k: dict(v.most_common(top)) for k, v in answers.items()},
            "skipped": dict(stats.skipped), "png": str(png) if shown else None}


def _grid(samples: list[dict], png: Path, cell: int = 192) -> None:
    import textwrap

    from PIL import Image, ImageDraw

    from vlkit.data.sources import load_sample_images
    from vlkit.data.synth.text import get_font, font_paths
    from vlkit.grounding import from_bins, parse_boxes

    font = get_font(font_paths()[0], 11)
    text_h = 64
    cols = min(4, len(samples))
    rows = (len(samples) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, sample in enumerate(samples):
        x0, y0 = (k % cols) * cell, (k // cols) * (cell + text_h)
        images = load_sample_images(sample)
        if not images:
            continue
        img = images[0]
        w, h = img.size
        grid.paste(img.resize((cell, cell), Image.NEAREST), (x0, y0))
        meta = sample.get("meta") or {}
        text = " ".join(t["value"] for t in sample["conversations"])
        boxes = [g.box for g in parse_boxes(text)] + [tuple(b) for b in meta.get("boxes", [])]
        if meta.get("box"):
            boxes.append(tuple(meta["box"]))
        for b in dict.fromkeys(boxes):  # unique, in order
            px = from_bins(b, w, h)
            sx, sy = cell / w, cell / h
            draw.rectangle((x0 + px[0] * sx, y0 + px[1] * sy, x0 + px[2] * sx, y0 + px[3] * sy),
                           outline=(255, 0, 255), width=2)
        human = next((t["value"] for t in sample["conversations"] if ROLES.get(t["from"]) == "user"), "")
        gpt = next((t["value"] for t in sample["conversations"] if ROLES.get(t["from"]) == "assistant"), "")
        lines = [f"[{sample.get('task', '?')}{' held-out' if meta.get('heldout') else ''}]"]
        question = human.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
        lines += textwrap.wrap("Q: " + question, 28)[:2]
        lines += textwrap.wrap("A: " + gpt, 28)[:2]
        caption = Image.new("RGB", (cell, text_h), (255, 255, 255))  # a canvas per cell: text is clipped
        cdraw = ImageDraw.Draw(caption)
        for i, line in enumerate(lines[:5]):
            cdraw.text((3, 1 + i * 12), line, font=font, fill=(0, 0, 0))
        grid.paste(caption, (x0, y0 + cell))
    png.parent.mkdir(parents=True, exist_ok=True)
    grid.save(png)
