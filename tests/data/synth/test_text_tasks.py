"""vlkit.data.synth.text_tasks: ocr, chart, doc and receipt; answers checked against each task's meta, on square,
wide and tall canvases."""
import io
import re

import numpy as np
import pytest
from PIL import Image

from vlkit.data.synth import SynthConfig, make_sample
from vlkit.grounding import box_text, from_bins
from tests.data.synth.helpers import gpt, human, make


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


# -- wide and tall canvases (SynthConfig.aspect): sizes, determinism, ground truth in meta
TEXT_TASKS = ("ocr", "doc", "chart")
WIDE = SynthConfig(size=256, aspect="wide")
TALL = SynthConfig(size=256, aspect="tall")


def make_on(task, i, cfg, seed=0):
    sample, files = make_sample(task, i, seed, cfg)
    img = Image.open(io.BytesIO(files[sample["images"][0]]))
    img.load()
    return sample, files, img


@pytest.mark.parametrize("task", TEXT_TASKS)
@pytest.mark.parametrize("cfg,size", [(WIDE, (256, 96)), (TALL, (96, 256)),
                                      (SynthConfig(size=128, aspect="wide", aspect_ratio=2), (128, 64))])
def test_canvas_size_is_native(task, cfg, size):
    for i in range(4):
        sample, _, img = make_on(task, i, cfg)
        assert img.size == size
        assert (sample["meta"]["width"], sample["meta"]["height"]) == size


def test_square_default_has_no_canvas_meta():
    """The default stays today's square samples: no new meta keys, the same bytes as aspect="square"."""
    for task in TEXT_TASKS:
        a, fa = make_sample(task, 3, 0, SynthConfig(size=64))
        b, fb = make_sample(task, 3, 0, SynthConfig(size=64, aspect="square", aspect_ratio=4))
        assert a == b and fa == fb and "width" not in a["meta"]


def test_mixed_draws_every_shape_and_is_deterministic():
    cfg = SynthConfig(size=256, aspect="mixed")
    seen = set()
    for i in range(24):
        (s1, f1, img), (s2, f2, _) = make_on("doc", i, cfg), make_on("doc", i, cfg)
        assert s1 == s2 and f1 == f2  # same seed and index: the same bytes
        seen.add(img.size)
    assert seen == {(256, 256), (256, 96), (96, 256)}
    assert make_on("doc", 0, cfg, seed=1)[1] != make_on("doc", 0, cfg, seed=0)[1]


@pytest.mark.parametrize("cfg", [WIDE, TALL])
def test_answers_come_from_meta(cfg):
    for i in range(20):
        s, _, _ = make_on("doc", i, cfg)
        key = next(k for k in s["meta"]["fields"] if f" {k}?" in s["conversations"][0]["value"])
        assert s["conversations"][1]["value"] == s["meta"]["fields"][key] in s["meta"]["answers"]
        s, _, _ = make_on("chart", i, cfg)
        m = s["meta"]
        if m["category"] == "largest":
            assert s["conversations"][1]["value"] == m["labels"][int(np.argmax(m["values"]))]
        elif m["category"] == "count":
            assert s["conversations"][1]["value"] == str(len(m["labels"]))


@pytest.mark.parametrize("cfg", [WIDE, TALL])
def test_ocr_boxes_hold_the_ink(cfg):
    """The recorded box (bins of the non-square canvas) covers ink: pixels unlike the background."""
    for i in range(20):
        s, _, img = make_on("ocr", i, cfg)
        x1, y1, x2, y2 = from_bins(s["meta"]["box"], *img.size)
        assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height
        arr = np.asarray(img.convert("L"), dtype=np.int16)
        inside = arr[int(y1):int(y2), int(x1):int(x2)]
        assert np.abs(inside - np.median(arr)).max() > 60, s["id"]


@pytest.mark.parametrize("cfg", [TALL, SynthConfig()])
def test_receipt_answers_add_up(cfg):
    kinds = set()
    for i in range(30):
        s, _, img = make_on("receipt", i, cfg)
        m, q, a = s["meta"], s["conversations"][0]["value"], s["conversations"][1]["value"]
        kinds.add(m["category"])
        assert m["total"] == sum(m["items"].values()) and a in m["answers"]
        if m["category"] == "total":
            assert a == str(m["total"])
        elif m["category"] == "price":
            item = next(k for k in m["items"] if re.search(rf"\bthe {k}\b", q))
            assert a == str(m["items"][item])
        else:
            assert a == str(len(m["items"]))
        assert img.size == ((96, 256) if cfg is TALL else (64, 64))
    assert kinds == {"total", "price", "count"}
