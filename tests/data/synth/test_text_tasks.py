"""vlkit.data.synth.text_tasks: ocr, chart and doc; answers checked against each task's meta."""
import re

import numpy as np

from vlkit.data.synth import SynthConfig
from vlkit.grounding import box_text
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
