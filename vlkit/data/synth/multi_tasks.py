"""Multi-image tasks: two scenes in one prompt (two `<image>` placeholders, in order).

multi_count: "Which image has more circles / red objects?" -> "first" | "second" (the counts always differ).
change: the second image is the first with one edit -> "a red circle was added", "the red circle was removed",
"the red circle turned blue", "the red circle moved" (CHANGES; the object is unique by color and shape).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from vlkit.config.synth import SynthConfig
from vlkit.data.synth.base import Made, Retry, allowed_pairs, pick
from vlkit.data.synth.scene_tasks import _a, _name, _objects_meta, _pick_unique
from vlkit.data.synth.world import (BACKGROUND_TONES, BACKGROUNDS, COLOR_NAMES, SHAPE_PLURALS, SHAPES, SIZES, Scene,
                                    box_is_free, compose_scene, sample_scene, shape_box_bound)

CHOICES = ("first", "second")  # multi_count's answers ("the first", "the first image" are scored the same)
CHANGES = ("added", "removed", "recolored", "moved")


def _heldout(scenes: list[Scene], cfg: SynthConfig) -> bool:
    held = set(cfg.heldout_pairs)
    return any(o.pair in held for s in scenes for o in s.objects)


def task_multi_count(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    """Two scenes with different numbers of objects of one shape (or one color); which has more?"""
    kind = pick(rng, ("shape", "color"))
    value = pick(rng, SHAPES if kind == "shape" else COLOR_NAMES)
    axis = 1 if kind == "shape" else 0
    pairs = allowed_pairs(cfg)
    having = [p for p in pairs if p[axis] == value]
    others = [p for p in pairs if p[axis] != value]
    counts = [int(c) for c in rng.choice(4, size=2, replace=False)]  # 0-3 each, never equal
    scenes = []
    for c in counts:
        force = [pick(rng, having) for _ in range(c)]
        n = c + int(rng.integers(0 if c else 1, 3))
        scene = sample_scene(rng, cfg.size, n, pairs=others, force_pairs=force, max_iou=cfg.max_iou)
        if scene.count(**{kind: value}) != c:  # an object did not fit: the count would not be what we planned
            raise Retry
        scenes.append(scene)
    thing = SHAPE_PLURALS[value] if kind == "shape" else f"{value} objects"
    question = pick(rng, ["Which image has more {t}?", "Which of the two images shows more {t}?",
                          "Which image contains more {t}, the first or the second?"]).format(t=thing)
    answer = CHOICES[0] if counts[0] > counts[1] else CHOICES[1]
    meta = {"answers": [answer] * 10, "question_type": kind, "value": value, "counts": counts,
            "objects": [_objects_meta(s) for s in scenes]}
    return Made(scenes[0].image, question, answer, meta, category=kind, heldout=_heldout(scenes, cfg),
                images=[s.image for s in scenes])


def _spec(o) -> dict:
    return {"shape": o.shape, "color": o.color, "size": o.size, "center": tuple(o.center), "extent": o.extent}


def free_center(rng: np.random.Generator, shape: str, extent: float, boxes: list, size: int,
                away_from: Optional[tuple[float, float]] = None, min_shift: float = 0.0,
                tries: int = 60) -> tuple[float, float]:
    """A center on the half-pixel grid where the shape keeps 1 px of background to `boxes` (and lies
    `min_shift` px or more from `away_from`); Retry when none is found."""
    lo, span = extent / 2 + 1, size - extent - 2
    for spot in rng.random((tries, 2)):
        cx, cy = (round((lo + f * span) * 2) / 2 for f in spot)
        if away_from is not None and np.hypot(cx - away_from[0], cy - away_from[1]) < min_shift:
            continue
        if box_is_free(shape_box_bound(shape, cx, cy, extent), boxes):
            return cx, cy
    raise Retry


def _edit(rng: np.random.Generator, scene: Scene, cfg: SynthConfig, kind: str) -> tuple[list[dict], object, str]:
    """The second image's objects after one edit of `kind`, the object edited (its spec dict or SceneObject),
    and the answer."""
    specs = [_spec(o) for o in scene.objects]
    present = {o.pair for o in scene.objects}
    allowed = [p for p in allowed_pairs(cfg) if p not in present]
    if kind == "added":
        color, shape = pick(rng, allowed)
        extent = SIZES["medium"] * cfg.size
        boxes = [shape_box_bound(s["shape"], *s["center"], s["extent"]) for s in specs]
        new = {"shape": shape, "color": color, "size": "medium", "extent": extent,
               "center": free_center(rng, shape, extent, boxes, cfg.size)}
        return specs + [new], new, f"{_a(f'{color} {shape}')} was added"
    o = _pick_unique(rng, scene, lambda o: o.pair)
    k = scene.objects.index(o)
    if kind == "removed":
        return specs[:k] + specs[k + 1:], o, f"the {_name(o)} was removed"
    if kind == "recolored":
        colors = [c for c, s in allowed if s == o.shape]
        if not colors:
            raise Retry
        color = pick(rng, colors)
        return specs[:k] + [dict(specs[k], color=color)] + specs[k + 1:], o, f"the {_name(o)} turned {color}"
    boxes = [shape_box_bound(s["shape"], *s["center"], s["extent"]) for j, s in enumerate(specs) if j != k]
    center = free_center(rng, o.shape, o.extent, boxes, cfg.size, away_from=o.center, min_shift=0.25 * cfg.size)
    return specs[:k] + [dict(specs[k], center=center)] + specs[k + 1:], o, f"the {_name(o)} moved"


def task_change(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    """Two images of one scene (same background pixels); one object was added, removed, recolored or moved."""
    n = int(rng.integers(2, 5))
    first = sample_scene(rng, cfg.size, n, pairs=allowed_pairs(cfg), max_iou=0.0)  # every object fully visible
    if len(first.objects) < 2:
        raise Retry
    kind = pick(rng, CHANGES)
    after, edited, answer = _edit(rng, first, cfg, kind)
    background = pick(rng, BACKGROUNDS)
    tone = pick(rng, BACKGROUND_TONES)
    bg_seed = int(rng.integers(2 ** 31))
    before = compose_scene([_spec(o) for o in first.objects], cfg.size, cfg.size, background,
                           np.random.default_rng(bg_seed), tone)
    second = compose_scene(after, cfg.size, cfg.size, background, np.random.default_rng(bg_seed), tone)
    if len(before.objects) != len(first.objects) or len(second.objects) != len(after):
        raise Retry  # pragma: no cover (objects are apart and inside the image)
    obj = edited if isinstance(edited, dict) else _spec(edited)
    question = pick(rng, ["What changed between the two images?", "What is different in the second image?",
                          "What changed from the first image to the second?"])
    meta = {"answers": [answer] * 10, "question_type": kind, "change": kind,
            "object": {"color": obj["color"], "shape": obj["shape"]},
            "objects": [_objects_meta(before), _objects_meta(second)]}
    return Made(before.image, question, answer, meta, category=kind, heldout=_heldout([before, second], cfg),
                images=[before.image, second.image])
