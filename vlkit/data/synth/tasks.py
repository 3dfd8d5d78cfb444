"""Task generators: one function per task, each turning a random generator into one sample.

A generator returns a `Made` (image, question, answer, meta, held-out flag, optional mask); `make_sample`
wraps it into the sample format of DESIGN.md and the PNG bytes to write. Every sample's randomness comes
from `np.random.default_rng([seed, split, index])`, so samples are independent of each other, of the
worker that made them and of the task mixture's other entries.

Held-out compositions (`heldout="default"`): the (color, shape) pairs in `DEFAULT_HELDOUT_PAIRS` and the
relation phrasings in `DEFAULT_HELDOUT_PHRASES` never occur in the train split (no image shows such an
object, no text names one). The test split has all compositions; a sample is marked `meta.heldout = true`
when its image (or the image it asks for) shows a held-out pair, its text names one, or it uses a held-out
phrasing; `heldout_boost` of the test split's scene samples are made to show one.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from vlkit.config.synth import DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES, SPLITS, SynthConfig  # noqa: F401
from vlkit.data.synth import text as T
from vlkit.data.synth.world import (ALL_PAIRS, COLOR_NAMES, LABEL_CLASSES, SEG_CLASSES, SHAPE_PLURALS, SHAPES, Scene,
                                    compose_scene, sample_scene)
from vlkit.grounding import box_text, ref_box_text, to_bins

# Relations and their phrasings; the short forms are held out: every word of them is seen in training.
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VQA_TYPES = ("color", "shape", "count", "position", "relation", "exists", "attribute")


def allowed_pairs(cfg: SynthConfig) -> list[tuple[str, str]]:
    """The (color, shape) pairs the config's split may show."""
    return _allowed_pairs(cfg.heldout_pairs) if cfg.train else ALL_PAIRS


def relation_phrases(cfg: SynthConfig, relation: str) -> tuple[str, ...]:
    options = RELATION_PHRASES[relation]
    if cfg.train:
        options = tuple(p for p in options if p not in cfg.heldout_phrases)
    return options


@lru_cache(maxsize=16)
def _allowed_pairs(heldout: tuple) -> list[tuple[str, str]]:
    return [p for p in ALL_PAIRS if p not in set(heldout)]


@dataclass
class Made:
    image: Image.Image
    question: str  # the human turn, without the `<image>` placeholder
    answer: str  # the gpt turn ("<image>" for generation)
    meta: dict
    category: str
    heldout: bool = False
    mask: Optional[np.ndarray] = None  # segmentation: uint8 class-index mask
    image_is_target: bool = False  # generation: the image is what the assistant produces
    scene: Optional[Scene] = None  # the scene behind a scene task's image (dense labels)
    texts: Optional[list[tuple[str, tuple]]] = None  # a text image's (text, ink box in pixels) (dense labels)


class _Retry(Exception):
    """The scene does not support the question asked; draw another scene."""


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image) -> bytes:
    """8-bit RGB or grayscale PNG of a PIL image or uint8 array: unfiltered rows, zlib level 1. About 3x
    faster than Pillow's encoder for small images (Pillow tries every row filter), deterministic bytes."""
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"encode_png takes gray or RGB, got {channels} channels")
    raw = np.zeros((h, w * channels + 1), dtype=np.uint8)  # a leading 0 per row: filter type None
    raw[:, 1:] = arr.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if channels == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
            + _chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------------------
# scenes

def _scene(rng: np.random.Generator, cfg: SynthConfig, min_objects: int = 1, max_objects: int = 6) -> Scene:
    force = ()
    if not cfg.train and cfg.heldout_pairs and rng.random() < cfg.heldout_boost:
        force = (_pick(rng, cfg.heldout_pairs),)
    n = int(rng.integers(min_objects, max_objects + 1))
    scene = sample_scene(rng, cfg.size, n, pairs=allowed_pairs(cfg), force_pairs=force, max_iou=cfg.max_iou)
    if len(scene.objects) < min_objects:
        raise _Retry
    return scene


