"""Task generators: the sample format, each task's meta, and answers checked against the pixels."""
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from vlkit.data.synth import (COLORS, DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES, DEFAULT_TASKS, SEG_CLASSES,
                              SHAPES, VQA_TYPES, SynthConfig, make_sample)
from vlkit.data.synth.verify import color_labels, components
from vlkit.data.synth.world import COLOR_NAMES
from vlkit.grounding import box_text, from_bins, iou, parse_boxes, ref_box_text, to_bins

TRAIN = SynthConfig(split="train")
TEST = SynthConfig(split="test")


def make(task, i, cfg=TRAIN, seed=0):
    sample, files = make_sample(task, i, seed, cfg)
    img = Image.open(io.BytesIO(files[sample["images"][0]]))
    img.load()
    return sample, files, img


def human(sample):
    return sample["conversations"][0]["value"]


def gpt(sample):
    return sample["conversations"][1]["value"]


@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_sample_format(task):
    for i in range(15):
        sample, files, img = make(task, i)
        assert set(sample) == {"id", "images", "conversations", "task", "meta"}
        assert sample["task"] == task and sample["id"] == f"{task}-train-0-{i:06d}"
        assert sample["images"] == [f"images/{sample['id']}.png"] and sample["images"][0] in files
        assert [t["from"] for t in sample["conversations"]] == ["human", "gpt"]
        text = " ".join(t["value"] for t in sample["conversations"])
        assert text.count("<image>") == 1
        if task == "generation":
            assert gpt(sample) == "<image>" and human(sample).startswith("Draw: ")
        else:
            assert human(sample).startswith("<image>\n")
        assert isinstance(sample["meta"]["heldout"], bool) and isinstance(sample["meta"]["category"], str)
        assert img.size == (64, 64) and img.mode == "RGB"
        json.dumps(sample)  # JSON-able


def test_vqa_answers_match_the_scene():
    seen_types = set()
    for i in range(300):
        sample, _, img = make("vqa", i)
        m = sample["meta"]
        qt = m["question_type"]
        seen_types.add(qt)
        assert qt in VQA_TYPES and m["category"] == qt
        assert m["answers"] == [gpt(sample)] * 10
        a = gpt(sample)
        assert re.fullmatch(r"[a-z0-9]+", a), a  # one lower-case word or number
        q = human(sample)
        objs = m["objects"]
        labels = color_labels(img)
        if qt == "count":
            # count by looking at the image: separate colored regions (objects never touch)
            color = next((c for c in COLORS if f" {c} " in q), None)
            shape = next((s for s in SHAPES if f"{s}s" in q), None)
            if color:
                assert int(a) == len(components(labels == COLOR_NAMES.index(color)))
            elif shape:
                assert int(a) == sum(o["shape"] == shape for o in objs)
            else:
                assert int(a) == len(components(labels >= 0)) == len(objs)
        elif qt == "color":
            s = next(s for s in SHAPES if f"the {s}" in q)
            (o,) = [o for o in objs if o["shape"] == s]
            assert a == o["color"]
            x1, y1, x2, y2 = o["bbox"]  # the named color is what the image shows inside the box
            assert (labels[y1:y2, x1:x2] == COLOR_NAMES.index(a)).sum() > 0.3 * (x2 - x1) * (y2 - y1)
        elif qt == "shape":
            c = next(c for c in COLORS if f" {c} " in q or f"is {c}?" in q)
            (o,) = [o for o in objs if o["color"] == c]
            assert a == o["shape"]
        elif qt == "exists":
            c, s = re.search(r"an? (\w+) (\w+)", q).groups()
            assert a == ("yes" if any(o["color"] == c and o["shape"] == s for o in objs) else "no")
        elif qt in ("position", "relation", "attribute"):
            names = re.findall(rf"the ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", q)
            found = [[o for o in objs if (o["color"], o["shape"]) == n] for n in names]
            assert all(len(f) == 1 for f in found), "asked only about uniquely named objects"
            cx = lambda o: (o["bbox"][0] + o["bbox"][2]) / 2  # noqa: E731
            cy = lambda o: (o["bbox"][1] + o["bbox"][3]) / 2  # noqa: E731
            if qt == "attribute":
                assert a == found[0][0]["size"]
            elif qt == "position":
                o = found[0][0]
                assert a == {"left": "left" if cx(o) < 32 else "right", "right": "left" if cx(o) < 32 else "right",
                             "top": "top" if cy(o) < 32 else "bottom", "bottom": "top" if cy(o) < 32 else "bottom"}[a]
            else:
                oa, ob = found[0][0], found[1][0]
                rel = re.search(r"the \w+ \w+ (.+) the \w+ \w+\?", q).group(1)
                truth = {"to the left of": cx(oa) < cx(ob), "left of": cx(oa) < cx(ob),
                         "to the right of": cx(oa) > cx(ob), "right of": cx(oa) > cx(ob),
                         "above": cy(oa) < cy(ob), "over": cy(oa) < cy(ob),
                         "below": cy(oa) > cy(ob), "under": cy(oa) > cy(ob)}[rel]
                assert a == ("yes" if truth else "no")
    assert seen_types == set(VQA_TYPES)
    # yes/no questions are balanced
    answers = [gpt(make("vqa", i)[0]) for i in range(300)]
    assert 0.3 < answers.count("yes") / max(1, answers.count("yes") + answers.count("no")) < 0.7


