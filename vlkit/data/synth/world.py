"""The synthetic visual world: shapes in named colors on dark backgrounds, with exact per-object ground truth.

Every object's mask is rasterized on its own (Pillow polygons and ellipses are drawn without antialiasing),
then painted in its palette color, so the pixels of an object are exactly its mask and exactly its color.
Later objects occlude earlier ones; each object keeps its *visible* mask and the tight box around it.
Backgrounds are dark and low in saturation (every channel < 80) so no texture can pass for an object color.
"""
from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vlkit.grounding import to_bins

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
SHAPE_PLURALS = {s: s + "s" for s in SHAPES}
# Saturated or bright colors, pairwise >= 90 apart in RGB; all far from the dark backgrounds below.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (245, 225, 30),
    "purple": (150, 60, 200),
    "orange": (255, 130, 0),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
COLOR_NAMES = list(COLORS)
# Segmentation classes: index 0 is background, k >= 1 is SHAPES[k - 1]. Fixed, so masks are comparable.
SEG_CLASSES = ["background"] + SHAPES
# Nominal extent of an object as a fraction of the image side; the classes are 8 px apart at 64 x 64.
SIZES = {"small": 0.16, "medium": 0.24, "large": 0.32}
SIZE_NAMES = list(SIZES)
ALL_PAIRS = [(c, s) for c in COLOR_NAMES for s in SHAPES]
# Per-pixel scene labels (a synth stream's dense_labels): index 0 is background, k >= 1 "size color shape".
LABEL_CLASSES = ["background"] + [f"{z} {c} {s}" for z in SIZE_NAMES for c, s in ALL_PAIRS]

# Dark, nearly gray tones; texture adds at most 14 to them.
BACKGROUND_TONES = [(0, 0, 0), (22, 22, 22), (38, 38, 38), (16, 20, 34), (34, 27, 22), (18, 30, 24)]
BACKGROUNDS = ["plain", "noise", "stripes", "checker"]

_STAR_INNER = 0.45  # inner / outer radius: a fat star stays recognizable at 10 px