def _scene_heldout(scene: Scene, cfg: SynthConfig) -> bool:
    held = set(cfg.heldout_pairs)
    return any(o.pair in held for o in scene.objects)


def _unique(scene: Scene, key: Callable) -> list:
    counts: dict = {}
    for o in scene.objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in scene.objects if counts[key(o)] == 1]


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
            phrase = _pick(rng, relation_phrases(cfg, rel))
            captions.append(f"{_a(_name(a))} {phrase} {_a(_name(b))}")
    question = _pick(rng, ["Describe the image.", "What is in the image?", "Write a short caption.",
                           "Describe the image briefly."])
    return Made(scene.image, question, _pick(rng, captions), {"captions": captions, "objects": _objects_meta(scene)},
                scene=scene,
                category=f"{n}-objects", heldout=_scene_heldout(scene, cfg) or phrase in cfg.heldout_phrases)


# ---------------------------------------------------------------------------------------------------------
# VQA

def _vqa_color(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.shape)
    if not cands:
        raise _Retry
    o = _pick(rng, cands)
    q = _pick(rng, ["What color is the {s}?", "What is the color of the {s}?", "Which color does the {s} have?"])
    return q.format(s=o.shape), o.color, [o]


def _vqa_shape(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.color)
    if not cands:
        raise _Retry
    o = _pick(rng, cands)
    q = _pick(rng, ["What shape is the {c} object?", "What is the shape of the {c} object?",
                    "Which shape is {c}?"])
    return q.format(c=o.color), o.shape, [o]


def _vqa_count(rng, scene, cfg):
    kind = _pick(rng, ["all", "color", "shape"])
    if kind == "all":
        q = _pick(rng, ["How many objects are there?", "How many shapes are in the image?",
                        "How many objects are in the image?"])
        return q, str(len(scene.objects)), list(scene.objects)
    present = rng.random() < 0.8
    if kind == "color":
        c = _pick(rng, scene.objects).color if present else _pick(rng, COLOR_NAMES)
        q = _pick(rng, ["How many {c} objects are there?", "How many {c} shapes are in the image?"]).format(c=c)
        return q, str(scene.count(color=c)), [o for o in scene.objects if o.color == c]
    s = _pick(rng, scene.objects).shape if present else _pick(rng, SHAPES)
    q = _pick(rng, ["How many {p} are there?", "How many {p} are in the image?"]).format(p=SHAPE_PLURALS[s])
    return q, str(scene.count(shape=s)), [o for o in scene.objects if o.shape == s]


def _vqa_position(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.pair)
    rng.shuffle(cands)
    axis = _pick(rng, ["x", "y"])
    for o in cands:
        if axis == "x" and abs(o.cx - scene.width / 2) >= 0.12 * scene.width:
            q = _pick(rng, ["Is the {n} on the left or the right?", "Is the {n} on the left or right side?"])
            return q.format(n=_name(o)), "left" if o.cx < scene.width / 2 else "right", [o]
        if axis == "y" and abs(o.cy - scene.height / 2) >= 0.12 * scene.height:
            q = _pick(rng, ["Is the {n} at the top or the bottom?", "Is the {n} in the top or bottom half?"])
            return q.format(n=_name(o)), "top" if o.cy < scene.height / 2 else "bottom", [o]
    raise _Retry


def _vqa_relation(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.pair)
    if len(cands) < 2:
        raise _Retry
    idx = rng.choice(len(cands), size=2, replace=False)
    a, b = cands[int(idx[0])], cands[int(idx[1])]
    rels = [r for r in (_horizontal(a, b, scene), _vertical(a, b, scene)) if r is not None]
    if not rels:
        raise _Retry
    true_rel = _pick(rng, rels)
    yes = rng.random() < 0.5
    rel = true_rel if yes else OPPOSITE[true_rel]
    phrase = _pick(rng, relation_phrases(cfg, rel))
    return f"Is the {_name(a)} {phrase} the {_name(b)}?", "yes" if yes else "no", [a, b], phrase