def test_grounding_and_reg():
    for i in range(80):
        sample, _, img = make("grounding", i)
        m = sample["meta"]
        box = m["boxes"][0]
        assert gpt(sample) == ref_box_text(m["phrase"], box)
        assert m["phrase"] in human(sample)
        color, shape = m["phrase"].split()[1:]
        matching = [o for o in m["objects"] if o["color"] == color and o["shape"] == shape]
        assert len(matching) == 1  # uniquely identifiable
        assert box == list(to_bins(matching[0]["bbox"], 64, 64))
        # the box encloses exactly that object's pixels, found from the image
        x1, y1, x2, y2 = matching[0]["bbox"]
        region = [r for r in components(color_labels(img) == COLOR_NAMES.index(color)) if r[y1:y2, x1:x2].any()]
        ys, xs = np.nonzero(region[0])
        assert iou(from_bins(box, 64, 64), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)) >= 0.9
        parsed = parse_boxes(gpt(sample))
        assert parsed[0].box == tuple(box) and parsed[0].phrase == m["phrase"]
    for i in range(40):
        sample, _, img = make("reg", i)
        m = sample["meta"]
        assert box_text(m["box"]) in human(sample)
        assert gpt(sample) == m["answers"][0]
        (o,) = [o for o in m["objects"] if o["box"] == m["box"]]
        assert m["answers"][1] == f"the {o['color']} {o['shape']}"


def test_caption_mentions_every_object():
    for i in range(60):
        sample, _, _ = make("caption", i)
        m = sample["meta"]
        assert gpt(sample) in m["captions"] and len(m["captions"]) >= 4
        for cap in m["captions"][:3]:
            for o in m["objects"]:
                assert f"{o['color']} {o['shape']}" in cap


def test_segmentation_mask():
    for i in range(40):
        sample, files, img = make("segmentation", i)
        m = sample["meta"]
        assert m["classes"] == SEG_CLASSES and m["mask"] == f"masks/{sample['id']}.png"
        mask = np.asarray(Image.open(io.BytesIO(files[m["mask"]])))
        assert mask.dtype == np.uint8 and mask.shape == (64, 64) and mask.max() < len(SEG_CLASSES)
        labels = color_labels(img)
        assert ((mask > 0) == (labels >= 0)).all()  # the mask covers exactly the objects' pixels
        for o in m["objects"]:
            x1, y1, x2, y2 = o["bbox"]
            inside = mask[y1:y2, x1:x2]
            assert (inside == SEG_CLASSES.index(o["shape"])).any()
        present = sorted({SEG_CLASSES[k] for k in np.unique(mask) if k}, key=SEG_CLASSES.index)
        assert gpt(sample) == ", ".join(present)


