"""The synthetic world as an endless, deterministic training stream (a `synth:` source in a recipe).

    data: {train: [{synth: {tasks: {vqa: 2, grounding: 1}, size: 64}}]}

Global sample g is `make_memory_sample(task_g, g, seed, cfg)`, made in memory (no files), where task_g comes from
an exactly proportioned, shuffled plan of each block of 1,000 indices. So no sample repeats, any sample can be
made on any rank in any order, and the stream's position is one integer (vlkit.data.feed.StreamFeed).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

from vlkit.data.sources import DataError
from vlkit.config.synth import SPLITS, SynthConfig
from vlkit.data.synth.dataset import parse_heldout, task_plan, task_weights
from vlkit.data.synth.tasks import make_memory_sample

BLOCK = 1000
PASSED_KEYS = ("aspect", "aspect_ratio", "video_frames", "turns", "max_objects", "ocr_kinds")  # to SynthConfig as given (it checks them)
KEYS = ("tasks", "size", "heldout", "seed", "split", "max_iou", "dense_labels", "dense_text", "question_first",
        *PASSED_KEYS)


def synth_stream(spec: dict, default_seed: int = 0) -> Callable[[int], dict]:
    """`spec` is a recipe's `synth:` mapping: tasks (list, {task: weight} or comma string; default every
    task of DEFAULT_TASKS), size (pixels, 64), heldout ('default' keeps the held-out compositions out of the train split), seed
    (default: the run's seed), split (train), max_iou (0), dense_labels (false; true gives scene samples a
    "size color shape" label mask, the NTP-M targets of a model with `dense_prediction: true`), dense_text (false;
    with dense_labels, OCR samples get their texts' ink boxes labelled with the text), question_first (0: the
    share of understanding samples that ask their question before the image), aspect ("square"; "wide", "tall" or
    "mixed" text images at native resolution) with aspect_ratio (8/3), video_frames (8: frames per video_qa clip),
    turns (1: questions per image, multi-turn), max_objects (6: objects per scene)."""
    if not isinstance(spec, dict):
        raise DataError(f"synth: expected a mapping with keys {list(KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise DataError(f"synth: unknown key(s) {unknown}; allowed: {list(KEYS)}")
    weights = task_weights(spec.get("tasks"))
    split = spec.get("split", "train")
    if split not in SPLITS:
        raise DataError(f"synth.split={split!r}; choose one of {list(SPLITS)}")
    size = spec.get("size", 64)
    if not isinstance(size, int) or size < 32:
        raise DataError(f"synth.size={size!r} must be an integer >= 32 (pixels)")
    question_first = spec.get("question_first", 0.0)
    if not isinstance(question_first, (int, float)) or isinstance(question_first, bool) or \
            not 0.0 <= question_first <= 1.0:
        raise DataError(f"synth.question_first={question_first!r} must be a share in [0, 1]")
    pairs, phrases = parse_heldout(spec.get("heldout", "default"))
    cfg = SynthConfig(size=size, split=split, heldout_pairs=pairs, heldout_phrases=phrases,
                      max_iou=float(spec.get("max_iou", 0.0)), dense_labels=bool(spec.get("dense_labels", False)),
                      dense_text=bool(spec.get("dense_text", False)),
                      question_first=float(question_first), **{k: spec[k] for k in PASSED_KEYS if k in spec})
    seed = int(spec.get("seed", default_seed))
    names = tuple(sorted(weights.items()))

    @lru_cache(maxsize=4)
    def plan(block: int) -> list[str]:
        return task_plan(dict(names), BLOCK, seed * 1_000_003 + block, split)

    def sample(g: int) -> dict:
        return make_memory_sample(plan(g // BLOCK)[g % BLOCK], g, seed, cfg)

    return sample
