"""Scene tasks: questions about a scene of shapes (caption, VQA, grounding, referring expressions,
segmentation) and text-to-image generation of one or two large shapes. Each task function turns a random
generator into a `Made`; held-out compositions follow the config (see tasks.py)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from vlkit.chat import IMAGE_PROMPT
from vlkit.config.synth import SynthConfig
from vlkit.data.synth.base import (NUMBER_WORDS, RELATIONS, VQA_TYPES, Made, Retry, allowed_pairs, follow_ups, pick,
                                   relation_phrases)
from vlkit.data.synth.world import COLOR_NAMES, SEG_CLASSES, SHAPE_PLURALS, SHAPES, Scene, compose_scene, sample_scene
from vlkit.grounding import box_text, ref_box_text, to_bins
from vlkit.tokenizer import IMAGE_PLACEHOLDER


def _scene(rng: np.random.Generator, cfg: SynthConfig, min_objects: int = 1) -> Scene:
    force = ()
    if not cfg.train and cfg.heldout_pairs and rng.random() < cfg.heldout_boost:
        force = (pick(rng, cfg.heldout_pairs),)
    n = int(rng.integers(min_objects, max(min_objects, cfg.max_objects) + 1))
    scene = sample_scene(rng, cfg.size, n, pairs=allowed_pairs(cfg), force_pairs=force, max_iou=cfg.max_iou)
    if len(scene.objects) < min_objects:
        raise Retry
    return scene


def _scene_heldout(scene: Scene, cfg: SynthConfig) -> bool:
    held = set(cfg.heldout_pairs)
    return any(o.pair in held for o in scene.objects)


def _unique(scene: Scene, key: Callable) -> list:
    counts: dict = {}
    for o in scene.objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in scene.objects if counts[key(o)] == 1]


def _pick_unique(rng: np.random.Generator, scene: Scene, key: Callable):
    """One of the objects that `key` tells apart from all others (Retry when there is none)."""
    cands = _unique(scene, key)
    if not cands:
        raise Retry
    return pick(rng, cands)


def _a(phrase: str) -> str:
    """The phrase with its indefinite article: "a red circle", "an orange star"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _name(o) -> str:
    return f"{o.color} {o.shape}"


def _objects_meta(scene: Scene) -> list[dict]:
    return [o.meta(scene.width, scene.height) for o in scene.objects]


def _horizontal(a, b, scene: Scene) -> Optional[str]:
    """"left of" / "right of" when a's and b's centers are clearly apart horizontally, else None."""
    dx = a.cx - b.cx
    if abs(dx) < 0.1 * scene.width:
        return None
    return "left of" if dx < 0 else "right of"


def _vertical(a, b, scene: Scene) -> Optional[str]:
    dy = a.cy - b.cy
    if abs(dy) < 0.1 * scene.height:
        return None
    return "above" if dy < 0 else "below"


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# ---------------------------------------------------------------------------------------------------------
# caption

def _list_phrase(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def task_caption(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    scene = _scene(rng, cfg)
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy))  # left to right
    n = len(objs)
    plain = [_a(_name(o)) for o in objs]
    sized = [_a(f"{o.size} {_name(o)}") for o in objs]
    count = "one object" if n == 1 else f"{NUMBER_WORDS[n]} objects"
    captions = [
        _list_phrase(plain),
        _list_phrase(sized),
        f"{count}: {_list_phrase(plain)}",
        f"{_list_phrase(plain)} on a dark background",
    ]
    phrase = None
    if n == 2:
        a, b = objs
        rel = _vertical(a, b, scene) or _horizontal(a, b, scene)
        if rel is not None:
            phrase = pick(rng, relation_phrases(cfg, rel))
            captions.append(f"{_a(_name(a))} {phrase} {_a(_name(b))}")
    question = pick(rng, ["Describe the image.", "What is in the image?", "Write a short caption.",
                           "Describe the image briefly."])
    return Made(scene.image, question, pick(rng, captions), {"captions": captions, "objects": _objects_meta(scene)},
                scene=scene,
                category=f"{n}-objects", heldout=_scene_heldout(scene, cfg) or phrase in cfg.heldout_phrases)