def _vqa_exists(rng, scene, cfg):
    if rng.random() < 0.5:
        o = _pick(rng, scene.objects)
        pair, ans, targets = o.pair, "yes", [o]
    else:
        absent = [p for p in allowed_pairs(cfg) if scene.count(*p) == 0]
        pair, ans, targets = _pick(rng, absent), "no", []
    q = _pick(rng, ["Is there {n}?", "Is there {n} in the image?", "Does the image contain {n}?"])
    return q.format(n=_a(f"{pair[0]} {pair[1]}")), ans, targets, pair


def _vqa_attribute(rng, scene, cfg):
    cands = _unique(scene, lambda o: o.pair)
    if not cands:
        raise _Retry
    o = _pick(rng, cands)
    q = _pick(rng, ["What size is the {n}?", "Is the {n} small, medium or large?", "How big is the {n}?"])
    return q.format(n=_name(o)), o.size, [o]


_VQA = {"color": _vqa_color, "shape": _vqa_shape, "count": _vqa_count, "position": _vqa_position,
        "relation": _vqa_relation, "exists": _vqa_exists, "attribute": _vqa_attribute}


def task_vqa(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    qtype = _pick(rng, VQA_TYPES)
    min_objects = 2 if qtype == "relation" else 1
    for _ in range(50):
        try:
            scene = _scene(rng, cfg, min_objects=min_objects)
            out = _VQA[qtype](rng, scene, cfg)
            break
        except _Retry:
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
    return Made(scene.image, question, answer, meta, category=qtype, heldout=held, scene=scene)


# ---------------------------------------------------------------------------------------------------------
# grounding (phrase -> box) and referring expression generation (box -> phrase)

def task_grounding(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    for _ in range(50):
        scene = _scene(rng, cfg)
        cands = _unique(scene, lambda o: o.pair)  # only ask about objects the phrase identifies
        if cands:
            break
    else:  # pragma: no cover - a scene without a unique (color, shape) is rare
        raise _Retry
    o = _pick(rng, cands)
    phrase = f"the {_name(o)}"
    bins = list(to_bins(o.bbox, scene.width, scene.height))
    question = _pick(rng, ["Where is {p}?", "<ref>{p}</ref>", "Locate {p}.", "Give the bounding box of {p}.",
                           "Find {p} in the image."]).format(p=phrase)
    meta = {"boxes": [bins], "phrase": phrase, "objects": _objects_meta(scene)}
    return Made(scene.image, question, ref_box_text(phrase, bins), meta, category=o.size, scene=scene,
                heldout=_scene_heldout(scene, cfg))


def task_reg(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    scene = _scene(rng, cfg)
    o = _pick(rng, scene.objects)
    bins = list(to_bins(o.bbox, scene.width, scene.height))
    question = _pick(rng, ["What is the object in {b}?", "Describe the object in {b}.", "What is in {b}?",
                           "Name the object in the region {b}."]).format(b=box_text(bins))
    n = _name(o)
    answers = [_a(n), f"the {n}", n, _a(f"{o.size} {n}"), f"the {o.size} {n}"]
    meta = {"answers": answers, "box": bins, "objects": _objects_meta(scene)}
    return Made(scene.image, question, answers[0], meta, category=o.size, heldout=_scene_heldout(scene, cfg),
                scene=scene)


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
    first = _pick(rng, cfg.heldout_pairs) if force else _pick(rng, allowed_pairs(cfg))
    jitter = lambda: float(rng.uniform(-0.04, 0.04)) * size  # noqa: E731
    if not two:
        center = (size / 2 + float(rng.uniform(-0.12, 0.12)) * size, size / 2 + float(rng.uniform(-0.12, 0.12)) * size)
        specs = [{"shape": first[1], "color": first[0], "size": GEN_SIZE, "center": center}]
        relation, phrase = None, None
        prompt = _a(f"{first[0]} {first[1]}")
    else:
        others = [p for p in allowed_pairs(cfg) if p[0] != first[0]]
        second = _pick(rng, others)
        relation = _pick(rng, RELATIONS)
        phrase = _pick(rng, relation_phrases(cfg, relation))
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
    return Made(scene.image, f"Draw: {prompt}", "<image>", meta, category=relation or "single", heldout=held,
                image_is_target=True)


# ---------------------------------------------------------------------------------------------------------
# text: OCR, charts, documents

def task_ocr(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    size = cfg.size
    r = rng.random()
    kind = "word" if r < 0.4 else ("number" if r < 0.7 else "box")
    if kind == "word" and size >= 128 and rng.random() < 0.4:
        kind = "line"
    if kind == "box":
        n = 2 if size < 128 else int(rng.integers(2, 4))
        texts = []
        while len(texts) < n:
            t = T.random_word(rng, 5) if rng.random() < 0.6 else T.random_number(rng, 3)
            if t not in texts:  # the box, not the text, must tell them apart; keep them distinct anyway
                texts.append(t)
        img, boxes = T.render_texts(texts, size, rng, clean=cfg.clean_text)
        k = int(rng.integers(n))
        bins = list(to_bins(boxes[k], size, size))
        question = _pick(rng, ["Read the text inside {b}.", "What does the text in {b} say?",
                               "What is written in {b}?"]).format(b=box_text(bins))
        return Made(img, question, texts[k], {"answers": [texts[k]], "box": bins}, category="box",
                    texts=list(zip(texts, boxes)))
    if kind == "word":
        text = T.random_word(rng, 6)
    elif kind == "number":
        text = T.random_number(rng, 4)
    else:
        text = " ".join(T.random_word(rng, 5) for _ in range(int(rng.integers(2, 4))))
    img, boxes = T.render_texts([text], size, rng, clean=cfg.clean_text)
    question = _pick(rng, ["What does the text say?", "Read the text in the image.", "What is written in the image?",
                           "What word or number is shown?"])
    return Made(img, question, text, {"answers": [text], "box": list(to_bins(boxes[0], size, size))}, category=kind,
                texts=[(text, boxes[0])])


def _answers(a: str) -> list[str]:
    return [a] if a == a.lower() else [a, a.lower()]


def task_chart(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    size = cfg.size
    n = int(rng.integers(3, 6))
    labels = T.chart_labels(n, size, rng)
    vmax = 9 if size < 128 else 50
    values = [int(v) for v in rng.choice(np.arange(1, vmax + 1), size=n, replace=False)]  # distinct: one max
    img = T.render_bar_chart(labels, values, size, rng, clean=cfg.clean_text)
    kind = _pick(rng, ["value", "value", "largest", "smallest", "count", "compare"])
    if kind == "value":
        k = int(rng.integers(n))
        q = _pick(rng, ["What is the value of {l}?", "What value does bar {l} show?", "How high is bar {l}?"])
        question, answer = q.format(l=labels[k]), str(values[k])
    elif kind in ("largest", "smallest"):
        k = int(np.argmax(values) if kind == "largest" else np.argmin(values))
        word = "largest" if kind == "largest" else "smallest"
        q = _pick(rng, ["Which bar is the {w}?", "Which label has the {w} value?"])
        question, answer = q.format(w=word), labels[k]
    elif kind == "count":
        question, answer = _pick(rng, ["How many bars are there?", "How many bars does the chart have?"]), str(n)
    else:
        i, j = (int(v) for v in rng.choice(n, size=2, replace=False))
        question = f"Is {labels[i]} larger than {labels[j]}?"
        answer = "yes" if values[i] > values[j] else "no"
    meta = {"answers": _answers(answer), "labels": labels, "values": values}
    return Made(img, question, answer, meta, category=kind)


def task_doc(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    size = cfg.size
    n = int(rng.integers(2, 4)) if size < 128 else int(rng.integers(3, 6))
    keys = [str(k) for k in rng.choice(list(T.DOC_FIELDS), size=n, replace=False)]
    pairs = [(k, T.doc_value(k, rng)) for k in keys]
    img = T.render_document(pairs, size, rng, clean=cfg.clean_text)
    k = int(rng.integers(n))
    key, value = pairs[k]
    question = _pick(rng, ["What is the {k}?", "What is the value of {k}?", "What does the form say for {k}?"]
                     ).format(k=key)
    meta = {"answers": _answers(value), "fields": {k: v for k, v in pairs}}
    return Made(img, question, value, meta, category=key.lower())


TASKS: dict[str, Callable[[np.random.Generator, SynthConfig], Made]] = {
    "caption": task_caption,
    "vqa": task_vqa,
    "grounding": task_grounding,
    "reg": task_reg,
    "ocr": task_ocr,
    "chart": task_chart,
    "doc": task_doc,
    "segmentation": task_segmentation,
    "generation": task_generation,
}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def sample_id(task: str, split: str, seed: int, index: int) -> str:
    return f"{task}-{split}-{seed}-{index:06d}"


def make_sample(task: str, index: int, seed: int, cfg: SynthConfig) -> tuple[dict, dict[str, bytes]]:
    """Sample `index` of (seed, split): the sample dict (paths relative to the dataset folder) and the
    files to write ({relative path: PNG bytes})."""
    mem = make_memory_sample(task, index, seed, cfg)
    sid, mask, meta = mem["id"], mem["mask_object"], dict(mem["meta"])
    image_path = f"images/{sid}.png"
    files = {image_path: encode_png(mem["image_objects"][0])}
    if mask is not None:
        files[f"masks/{sid}.png"] = encode_png(mask)
        meta = {**{k: v for k, v in meta.items() if k not in ("heldout", "category")}, "mask": f"masks/{sid}.png",
                "heldout": meta["heldout"], "category": meta["category"]}
    sample = {"id": sid, "images": [image_path], "conversations": mem["conversations"], "task": task, "meta": meta}
    return sample, files


def text_mask(texts: list[tuple[str, tuple]], size: tuple[int, int]) -> np.ndarray:
    """uint8 HxW: 0 background, k = the k-th text's ink box (its dense label: the text's words)."""
    out = np.zeros((size[1], size[0]), dtype=np.uint8)
    for k, (_, (x1, y1, x2, y2)) in enumerate(texts):
        out[max(0, int(y1)):int(y2), max(0, int(x1)):int(x2)] = k + 1
    return out


def make_memory_sample(task: str, index: int, seed: int, cfg: SynthConfig) -> dict:
    """Sample `index` of (seed, split) held in memory: the image as a PIL image in `image_objects` and the
    segmentation mask (or None) in `mask_object`, as the readers of vlkit.data.sources give them."""
    rng = sample_rng(seed, cfg.split, index)
    for _ in range(20):
        try:
            made = TASKS[task](rng, cfg)
            break
        except _Retry:
            continue
    else:  # pragma: no cover
        raise RuntimeError(f"could not make a {task} sample")
    if made.image_is_target:
        conversations = [{"from": "human", "value": made.question}, {"from": "gpt", "value": "<image>"}]
    else:
        first = cfg.question_first > 0 and rng.random() < cfg.question_first
        prompt = f"{made.question}\n<image>" if first else f"<image>\n{made.question}"
        conversations = [{"from": "human", "value": prompt}, {"from": "gpt", "value": made.answer}]
    meta = dict(made.meta, heldout=bool(made.heldout), category=made.category)
    mask = made.mask
    if cfg.dense_labels and mask is None and made.scene is not None:
        mask, meta["classes"] = made.scene.label_mask(), list(LABEL_CLASSES)
    elif cfg.dense_labels and cfg.dense_text and mask is None and made.texts:
        mask, meta["classes"] = text_mask(made.texts, made.image.size), ["background"] + [t for t, _ in made.texts]
    return {"id": sample_id(task, cfg.split, seed, index), "image_objects": [made.image], "mask_object": mask,
            "conversations": conversations, "task": task, "meta": meta}
