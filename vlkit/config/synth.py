"""The synthetic world's settings (vlkit.data.synth): image size, split, held-out compositions, label options.

Held-out compositions: the (color, shape) pairs in `DEFAULT_HELDOUT_PAIRS` and the relation phrasings in
`DEFAULT_HELDOUT_PHRASES` never occur in the train split (vlkit.data.synth.tasks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlkit.config.base import ConfigError, _Checked, ranged

SPLITS = ("train", "test")
ASPECTS = ("square", "wide", "tall", "mixed")  # the canvas of text images (ocr, chart, doc); "mixed": one per sample
OCR_KINDS = ("word", "number", "line", "box")
MIN_SHORT_SIDE = 16  # pixels: the short side of a wide or tall canvas
DEFAULT_HELDOUT_PAIRS = (("red", "star"), ("blue", "triangle"), ("yellow", "circle"), ("purple", "square"))
DEFAULT_HELDOUT_PHRASES = ("left of", "right of")  # the short forms: every word of them is seen in training


@dataclass(frozen=True)
class SynthConfig(_Checked):
    SECTION = "synth"

    size: int = ranged(64, 32)  # pixels
    split: Literal[SPLITS] = "train"
    heldout_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT_PAIRS
    heldout_phrases: tuple[str, ...] = DEFAULT_HELDOUT_PHRASES
    heldout_boost: float = ranged(0.3, 0, 1)  # test split: this fraction of scene samples shows a held-out pair
    max_iou: float = ranged(0.0, 0, 1, hi_open=True)  # box IoU allowed between scene objects (0: never touching)
    clean_text: bool = False  # black-on-white, upright text (for checking renders with OCR)
    # scene samples carry a per-pixel "size color shape" label mask (LABEL_CLASSES), OCR samples their texts' ink
    # boxes labelled with the text: NTP-M targets that teach the vision path directly (a stream's
    # `dense_labels: true`; never written by generate_dataset)
    dense_labels: bool = False
    dense_text: bool = False  # with dense_labels: OCR samples too (their texts' ink boxes; docs/training.md row 16)
    question_first: float = ranged(0.0, 0, 1)  # the share of understanding samples whose question comes before the <image>
    # text images (ocr, chart, doc) at native resolution: "wide" is size x size/aspect_ratio (256 x 96 at size 256),
    # "tall" its transpose, "mixed" draws square, wide or tall per sample; "square" (default) is size x size
    aspect: Literal[ASPECTS] = "square"
    aspect_ratio: float = ranged(8 / 3, 1, 16)  # long side / short side of a wide or tall canvas
    video_frames: int = ranged(8, 4, 64)  # frames per video_qa clip
    # questions per image (LLaVA-style multi-turn): vqa, grounding, reg, chart and doc ask up to this many questions
    # about one image in one conversation, so the image is encoded once for several answers (docs/training.md row 17)
    turns: int = ranged(1, 1, 16)
    max_objects: int = ranged(6, 1, 6)  # objects per scene (1..max_objects; relation questions need 2): a curriculum's easy start
    # what OCR samples show: words, numbers, lines of words (canvases >= 128 px wide) and texts in a box; a subset
    # (e.g. ("number",)) draws only those kinds, uniformly (a reading curriculum's start)
    ocr_kinds: tuple[str, ...] = OCR_KINDS

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ocr_kinds", tuple(self.ocr_kinds))  # YAML gives a list
        bad = [k for k in self.ocr_kinds if k not in OCR_KINDS]
        if bad or not self.ocr_kinds:
            raise ConfigError(f"synth.ocr_kinds={list(self.ocr_kinds)}: choose one or more of {list(OCR_KINDS)}")
        if self.aspect != "square" and self.short_side < MIN_SHORT_SIDE:
            raise ConfigError(f"synth.aspect_ratio={self.aspect_ratio:g} with size={self.size} makes the short side "
                              f"{self.short_side} px; it must be >= {MIN_SHORT_SIDE} (lower aspect_ratio or raise size)")

    @property
    def short_side(self) -> int:
        """The short side (pixels) of a wide or tall canvas."""
        return round(self.size / self.aspect_ratio)

    @property
    def train(self) -> bool:
        return self.split == "train"
