"""Scenes: the recorded ground truth agrees with the pixels, checked without the generator's own masks."""
import numpy as np
import pytest

from vlkit.data.synth import COLORS, SEG_CLASSES, SHAPES, SIZES, compose_scene, sample_scene
from vlkit.data.synth.verify import COLOR_TOLERANCE, color_labels, components
from vlkit.data.synth.world import BACKGROUNDS, shape_box_bound
from vlkit.grounding import iou

SEEDS = range(60)


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_palette_and_classes():
    assert len(SHAPES) >= 6 and len(COLORS) >= 8 and len(SIZES) >= 2
    assert SEG_CLASSES == ["background"] + SHAPES
    rgb = np.array(list(COLORS.values()), dtype=float)
    d = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1)) + np.eye(len(rgb)) * 1e9
    assert d.min() >= 100  # well separated: a nearest-color rule with tolerance 90 is unambiguous
    assert COLOR_TOLERANCE < d.min()


@pytest.mark.parametrize("size", [64, 160])
def test_boxes_tight_and_colors_exact(size):
    """Each object's pixels (found from the image's colors alone) have the recorded box and color."""
    for seed in SEEDS:
        scene = sample_scene(np.random.default_rng(seed), size)
        pixels = scene.pixels
        assert 1 <= len(scene.objects) <= 6
        for obj in scene.objects:
            # the pixels inside the recorded box that carry exactly the named color
            x1, y1, x2, y2 = obj.bbox
            exact = np.all(pixels == np.array(COLORS[obj.color], dtype=np.uint8), axis=-1)
            assert exact[obj.mask].all(), "every mask pixel is painted in the named color"
            region = [r for r in components(exact) if r[obj.mask].any()]
            assert len(region) == 1  # objects never touch: the object is one connected region
            assert iou(box_of(region[0]), obj.bbox) >= 0.95
            assert tuple(box_of(region[0])) == tuple(obj.bbox)
            assert region[0].sum() == obj.mask.sum()


def test_count_equals_connected_regions():
    """The number of objects equals the number of separate colored regions in the image."""
    for seed in SEEDS:
        scene = sample_scene(np.random.default_rng(seed), 64)
        fg = color_labels(scene.image) >= 0
        assert len(components(fg)) == len(scene.objects)


def test_backgrounds_never_look_like_objects():
    rng = np.random.default_rng(0)
    for kind in BACKGROUNDS:
        for _ in range(10):
            scene = sample_scene(rng, 64, n_objects=0, background=kind)
            assert (color_labels(scene.image) == -1).all(), kind


def test_drawn_pixels_inside_bound():
    """shape_box_bound (used to place objects without drawing them) contains every drawn pixel."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        extent = float(rng.uniform(6, 60))
        cx, cy = (round(float(v) * 2) / 2 for v in rng.uniform(40, 88, size=2))
        scene = compose_scene([{"shape": shape, "color": "red", "size": "small", "center": (cx, cy),
                                "extent": extent}], 128, 128)
        b = scene.objects[0].bbox
        bound = shape_box_bound(shape, cx, cy, extent)
        assert bound[0] <= b[0] and bound[1] <= b[1] and b[2] <= bound[2] and b[3] <= bound[3]


def test_occlusion_visible_masks():
    """With overlap allowed, visible masks are disjoint, cover exactly the colored pixels, and each object
    keeps at least min_visible of its pixels."""
    seen_overlap = False
    for seed in SEEDS:
        scene = sample_scene(np.random.default_rng(seed), 64, n_objects=6, max_iou=0.4, min_visible=0.6)
        masks = [o.mask for o in scene.objects]
        total = np.sum(masks, axis=0)
        assert total.max() <= 1
        assert ((color_labels(scene.image) >= 0) == (total == 1)).all()
        for o in scene.objects:
            assert o.bbox == tuple(box_of(o.mask))
            full = compose_scene([{"shape": o.shape, "color": o.color, "size": o.size, "center": o.center,
                                   "extent": o.extent}], 64, 64).objects[0].mask
            assert (o.mask <= full).all()
            assert o.mask.sum() >= 0.6 * full.sum() - 1e-9
            seen_overlap |= o.mask.sum() < full.sum()
        cm = scene.class_mask()
        for o in scene.objects:
            assert (cm[o.mask] == SEG_CLASSES.index(o.shape)).all()
        assert (cm[total == 0] == 0).all()
    assert seen_overlap  # the test did exercise occlusion


def test_sizes_are_distinct():
    """Nominal size classes give clearly different drawn extents."""
    spans = {}
    for name in SIZES:
        scene = compose_scene([{"shape": "square", "color": "red", "size": name, "center": (32, 32)}], 64, 64)
        b = scene.objects[0].bbox
        spans[name] = b[2] - b[0]
    assert spans["small"] + 3 < spans["medium"] and spans["medium"] + 3 < spans["large"]


def test_large_images():
    scene = sample_scene(np.random.default_rng(0), 512, n_objects=4)
    assert scene.pixels.shape == (512, 512, 3)
    for o in scene.objects:
        assert o.bbox[2] - o.bbox[0] >= 0.1 * 512
