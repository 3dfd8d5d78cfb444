"""What every synthetic task shares: relations and their phrasings, the pairs a split may show, and `Made` (what a
task generator returns; tasks.py turns it into a sample)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Hashable, Optional, Sequence

import numpy as np
from PIL import Image

from vlkit.config.synth import SynthConfig
from vlkit.data.synth.world import ALL_PAIRS, Scene

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
    image: Optional[Image.Image]  # the input image (the first of `images`; None for a video task)
    question: str  # the human turn, without the `<image>` placeholder
    answer: str  # the gpt turn ("<image>" for generation)
    meta: dict
    category: str
    heldout: bool = False
    mask: Optional[np.ndarray] = None  # segmentation: uint8 class-index mask
    image_is_target: bool = False  # generation: the image is what the assistant produces
    scene: Optional[Scene] = None  # the scene behind a scene task's image (dense labels)
    texts: Optional[list[tuple[str, tuple]]] = None  # a text image's (text, ink box in pixels) (dense labels)
    images: Optional[list[Image.Image]] = None  # multi-image tasks: every input image, in prompt order
    video: Optional[list[Image.Image]] = None  # video tasks: the clip's frames, in order (the sample's one video)
    follow_ups: list[tuple[str, str]] = field(default_factory=list)  # more (question, answer) turns on the same image


class Retry(Exception):
    """The scene does not support the question asked; draw another scene."""


def follow_ups(rng: np.random.Generator, cfg: SynthConfig, ask: Callable[[], tuple[str, str, Hashable]],
               first: Hashable) -> list[tuple[str, str]]:
    """Up to `cfg.turns - 1` more (question, answer) pairs from `ask`, which returns (question, answer, what it asks
    about) or raises Retry. No two turns ask about the same thing (`first`: what the first turn asked about), so an
    earlier answer never gives a later one away."""
    out: list[tuple[str, str]] = []
    asked = {first}
    for _ in range(4 * (cfg.turns - 1)):
        if len(out) == cfg.turns - 1:
            break
        try:
            q, a, key = ask()
        except Retry:
            continue
        if key not in asked:
            asked.add(key)
            out.append((q, a))
    return out


def canvas(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    """(width, height) of a text image: size x size for aspect "square" (no random draw: today's samples), wide
    (size x short side) or tall (short side x size), or one of the three per sample for "mixed"."""
    aspect = cfg.aspect
    if aspect == "square":
        return cfg.size, cfg.size
    if aspect == "mixed":
        aspect = pick(rng, ("square", "wide", "tall"))
    return {"square": (cfg.size, cfg.size), "wide": (cfg.size, cfg.short_side),
            "tall": (cfg.short_side, cfg.size)}[aspect]


def canvas_meta(cfg: SynthConfig, width: int, height: int) -> dict:
    """The canvas size in meta (only off the square default, whose samples stay as they were)."""
    return {} if cfg.aspect == "square" else {"width": width, "height": height}


def pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]