def _unit_outline(shape: str) -> Optional[list[tuple[float, float]]]:
    """Vertices in units of the nominal extent, centered on (0, 0); None for the circle (an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.42
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":  # equilateral, apex up, bounding box centered
        h = math.sqrt(3) / 4
        return [(0.0, -h), (0.5, h), (-0.5, h)]
    if shape == "hexagon":  # pointy top: taller than wide (0.866), which tells it from a circle
        return [(0.5 * math.cos(math.radians(-90 + 60 * k)), 0.5 * math.sin(math.radians(-90 + 60 * k)))
                for k in range(6)]
    if shape == "diamond":  # a rhombus taller than wide
        return [(0.0, -0.5), (0.34, 0.0), (0.0, 0.5), (-0.34, 0.0)]
    if shape == "star":
        pts = []
        dy = (0.5 - 0.5 * math.cos(math.radians(36))) / 2  # center the bounding box vertically
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.5 * _STAR_INNER
            a = math.radians(-90 + 36 * k)
            pts.append((r * math.cos(a), r * math.sin(a) + dy))
        return pts
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


_OUTLINES = {s: _unit_outline(s) for s in SHAPES}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, extent: float, fill) -> None:
    """Draw one shape of nominal `extent` pixels centered at (cx, cy)."""
    outline = _OUTLINES[shape]
    if outline is None:
        r = extent / 2
        draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=fill)
    else:
        # pixel centers sit at integer + 0.5: shift so shapes are symmetric on the pixel grid
        draw.polygon([(cx + x * extent - 0.5, cy + y * extent - 0.5) for x, y in outline], fill=fill)


def shape_mask(shape: str, cx: float, cy: float, extent: float, width: int, height: int) -> np.ndarray:
    """Boolean HxW mask of one shape (no antialiasing: a pixel is in or out)."""
    return _shape_mask_bbox(shape, cx, cy, extent, width, height)[0]


def _shape_mask_bbox(shape: str, cx: float, cy: float, extent: float, width: int, height: int):
    canvas = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, extent, 1)
    return np.asarray(canvas, dtype=bool), canvas.getbbox()


def mask_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Tight pixel box (x1, y1, x2, y2) with exclusive x2/y2, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


@lru_cache(maxsize=64)
def _pattern(kind: str, height: int, width: int, period: int, orient: int) -> np.ndarray:
    """HxWx1 uint8 texture offsets (0 or 14) for stripes (orient 0: horizontal, 1: vertical, 2: diagonal) or
    a checkerboard; read-only (cached)."""
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "stripes":
        band = ((yy, xx, xx + yy)[orient] // period) % 2
    else:
        band = ((yy // period) + (xx // period)) % 2
    out = (band * 14).astype(np.uint8)[:, :, None]
    out.setflags(write=False)
    return out


def render_background(kind: str, width: int, height: int, rng: np.random.Generator,
                      tone: Optional[Sequence[int]] = None) -> np.ndarray:
    """HxWx3 uint8 dark background: plain, noise, stripes or checker (textures add at most 14)."""
    if tone is None:
        tone = BACKGROUND_TONES[int(rng.integers(len(BACKGROUND_TONES)))]
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(tone, dtype=np.uint8)
    if kind == "plain":
        return out
    if max(tone) > 241:
        raise ValueError(f"textured backgrounds need a dark tone, got {tuple(tone)}")
    if kind == "noise":
        delta = rng.integers(0, 13, size=(height, width, 1), dtype=np.uint8)
    elif kind in ("stripes", "checker"):
        period = int(rng.integers(3, 7)) * max(1, round(min(width, height) / 64))
        delta = _pattern(kind, height, width, period, int(rng.integers(3)) if kind == "stripes" else 0)
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}")
    out += delta
    return out


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str  # small | medium | large (nominal extent class)
    center: tuple[float, float]  # where it was drawn (pixels)
    extent: float  # nominal extent (pixels)
    mask: np.ndarray = field(repr=False)  # visible pixels (after occlusion), bool HxW
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # tight box of the visible mask, exclusive x2/y2

    @property
    def pair(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def cx(self) -> float:
        return (self.bbox[0] + self.bbox[2]) / 2

    @property
    def cy(self) -> float:
        return (self.bbox[1] + self.bbox[3]) / 2

    def meta(self, width: int, height: int) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "bbox": list(self.bbox),
                "box": list(to_bins(self.bbox, width, height))}


@dataclass
class Scene:
    width: int
    height: int
    background: str
    objects: list[SceneObject]
    pixels: np.ndarray = field(repr=False)  # HxWx3 uint8

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, "RGB")

    def class_mask(self) -> np.ndarray:
        """uint8 HxW: 0 background, k = SEG_CLASSES index of the visible object's shape."""
        out = np.zeros((self.height, self.width), dtype=np.uint8)
        for obj in self.objects:
            out[obj.mask] = SEG_CLASSES.index(obj.shape)
        return out

    def label_mask(self) -> np.ndarray:
        """uint8 HxW: 0 background, k = LABEL_CLASSES index of the visible object's "size color shape"."""
        out = np.zeros((self.height, self.width), dtype=np.uint8)
        for obj in self.objects:
            out[obj.mask] = LABEL_CLASSES.index(f"{obj.size} {obj.color} {obj.shape}")
        return out

    def count(self, color: Optional[str] = None, shape: Optional[str] = None) -> int:
        return sum(1 for o in self.objects
                   if (color is None or o.color == color) and (shape is None or o.shape == shape))


def _extent(spec: dict, width: int, height: int) -> float:
    return spec.get("extent") or SIZES[spec["size"]] * min(width, height)