# ---------------------------------------------------------------------------------------------------------
# VQA

def _vqa_color(rng, scene, cfg):
    o = _pick_unique(rng, scene, lambda o: o.shape)
    q = pick(rng, ["What color is the {s}?", "What is the color of the {s}?", "Which color does the {s} have?"])
    return q.format(s=o.shape), o.color, [o]


def _vqa_shape(rng, scene, cfg):
    o = _pick_unique(rng, scene, lambda o: o.color)
    q = pick(rng, ["What shape is the {c} object?", "What is the shape of the {c} object?",
                    "Which shape is {c}?"])
    return q.format(c=o.color), o.shape, [o]


def _vqa_count(rng, scene, cfg):
    kind = pick(rng, ["all", "color", "shape"])
    if kind == "all":
        q = pick(rng, ["How many objects are there?", "How many shapes are in the image?",
                        "How many objects are in the image?"])
        return q, str(len(scene.objects)), list(scene.objects)
    present = rng.random() < 0.8
    if kind == "color":
        c = pick(rng, scene.objects).color if present else pick(rng, COLOR_NAMES)
        q = pick(rng, ["How many {c} objects are there?", "How many {c} shapes are in the image?"]).format(c=c)
        return q, str(scene.count(color=c)), [o for o in scene.objects if o.color == c]
    s = pick(rng, scene.objects).shape if present else pick(rng, SHAPES)
    q = pick(rng, ["How many {p} are there?", "How many {p} are in the image?"]).format(p=SHAPE_PLURALS[s])
    return q, str(scene.count(shape=s)), [o for o in scene.objects if o.shape == s]


def _vqa_position(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.pair)
    rng.shuffle(cands)
    axis = pick(rng, ["x", "y"])
    for o in cands:
        if axis == "x" and abs(o.cx - scene.width / 2) >= 0.12 * scene.width:
            q = pick(rng, ["Is the {n} on the left or the right?", "Is the {n} on the left or right side?"])
            return q.format(n=_name(o)), "left" if o.cx < scene.width / 2 else "right", [o]
        if axis == "y" and abs(o.cy - scene.height / 2) >= 0.12 * scene.height:
            q = pick(rng, ["Is the {n} at the top or the bottom?", "Is the {n} in the top or bottom half?"])
            return q.format(n=_name(o)), "top" if o.cy < scene.height / 2 else "bottom", [o]
    raise Retry


def _vqa_relation(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.pair)
    if len(cands) < 2:
        raise Retry
    idx = rng.choice(len(cands), size=2, replace=False)
    a, b = cands[int(idx[0])], cands[int(idx[1])]
    rels = [r for r in (_horizontal(a, b, scene), _vertical(a, b, scene)) if r is not None]
    if not rels:
        raise Retry
    true_rel = pick(rng, rels)
    yes = rng.random() < 0.5
    rel = true_rel if yes else OPPOSITE[true_rel]
    phrase = pick(rng, relation_phrases(cfg, rel))
    return f"Is the {_name(a)} {phrase} the {_name(b)}?", "yes" if yes else "no", [a, b], phrase


def _vqa_exists(rng, scene, cfg):
    if rng.random() < 0.5:
        o = pick(rng, scene.objects)
        pair, ans, targets = o.pair, "yes", [o]
    else:
        absent = [p for p in allowed_pairs(cfg) if scene.count(*p) == 0]
        pair, ans, targets = pick(rng, absent), "no", []
    q = pick(rng, ["Is there {n}?", "Is there {n} in the image?", "Does the image contain {n}?"])
    return q.format(n=_a(f"{pair[0]} {pair[1]}")), ans, targets, pair


def _vqa_attribute(rng, scene, cfg):
    o = _pick_unique(rng, scene, lambda o: o.pair)
    q = pick(rng, ["What size is the {n}?", "Is the {n} small, medium or large?", "How big is the {n}?"])
    return q.format(n=_name(o)), o.size, [o]


