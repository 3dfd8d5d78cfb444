"""check_generation: says correct on the generator's own renders (also slightly blurred), not correct on
renders with a wrong shape, a wrong color, swapped positions or nothing at all."""
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vlkit.data.synth import SHAPES, SynthConfig, compose_scene, make_sample
from vlkit.data.synth.verify import check_generation, classify_shape
from vlkit.data.synth.world import COLOR_NAMES, shape_mask

CFG = SynthConfig(split="test", heldout_pairs=(), heldout_phrases=())
N = 40


def generation_samples():
    out = []
    for i in range(N):
        sample, files = make_sample("generation", i, 0, CFG)
        out.append((sample["meta"], Image.open(io.BytesIO(files[sample["images"][0]])).convert("RGB")))
    return out


SAMPLES = generation_samples()


def rerender(meta, change):
    """The sample's scene drawn again with `change(k, spec)` applied to each object spec."""
    specs = []
    for k, o in enumerate(meta["objects"]):
        x1, y1, x2, y2 = (v * 64 / 1000 for v in o["box"])
        spec = {"shape": o["shape"], "color": o["color"], "size": "large", "center": ((x1 + x2) / 2, (y1 + y2) / 2)}
        specs.append(change(k, spec) or spec)
    return compose_scene(specs, 64, 64, "plain", tone=(0, 0, 0)).image


def test_correct_on_clean_renders():
    for meta, img in SAMPLES:
        assert check_generation(img, meta["objects"], meta["relation"]) == {
            "correct": True, "color": True, "shape": True, "position": True}, meta["prompt"]


@pytest.mark.parametrize("blur", [ImageFilter.GaussianBlur(0.6), ImageFilter.BoxBlur(0.5)])
def test_correct_on_slightly_blurred_renders(blur):
    for meta, img in SAMPLES:
        assert check_generation(img.filter(blur), meta["objects"], meta["relation"])["correct"], meta["prompt"]


def test_larger_images_are_analysed_too():
    for meta, img in SAMPLES[:10]:
        big = img.resize((256, 256), Image.NEAREST)
        assert check_generation(big, meta["objects"], meta["relation"])["correct"]


def test_wrong_shape():
    for meta, _ in SAMPLES:
        def wrong(k, s):
            return {**s, "shape": SHAPES[(SHAPES.index(s["shape"]) + 1) % len(SHAPES)]} if k == 0 else None

        verdict = check_generation(rerender(meta, wrong), meta["objects"], meta["relation"])
        assert not verdict["correct"] and not verdict["shape"] and verdict["color"], meta["prompt"]


def test_wrong_color():
    for meta, _ in SAMPLES:
        used = {o["color"] for o in meta["objects"]}
        other = next(c for c in COLOR_NAMES if c not in used)
        verdict = check_generation(rerender(meta, lambda k, s: {**s, "color": other} if k == 0 else None),
                                   meta["objects"], meta["relation"])
        assert not verdict["correct"] and not verdict["color"], meta["prompt"]


def test_swapped_positions():
    n = 0
    for meta, _ in SAMPLES:
        if not meta["relation"]:
            continue
        objs = meta["objects"]
        centers = [((o["box"][0] + o["box"][2]) / 2 * 0.064, (o["box"][1] + o["box"][3]) / 2 * 0.064) for o in objs]
        swapped = rerender(meta, lambda k, s: {**s, "center": centers[1 - k]})
        verdict = check_generation(swapped, objs, meta["relation"])
        assert not verdict["correct"] and not verdict["position"] and verdict["shape"], meta["prompt"]
        n += 1
    assert n >= 10


def test_empty_and_noise_images():
    meta, _ = SAMPLES[0]
    black = Image.new("RGB", (64, 64))
    assert check_generation(black, meta["objects"], meta["relation"]) == {
        "correct": False, "color": False, "shape": False, "position": False}
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert not check_generation(noise, meta["objects"], meta["relation"])["correct"]


def test_every_shape_classified_at_every_size():
    for shape in SHAPES:
        for extent in (10, 15, 20, 40):
            for cx in (32, 32.5, 31.25):
                assert classify_shape(shape_mask(shape, cx, 31.5, extent, 64, 64))[0] == shape, (shape, extent, cx)


def test_bad_arguments():
    meta, img = SAMPLES[0]
    with pytest.raises(ValueError, match="unknown color"):
        check_generation(img, [{"shape": "circle", "color": "mauve"}])
    with pytest.raises(ValueError, match="needs two objects"):
        check_generation(img, [{"shape": "circle", "color": "red"}], "above")