def test_generation_scenes_match_prompt():
    for i in range(60):
        sample, _, img = make("generation", i)
        m = sample["meta"]
        assert human(sample) == f"Draw: {m['prompt']}"
        assert 1 <= len(m["objects"]) <= 2
        arr = np.asarray(img)
        assert set(map(tuple, arr.reshape(-1, 3))) <= {(0, 0, 0)} | {COLORS[o["color"]] for o in m["objects"]}
        for o in m["objects"]:
            assert f"{o['color']} {o['shape']}" in m["prompt"]
            x1, y1, x2, y2 = o["box"]
            assert (x2 - x1) > 200 and (y2 - y1) > 200  # large objects
        if m["relation"]:
            a, b = m["objects"]
            ca = ((a["box"][0] + a["box"][2]) / 2, (a["box"][1] + a["box"][3]) / 2)
            cb = ((b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2)
            assert {"left of": ca[0] < cb[0], "right of": ca[0] > cb[0], "above": ca[1] < cb[1],
                    "below": ca[1] > cb[1]}[m["relation"]]
            assert m["category"] == m["relation"]


def test_chart_and_doc_answers():
    for i in range(60):
        sample, _, _ = make("chart", i)
        m = sample["meta"]
        q, a = human(sample), gpt(sample)
        assert a in m["answers"] and len(set(m["values"])) == len(m["values"])
        if m["category"] == "value":
            label = next(lab for lab in m["labels"] if re.search(rf"\b{re.escape(lab)}\b", q))
            assert a == str(m["values"][m["labels"].index(label)])
        elif m["category"] == "largest":
            assert a == m["labels"][int(np.argmax(m["values"]))]
        elif m["category"] == "count":
            assert a == str(len(m["labels"]))
    for i in range(30):
        sample, _, _ = make("doc", i)
        m = sample["meta"]
        key = next(k for k in m["fields"] if k in human(sample))
        assert gpt(sample) == m["fields"][key] and gpt(sample) in m["answers"]


def _mentions(sample, pairs):
    """Does the sample show or name one of the (color, shape) pairs?"""
    text = " ".join(t["value"] for t in sample["conversations"]) + " " + json.dumps(sample["meta"])
    shown = {(o.get("color"), o.get("shape")) for o in sample["meta"].get("objects", [])}
    return any(f"{c} {s}" in text for c, s in pairs) or bool(shown & set(pairs))


def test_heldout_compositions_stay_out_of_train():
    pairs = set(DEFAULT_HELDOUT_PAIRS)
    for task in DEFAULT_TASKS:  # multi-image and video tasks: their own test files
        for i in range(120 if task in ("vqa", "generation", "caption") else 40):
            sample, _, img = make(task, i, TRAIN)
            assert not sample["meta"]["heldout"]
            assert not _mentions(sample, pairs), sample
            text = " ".join(t["value"] for t in sample["conversations"]) + sample["meta"].get("prompt", "")
            for phrase in DEFAULT_HELDOUT_PHRASES:  # short forms never appear without "to the"
                assert not re.search(rf"(?<!to the ){phrase}", text), text


def test_heldout_marked_in_test_split():
    pairs = set(DEFAULT_HELDOUT_PAIRS)
    n_held = 0
    for task in ("vqa", "generation", "grounding", "segmentation"):
        for i in range(80):
            sample, _, _ = make(task, i, TEST)
            held = sample["meta"]["heldout"]
            shows = any((o["color"], o["shape"]) in pairs for o in sample["meta"].get("objects", []))
            if shows:
                assert held
            n_held += held
            if not held:
                assert not _mentions(sample, pairs)
    assert n_held > 40  # the test split has enough held-out samples for a breakdown


def test_heldout_none_allows_everything():
    cfg = SynthConfig(split="train", heldout_pairs=(), heldout_phrases=())
    seen = set()
    for i in range(300):
        sample, _, _ = make("generation", i, cfg)
        assert not sample["meta"]["heldout"]
        seen |= {(o["color"], o["shape"]) for o in sample["meta"]["objects"]}
    assert seen & set(DEFAULT_HELDOUT_PAIRS)


def test_text_tasks_fit_and_vary():
    sizes = set()
    for i in range(60):
        sample, _, img = make("ocr", i)
        text = gpt(sample)
        assert text == sample["meta"]["answers"][0] and 1 <= len(text) <= 6  # short at 64 x 64
        if sample["meta"]["category"] == "box":
            assert box_text(sample["meta"]["box"]) in human(sample)
        sizes.add(sample["meta"]["box"][2] - sample["meta"]["box"][0])
    assert len(sizes) > 5
    big = [make("ocr", i, SynthConfig(size=256))[0] for i in range(40)]
    assert any(" " in gpt(s) for s in big)  # short lines at larger sizes


def test_builtin_font_fallback(monkeypatch):
    """Without DejaVu, Pillow's built-in TrueType font renders the same tasks."""
    from vlkit.data.synth import text as T

    monkeypatch.setattr(T, "_FONTS", [None])
    for task in ("ocr", "chart", "doc"):
        for i in range(5):
            sample, _, img = make(task, i)
            assert np.asarray(img).std() > 10  # something was drawn