_VQA = {"color": _vqa_color, "shape": _vqa_shape, "count": _vqa_count, "position": _vqa_position,
        "relation": _vqa_relation, "exists": _vqa_exists, "attribute": _vqa_attribute}


def task_vqa(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    qtype = pick(rng, VQA_TYPES)
    min_objects = 2 if qtype == "relation" else 1
    for _ in range(50):
        try:
            scene = _scene(rng, cfg, min_objects=min_objects)
            out = _VQA[qtype](rng, scene, cfg)
            break
        except Retry:
            continue
    else:  # pragma: no cover - every type is feasible for most scenes
        raise RuntimeError(f"could not make a {qtype} question")
    question, answer = out[0], out[1]
    extra = out[3] if len(out) > 3 else None
    held = _scene_heldout(scene, cfg)
    if isinstance(extra, tuple):  # exists: the pair named in the question
        held = held or extra in set(cfg.heldout_pairs)
    elif isinstance(extra, str):  # relation phrasing
        held = held or extra in cfg.heldout_phrases
    meta = {"answers": [answer] * 10, "question_type": qtype, "objects": _objects_meta(scene)}
    more = follow_ups(rng, cfg, lambda: _vqa_turn(rng, scene, cfg), _vqa_key(qtype, out))
    return Made(scene.image, question, answer, meta, category=qtype, heldout=held, scene=scene, follow_ups=more)


def _vqa_key(qtype: str, out: tuple) -> tuple:
    """What a VQA question asks about: its type and the objects it is about (a follow-up never repeats it)."""
    return qtype, tuple(sorted(id(o) for o in out[2])), out[1] if not out[2] else None


def _vqa_turn(rng: np.random.Generator, scene: Scene, cfg: SynthConfig) -> tuple[str, str, tuple]:
    qtype = pick(rng, VQA_TYPES)
    out = _VQA[qtype](rng, scene, cfg)
    return out[0], out[1], _vqa_key(qtype, out)


# ---------------------------------------------------------------------------------------------------------
# grounding (phrase -> box) and referring expression generation (box -> phrase)

def task_grounding(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    for _ in range(50):
        scene = _scene(rng, cfg)
        cands = _unique(scene, lambda o: o.pair)  # only ask about objects the phrase identifies
        if cands:
            break
    else:  # pragma: no cover - a scene without a unique (color, shape) is rare
        raise Retry
    o = pick(rng, cands)
    question, answer, bins, phrase = _grounding_qa(rng, scene, o)
    meta = {"boxes": [bins], "phrase": phrase, "objects": _objects_meta(scene)}
    more = follow_ups(rng, cfg, lambda: _ask_about(_grounding_qa, rng, scene, pick(rng, cands)), id(o))
    return Made(scene.image, question, answer, meta, category=o.size, scene=scene,
                heldout=_scene_heldout(scene, cfg), follow_ups=more)


def _grounding_qa(rng: np.random.Generator, scene: Scene, o) -> tuple[str, str, list[int], str]:
    phrase = f"the {_name(o)}"
    bins = list(to_bins(o.bbox, scene.width, scene.height))
    question = pick(rng, ["Where is {p}?", "<ref>{p}</ref>", "Locate {p}.", "Give the bounding box of {p}.",
                           "Find {p} in the image."]).format(p=phrase)
    return question, ref_box_text(phrase, bins), bins, phrase


def task_reg(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    scene = _scene(rng, cfg)
    o = pick(rng, scene.objects)
    question, answers, bins = _reg_qa(rng, scene, o)
    meta = {"answers": answers, "box": bins, "objects": _objects_meta(scene)}
    more = follow_ups(rng, cfg, lambda: _ask_about(_reg_qa, rng, scene, pick(rng, scene.objects)), id(o))
    return Made(scene.image, question, answers[0], meta, category=o.size, heldout=_scene_heldout(scene, cfg),
                scene=scene, follow_ups=[(q, a[0]) for q, a in more])


def _ask_about(qa: Callable, rng: np.random.Generator, scene: Scene, o) -> tuple[str, object, int]:
    """A follow-up turn about object `o`: (question, answer, the object's id)."""
    out = qa(rng, scene, o)
    return out[0], out[1], id(o)


def _reg_qa(rng: np.random.Generator, scene: Scene, o) -> tuple[str, list[str], list[int]]:
    """A box -> phrase question about `o`: the question, its accepted answers (the first is the target), the box."""
    bins = list(to_bins(o.bbox, scene.width, scene.height))
    question = pick(rng, ["What is the object in {b}?", "Describe the object in {b}.", "What is in {b}?",
                           "Name the object in the region {b}."]).format(b=box_text(bins))
    n = _name(o)
    return question, [_a(n), f"the {n}", n, _a(f"{o.size} {n}"), f"the {o.size} {n}"], bins


# ---------------------------------------------------------------------------------------------------------
# segmentation

def task_segmentation(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    scene = _scene(rng, cfg)
    classes = SEG_CLASSES[1:]
    question = "Segment the image. Classes: " + ", ".join(classes) + "."
    present = [s for s in SHAPES if scene.count(shape=s)]
    meta = {"classes": list(SEG_CLASSES), "objects": _objects_meta(scene)}
    return Made(scene.image, question, ", ".join(present), meta, category=f"{len(scene.objects)}-objects",
                heldout=_scene_heldout(scene, cfg), mask=scene.class_mask())


# ---------------------------------------------------------------------------------------------------------
# generation (text -> image): 1-2 large objects on black, so a tiny generator can learn them

GEN_SIZE = "large"


def task_generation(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    size = cfg.size
    held_pairs = set(cfg.heldout_pairs)
    force = (not cfg.train) and cfg.heldout_pairs and rng.random() < cfg.heldout_boost
    two = rng.random() < 0.6
    first = pick(rng, cfg.heldout_pairs) if force else pick(rng, allowed_pairs(cfg))
    jitter = lambda: float(rng.uniform(-0.04, 0.04)) * size  # noqa: E731
    if not two:
        center = (size / 2 + float(rng.uniform(-0.12, 0.12)) * size, size / 2 + float(rng.uniform(-0.12, 0.12)) * size)
        specs = [{"shape": first[1], "color": first[0], "size": GEN_SIZE, "center": center}]
        relation, phrase = None, None
        prompt = _a(f"{first[0]} {first[1]}")
    else:
        others = [p for p in allowed_pairs(cfg) if p[0] != first[0]]
        second = pick(rng, others)
        relation = pick(rng, RELATIONS)
        phrase = pick(rng, relation_phrases(cfg, relation))
        near, far = 0.28 * size, 0.72 * size  # the first object's and the second's coordinate on the axis
        if relation in ("right of", "below"):
            near, far = far, near
        across = size / 2
        if relation in ("left of", "right of"):
            c1, c2 = (near + jitter(), across + 2 * jitter()), (far + jitter(), across + 2 * jitter())
        else:
            c1, c2 = (across + 2 * jitter(), near + jitter()), (across + 2 * jitter(), far + jitter())
        specs = [{"shape": first[1], "color": first[0], "size": GEN_SIZE, "center": c1},
                 {"shape": second[1], "color": second[0], "size": GEN_SIZE, "center": c2}]
        prompt = f"{_a(first[0] + ' ' + first[1])} {phrase} {_a(second[0] + ' ' + second[1])}"
    for s in specs:
        s["center"] = (round(s["center"][0] * 2) / 2, round(s["center"][1] * 2) / 2)
    scene = compose_scene(specs, size, size, "plain", rng, tone=(0, 0, 0))
    objects = [{"shape": o.shape, "color": o.color, "box": list(to_bins(o.bbox, size, size))} for o in scene.objects]
    held = any((s["color"], s["shape"]) in held_pairs for s in specs) or (phrase in cfg.heldout_phrases)
    meta = {"prompt": prompt, "objects": objects, "relation": relation}
    return Made(scene.image, IMAGE_PROMPT.format(prompt), IMAGE_PLACEHOLDER, meta, category=relation or "single",
                heldout=held, image_is_target=True)

