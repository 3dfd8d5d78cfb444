"""What every synthetic task shares: the splits and held-out compositions, `SynthConfig`, and `Made` (what a
task generator returns; tasks.py turns it into a sample)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from vlkit.data.synth.world import ALL_PAIRS, Scene

SPLITS = ("train", "test")
DEFAULT_HELDOUT_PAIRS = (("red", "star"), ("blue", "triangle"), ("yellow", "circle"), ("purple", "square"))
# Relations and their phrasings; the short forms are held out: every word of them is seen in training.
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
DEFAULT_HELDOUT_PHRASES = ("left of", "right of")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VQA_TYPES = ("color", "shape", "count", "position", "relation", "exists", "attribute")


@dataclass(frozen=True)
class SynthConfig:
    size: int = 64
    split: str = "train"
    heldout_pairs: tuple = DEFAULT_HELDOUT_PAIRS
    heldout_phrases: tuple = DEFAULT_HELDOUT_PHRASES
    heldout_boost: float = 0.3  # test split: this fraction of scene samples shows a held-out pair
    max_iou: float = 0.0  # box IoU allowed between scene objects (0: never touching)
    clean_text: bool = False  # black-on-white, upright text (for checking renders with OCR)
    # scene samples carry a per-pixel "size color shape" label mask (LABEL_CLASSES), OCR samples their texts' ink
    # boxes labelled with the text: NTP-M targets that teach the vision path directly (a stream's
    # `dense_labels: true`; never written by generate_dataset)
    dense_labels: bool = False
    dense_text: bool = False  # with dense_labels: OCR samples too (their texts' ink boxes; docs/training.md row 16)
    question_first: float = 0.0  # the share of understanding samples whose question comes before the <image>

    @property
    def train(self) -> bool:
        return self.split == "train"

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The (color, shape) pairs this split may show."""
        return _allowed_pairs(self.heldout_pairs) if self.train else ALL_PAIRS

    def phrases(self, relation: str) -> tuple[str, ...]:
        options = RELATION_PHRASES[relation]
        if self.train:
            options = tuple(p for p in options if p not in self.heldout_phrases)
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


class Retry(Exception):
    """The scene does not support the question asked; draw another scene."""


def pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]

