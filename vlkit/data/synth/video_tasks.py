"""Video QA: short clips (SynthConfig.video_frames frames, size x size) of shapes that move, appear and leave.

A clip is a list of `Track`s, each an object's center per frame (None: not in the frame). The answer is computed
from the tracks by `clip_answer` (the one definition of each question's ground truth), never from how the clip
was drawn. Every question needs time: reversing a clip gives the same frames in the other order and a different
answer (tests/data/synth/test_video_tasks.py), so no single frame, and no set of frames, determines it.

Question types (meta `question_type`): direction ("left" | "right" | "up" | "down"), appear and disappear ("red
circle": which object entered / left), count ("How many objects appear?": "1"-"3"), order ("Which starts moving
first, the X or the Y?": "red circle").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from vlkit.config.synth import SynthConfig
from vlkit.data.synth.base import Made, Retry, allowed_pairs, pick
from vlkit.data.synth.multi_tasks import free_center
from vlkit.data.synth.world import (BACKGROUND_TONES, BACKGROUNDS, SIZES, box_is_free, compose_scene,
                                    shape_box_bound)

VIDEO_TYPES = ("direction", "appear", "disappear", "count", "order")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SINGLE_FRAME_ANSWERABLE = False  # every question type needs the order of frames (see the module docstring)

Center = Optional[tuple[float, float]]


@dataclass
class Track:
    shape: str
    color: str
    size: str
    extent: float
    centers: list[Center]  # per frame; None: absent

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def reversed(self) -> "Track":
        return Track(self.shape, self.color, self.size, self.extent, self.centers[::-1])

    def meta(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "centers": [None if c is None else list(c) for c in self.centers]}


# ---------------------------------------------------------------------------------------------------------
# ground truth from the tracks


def _present(track: Track) -> list[tuple[float, float]]:
    return [c for c in track.centers if c is not None]


def direction_of(track: Track) -> str:
    (x0, y0), (x1, y1) = _present(track)[0], _present(track)[-1]
    dx, dy = x1 - x0, y1 - y0
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def appeared(tracks: Sequence[Track]) -> list[Track]:
    return [t for t in tracks if t.centers[0] is None and t.centers[-1] is not None]


def disappeared(tracks: Sequence[Track]) -> list[Track]:
    return [t for t in tracks if t.centers[0] is not None and t.centers[-1] is None]


def first_move(track: Track) -> int:
    """The first frame whose center differs from the frame before (len(centers) when it never moves)."""
    c = track.centers
    return next((k for k in range(1, len(c)) if c[k] != c[k - 1]), len(c))


def clip_answer(question_type: str, tracks: Sequence[Track], subjects: Sequence[int] = ()) -> Optional[str]:
    """The answer to a question of `question_type` about the clip (`subjects`: the tracks the question names);
    None when the clip has no answer to it (no object appears, two start moving at once)."""
    if question_type == "direction":
        return direction_of(tracks[subjects[0]])
    if question_type in ("appear", "disappear"):
        found = appeared(tracks) if question_type == "appear" else disappeared(tracks)
        return found[0].name if len(found) == 1 else None
    if question_type == "count":
        return str(len(appeared(tracks)))
    if question_type == "order":
        a, b = (tracks[k] for k in subjects)
        if first_move(a) == first_move(b):
            return None
        return (a if first_move(a) < first_move(b) else b).name
    raise ValueError(f"unknown video question type {question_type!r}; choose one of {list(VIDEO_TYPES)}")


# ---------------------------------------------------------------------------------------------------------
# clips


def render_clip(tracks: Sequence[Track], size: int, background: str, tone, bg_seed: int) -> list[Image.Image]:
    """The frames: every frame has the same background pixels (a still camera), objects where their tracks are."""
    frames = []
    for t in range(len(tracks[0].centers)):
        specs = [{"shape": k.shape, "color": k.color, "size": k.size, "extent": k.extent, "center": k.centers[t]}
                 for k in tracks if k.centers[t] is not None]
        frames.append(compose_scene(specs, size, size, background, np.random.default_rng(bg_seed), tone).image)
    return frames


class _Layout:
    """Objects placed so that nothing ever overlaps: each keeps the box its whole path sweeps."""

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig):
        self.rng, self.size, self.frames = rng, cfg.size, cfg.video_frames
        self.pairs = list(allowed_pairs(cfg))
        self.boxes: list[tuple] = []
        self.used: set = set()

    def _object(self) -> tuple[str, str, str, float]:
        color, shape = pick(self.rng, [p for p in self.pairs if p not in self.used])  # names stay unique
        self.used.add((color, shape))
        size = pick(self.rng, ("small", "medium"))
        return shape, color, size, SIZES[size] * self.size

    def still(self, start: int = 0, stop: Optional[int] = None) -> Track:
        """An object that does not move, present in frames [start, stop)."""
        shape, color, size, extent = self._object()
        c = free_center(self.rng, shape, extent, self.boxes, self.size)
        self.boxes.append(shape_box_bound(shape, *c, extent))
        stop = self.frames if stop is None else stop
        return Track(shape, color, size, extent, [c if start <= t < stop else None for t in range(self.frames)])

    def mover(self, direction: str, t0: int, t1: int) -> Track:
        """An object that moves in `direction` from frame t0 to t1 (still before and after)."""
        shape, color, size, extent = self._object()
        dx, dy = DIRECTIONS[direction]
        dist = round(0.4 * self.size)
        for _ in range(40):
            x0, y0 = free_center(self.rng, shape, extent, self.boxes, self.size)
            x1, y1 = x0 + dx * dist, y0 + dy * dist
            a, b = shape_box_bound(shape, x0, y0, extent), shape_box_bound(shape, x1, y1, extent)
            swept = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
            if swept[0] >= 0 and swept[1] >= 0 and swept[2] <= self.size and swept[3] <= self.size \
                    and box_is_free(swept, self.boxes):
                break
        else:
            raise Retry
        self.boxes.append(swept)
        centers = []
        for t in range(self.frames):
            f = min(1.0, max(0.0, (t - t0) / (t1 - t0)))
            centers.append((round((x0 + f * (x1 - x0)) * 2) / 2, round((y0 + f * (y1 - y0)) * 2) / 2))
        return Track(shape, color, size, extent, centers)


def _clip(rng: np.random.Generator, cfg: SynthConfig, qtype: str) -> tuple[list[Track], list[int], str]:
    """The tracks of a clip for `qtype`, the tracks the question names, and the question."""
    lay, t_end = _Layout(rng, cfg), cfg.video_frames - 1
    if qtype == "direction":
        tracks = [lay.mover(pick(rng, list(DIRECTIONS)), 0, t_end)]
        tracks += [lay.still() for _ in range(int(rng.integers(0, 3)))]
        q = pick(rng, ["Which way does the {a} move?", "In which direction does the {a} move?"])
        return tracks, [0], q.format(a=tracks[0].name)
    if qtype in ("appear", "disappear"):
        enter, leave = (int(t) for t in rng.integers(1, t_end, size=2))
        tracks = [lay.still(start=enter), lay.still(stop=leave)] + [lay.still() for _ in range(int(rng.integers(2)))]
        verb = "appears" if qtype == "appear" else "disappears"
        return tracks, [], pick(rng, [f"Which object {verb}?", f"Which object {verb} during the clip?"])
    if qtype == "count":
        starts = [int(t) for t in rng.choice(np.arange(1, t_end + 1), size=int(rng.integers(1, 4)), replace=False)]
        tracks = [lay.still(start=t) for t in starts] + [lay.still() for _ in range(int(rng.integers(3)))]
        return tracks, [], pick(rng, ["How many objects appear?", "How many objects appear during the clip?"])
    mid = cfg.video_frames // 2
    tracks = [lay.mover(pick(rng, list(DIRECTIONS)), 0, mid), lay.mover(pick(rng, list(DIRECTIONS)), mid, t_end)]
    subjects = [0, 1] if rng.random() < 0.5 else [1, 0]
    a, b = (tracks[k].name for k in subjects)
    return tracks, subjects, f"Which starts moving first, the {a} or the {b}?"


def task_video_qa(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    qtype = pick(rng, VIDEO_TYPES)
    tracks, subjects, question = _clip(rng, cfg, qtype)
    order = rng.permutation(len(tracks))  # the drawing order: no question's object is always drawn first
    tracks = [tracks[k] for k in order]
    subjects = [int(np.flatnonzero(order == s)[0]) for s in subjects]
    answer = clip_answer(qtype, tracks, subjects)
    if answer is None:
        raise Retry  # pragma: no cover (the clips above always have an answer)
    frames = render_clip(tracks, cfg.size, pick(rng, BACKGROUNDS), pick(rng, BACKGROUND_TONES),
                         int(rng.integers(2 ** 31)))
    held = set(cfg.heldout_pairs)
    meta = {"answers": [answer] * 10, "question_type": qtype, "subjects": subjects,
            "tracks": [t.meta() for t in tracks], "frames": len(frames), "single_frame_answerable": False}
    return Made(None, question, answer, meta, category=qtype, heldout=any((t.color, t.shape) in held for t in tracks),
                video=frames)
