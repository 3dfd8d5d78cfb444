"""Multi-image tasks (multi_count, change): two images, two <image> placeholders, answers checked on the pixels."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from vlkit.data.synth import DEFAULT_HELDOUT_PAIRS, SynthConfig, make_sample
from vlkit.data.synth.multi_tasks import CHANGES, CHOICES
from vlkit.data.synth.verify import color_labels, components
from vlkit.data.synth.world import COLOR_NAMES, COLORS

TRAIN, TEST = SynthConfig(split="train"), SynthConfig(split="test")


def make(task, i, cfg=TRAIN):
    sample, files = make_sample(task, i, 0, cfg)
    return sample, [Image.open(io.BytesIO(files[p])).convert("RGB") for p in sample["images"]]


@pytest.mark.parametrize("task", ["multi_count", "change"])
def test_two_images_two_placeholders(task):
    for i in range(10):
        sample, files = make_sample(task, i, 0, TRAIN)
        sid = sample["id"]
        assert sample["images"] == [f"images/{sid}-0.png", f"images/{sid}-1.png"] and set(files) == set(sample["images"])
        human, gpt = (t["value"] for t in sample["conversations"])
        assert human.startswith("<image>\n<image>\n") and human.count("<image>") == 2 and "<image>" not in gpt
        assert gpt in sample["meta"]["answers"] and sample["meta"]["question_type"] == sample["meta"]["category"]
        assert make_sample(task, i, 0, TRAIN) == (sample, files)  # deterministic for (seed, split, index)
        json.dumps(sample)


def _color_count(img, color):
    return len(components(color_labels(img) == COLOR_NAMES.index(color)))


def test_multi_count_answer_matches_the_pixels():
    kinds = set()
    for i in range(40):
        sample, imgs = make("multi_count", i)
        m = sample["meta"]
        kinds.add(m["question_type"])
        value = m["value"]
        assert value in sample["conversations"][0]["value"]
        counted = [sum(o[m["question_type"]] == value for o in objs) for objs in m["objects"]]
        assert counted == m["counts"] and m["counts"][0] != m["counts"][1]
        assert m["answers"][0] == CHOICES[int(m["counts"][1] > m["counts"][0])]
        if m["question_type"] == "color":  # objects never touch: one component per object of that color
            assert [_color_count(im, value) for im in imgs] == m["counts"]
    assert kinds == {"shape", "color"}


def test_change_differs_only_where_the_object_changed():
    seen = set()
    for i in range(60):
        sample, (a, b) = make("change", i)
        m = sample["meta"]
        kind, obj = m["change"], m["object"]
        seen.add(kind)
        name = f"{obj['color']} {obj['shape']}"
        assert name in m["answers"][0] and kind in CHANGES
        before, after = ({(o["color"], o["shape"]): o for o in objs} for objs in m["objects"])
        pair = (obj["color"], obj["shape"])
        diff = np.any(np.asarray(a) != np.asarray(b), axis=2)
        touched = np.zeros_like(diff)
        for objs in (before, after):
            for o in objs.values():
                if o["bbox"] != (before.get((o["color"], o["shape"])) or {}).get("bbox") or \
                        o["bbox"] != (after.get((o["color"], o["shape"])) or {}).get("bbox"):
                    x1, y1, x2, y2 = o["bbox"]
                    touched[y1:y2, x1:x2] = True
        assert diff.any() and not (diff & ~touched).any(), sample["id"]  # the background is the same pixels
        if kind == "added":
            assert pair in after and pair not in before and len(after) == len(before) + 1
        elif kind == "removed":
            assert pair in before and pair not in after and len(after) == len(before) - 1
        elif kind == "moved":
            assert before[pair]["bbox"] != after[pair]["bbox"] and set(before) == set(after)
        else:
            new = m["answers"][0].split()[-1]
            assert (new, obj["shape"]) in after and pair not in after and COLORS[new]
    assert seen == set(CHANGES)


@pytest.mark.parametrize("task", ["multi_count", "change"])
def test_heldout_pairs_stay_out_of_train_and_are_marked_in_test(task):
    held = set(DEFAULT_HELDOUT_PAIRS)
    shown = lambda s: {(o["color"], o["shape"]) for objs in s["meta"]["objects"] for o in objs}  # noqa: E731
    for i in range(60):
        sample, _ = make_sample(task, i, 0, TRAIN)
        assert not sample["meta"]["heldout"] and not (shown(sample) & held)
    marked = 0
    for i in range(120):
        sample, _ = make_sample(task, i, 0, TEST)
        assert sample["meta"]["heldout"] == bool(shown(sample) & held)
        marked += sample["meta"]["heldout"]
    assert marked > 0