def compose_scene(specs: Sequence[dict], width: int, height: int, background: str = "plain",
                  rng: Optional[np.random.Generator] = None, tone: Optional[Sequence[int]] = None) -> Scene:
    """Render objects given as dicts {shape, color, size, center: (cx, cy), extent (optional, pixels)}, in
    order: later ones on top. Objects left with no visible pixel are dropped from the ground truth.

    All objects are drawn into one label image (object k as value k + 1, no antialiasing), so each pixel
    belongs to exactly the topmost object covering it; the RGB image is that label image colored."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if len(specs) > 254:
        raise ValueError("at most 254 objects per scene")
    labels_img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(labels_img)
    for k, spec in enumerate(specs):
        draw_shape(draw, spec["shape"], spec["center"][0], spec["center"][1], _extent(spec, width, height), k + 1)
    labels = np.asarray(labels_img)
    pixels = render_background(background, width, height, rng, tone)
    lut = np.zeros((len(specs) + 1, 3), dtype=np.uint8)
    objects: list[SceneObject] = []
    for k, spec in enumerate(specs):
        mask = labels == k + 1
        box = mask_bbox(mask)
        if box is None:
            continue  # hidden entirely, or outside the image
        lut[k + 1] = COLORS[spec["color"]]
        objects.append(SceneObject(spec["shape"], spec["color"], spec["size"], tuple(spec["center"]),
                                   _extent(spec, width, height), mask, box))
    if specs:
        fg = labels > 0
        pixels[fg] = lut[labels[fg]]
    return Scene(width, height, background, objects, pixels)


def _box_conflict(a: Sequence[float], b: Sequence[float], max_iou: float, gap: float) -> bool:
    if max_iou <= 0:  # no overlap at all, and `gap` pixels of background between boxes
        return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return union > 0 and inter / union > max_iou


def box_is_free(box: Sequence[float], boxes: Sequence[Sequence[float]], gap: float = 1) -> bool:
    """Whether `box` keeps `gap` px of background to every box in `boxes` (no overlap)."""
    return not any(_box_conflict(box, b, 0.0, gap) for b in boxes)


def _outline_box(shape: str) -> tuple[float, float, float, float]:
    pts = _OUTLINES[shape]
    if pts is None:
        return (-0.5, -0.5, 0.5, 0.5)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


_OUTLINE_BOXES = {s: _outline_box(s) for s in SHAPES}


def shape_box_bound(shape: str, cx: float, cy: float, extent: float) -> tuple[float, float, float, float]:
    """A box that contains every pixel `draw_shape` can fill (the outline's box, 1 px larger each side)."""
    x1, y1, x2, y2 = _OUTLINE_BOXES[shape]
    return (cx + x1 * extent - 1.5, cy + y1 * extent - 1.5, cx + x2 * extent + 1.5, cy + y2 * extent + 1.5)


def sample_scene(rng: np.random.Generator, size: int = 64, n_objects: Optional[int] = None,
                 pairs: Sequence[tuple[str, str]] = ALL_PAIRS, force_pairs: Sequence[tuple[str, str]] = (),
                 max_iou: float = 0.0, min_visible: float = 0.6, gap: int = 1, background: Optional[str] = None,
                 sizes: Sequence[str] = SIZE_NAMES, max_tries: int = 40) -> Scene:
    """A random scene of `n_objects` (default 1-6) objects whose (color, shape) pairs come from `pairs`
    (`force_pairs` are placed first). Objects that do not fit after `max_tries` placements, even at the
    smallest size, are left out: the ground truth always describes what was drawn.

    max_iou: the largest IoU allowed between two objects' boxes. 0 (default): boxes never touch, at least
    `gap` px of background between them, so every object is fully visible. With max_iou > 0 objects may
    overlap, but each keeps at least `min_visible` of its pixels visible."""
    if n_objects is None:
        n_objects = int(rng.integers(1, 7))
    if background is None:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    specs: list[dict] = []
    boxes: list[tuple[float, float, float, float]] = []
    masks: list[np.ndarray] = []
    for k in range(n_objects):
        color, shape = force_pairs[k] if k < len(force_pairs) else pairs[int(rng.integers(len(pairs)))]
        size_name = sizes[int(rng.integers(len(sizes)))]
        spots = rng.random((max_tries, 2))  # one draw per object: candidate centers as fractions
        for attempt in range(max_tries):
            if attempt and attempt % 10 == 0:  # crowded: try a smaller size
                smaller = [s for s in sizes if SIZES[s] < SIZES[size_name]]
                if smaller:
                    size_name = smaller[-1]
            extent = SIZES[size_name] * size
            lo, span = extent / 2 + 1, size - extent - 2
            # half-pixel grid: short JSON, and the same renders from the recorded centers
            cx = round((lo + spots[attempt, 0] * span) * 2) / 2
            cy = round((lo + spots[attempt, 1] * span) * 2) / 2
            if max_iou <= 0:  # the bound contains the drawn pixels: no drawing needed to keep objects apart
                box = shape_box_bound(shape, cx, cy, extent)
                if any(_box_conflict(box, b, 0.0, gap) for b in boxes):
                    continue
            else:
                mask, box = _shape_mask_bbox(shape, cx, cy, extent, size, size)
                if box is None or any(_box_conflict(box, b, max_iou, gap) for b in boxes):
                    continue
                covered, ok = mask.copy(), True
                for m in reversed(masks):  # from the top down: each is hidden by what lies above it
                    if (m & ~covered).sum() < min_visible * m.sum():
                        ok = False
                        break
                    covered |= m
                if not ok:
                    continue
                masks.append(mask)
            specs.append({"shape": shape, "color": color, "size": size_name, "center": (cx, cy), "extent": extent})
            boxes.append(box)
            break
    return compose_scene(specs, size, size, background, rng)
