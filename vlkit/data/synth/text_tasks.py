"""Text tasks: OCR (words, numbers, lines, text in a box), bar charts, form-like documents and receipts, on a square canvas
or, with `SynthConfig.aspect`, a wide or tall one at native resolution (base.canvas)."""
from __future__ import annotations

import numpy as np

from vlkit.data.synth import text as T
from vlkit.config.synth import OCR_KINDS, SynthConfig
from vlkit.data.synth.base import Made, canvas, canvas_meta, follow_ups, pick
from vlkit.grounding import box_text, to_bins


def task_ocr(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    w, h = canvas(rng, cfg)
    if cfg.ocr_kinds == OCR_KINDS:
        r = rng.random()
        kind = "word" if r < 0.4 else ("number" if r < 0.7 else "box")
        if kind == "word" and w >= 128 and rng.random() < 0.4:
            kind = "line"
    else:
        kinds = [k for k in cfg.ocr_kinds if k != "line" or w >= 128] or ["word"]  # a line needs a wide canvas
        kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "box":
        n = 2 if h < 128 else int(rng.integers(2, 4))
        texts = []
        while len(texts) < n:
            t = T.random_word(rng, 5) if rng.random() < 0.6 else T.random_number(rng, 3)
            if t not in texts:  # the box, not the text, must tell them apart; keep them distinct anyway
                texts.append(t)
        img, boxes = T.render_texts(texts, (w, h), rng, clean=cfg.clean_text)
        k = int(rng.integers(n))
        bins = list(to_bins(boxes[k], w, h))
        question = pick(rng, ["Read the text inside {b}.", "What does the text in {b} say?",
                               "What is written in {b}?"]).format(b=box_text(bins))
        meta = {"answers": [texts[k]], "box": bins, **canvas_meta(cfg, w, h)}
        return Made(img, question, texts[k], meta, category="box",
                    texts=list(zip(texts, boxes)))
    if kind == "word":
        text = T.random_word(rng, 6)
    elif kind == "number":
        text = T.random_number(rng, 4)
    else:
        text = " ".join(T.random_word(rng, 5) for _ in range(int(rng.integers(2, 4))))
    img, boxes = T.render_texts([text], (w, h), rng, clean=cfg.clean_text)
    question = pick(rng, ["What does the text say?", "Read the text in the image.", "What is written in the image?",
                           "What word or number is shown?"])
    meta = {"answers": [text], "box": list(to_bins(boxes[0], w, h)), **canvas_meta(cfg, w, h)}
    return Made(img, question, text, meta, category=kind, texts=[(text, boxes[0])])


def _answers(a: str) -> list[str]:
    return [a] if a == a.lower() else [a, a.lower()]


def task_chart(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    w, h = canvas(rng, cfg)
    n = int(rng.integers(3, 6))
    labels = T.chart_labels(n, w, rng)
    vmax = 9 if w < 128 else 50
    values = [int(v) for v in rng.choice(np.arange(1, vmax + 1), size=n, replace=False)]  # distinct: one max
    img = T.render_bar_chart(labels, values, (w, h), rng, clean=cfg.clean_text)
    question, answer, about, kind = _chart_qa(rng, labels, values)
    meta = {"answers": _answers(answer), "labels": labels, "values": values, **canvas_meta(cfg, w, h)}
    more = follow_ups(rng, cfg, lambda: _chart_qa(rng, labels, values)[:3], about)
    return Made(img, question, answer, meta, category=kind, follow_ups=more)


def _chart_qa(rng: np.random.Generator, labels: list[str], values: list[int]) -> tuple[str, str, str, tuple]:
    """One question about a bar chart: (question, answer, what it asks about, kind)."""
    n = len(labels)
    kind = pick(rng, ["value", "value", "largest", "smallest", "count", "compare"])
    if kind == "value":
        k = int(rng.integers(n))
        q = pick(rng, ["What is the value of {l}?", "What value does bar {l} show?", "How high is bar {l}?"])
        question, answer, about = q.format(l=labels[k]), str(values[k]), (kind, k)
    elif kind in ("largest", "smallest"):
        k = int(np.argmax(values) if kind == "largest" else np.argmin(values))
        word = "largest" if kind == "largest" else "smallest"
        q = pick(rng, ["Which bar is the {w}?", "Which label has the {w} value?"])
        question, answer, about = q.format(w=word), labels[k], (kind,)
    elif kind == "count":
        question, answer = pick(rng, ["How many bars are there?", "How many bars does the chart have?"]), str(n)
        about = (kind,)
    else:
        i, j = (int(v) for v in rng.choice(n, size=2, replace=False))
        question = f"Is {labels[i]} larger than {labels[j]}?"
        answer, about = "yes" if values[i] > values[j] else "no", (kind, min(i, j), max(i, j))
    return question, answer, about, kind


def task_doc(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    w, h = canvas(rng, cfg)
    n = int(rng.integers(2, 4)) if h < 128 else int(rng.integers(3, 6))
    keys = [str(k) for k in rng.choice(list(T.DOC_FIELDS), size=n, replace=False)]
    pairs = [(k, T.doc_value(k, rng)) for k in keys]
    img = T.render_document(pairs, (w, h), rng, clean=cfg.clean_text)
    question, value, key = _doc_qa(rng, pairs)
    meta = {"answers": _answers(value), "fields": {k: v for k, v in pairs}, **canvas_meta(cfg, w, h)}
    more = follow_ups(rng, cfg, lambda: _doc_qa(rng, pairs), key)
    return Made(img, question, value, meta, category=key.lower(), follow_ups=more)


def _doc_qa(rng: np.random.Generator, pairs: list[tuple[str, str]]) -> tuple[str, str, str]:
    """One question about a form's fields: (question, value, field)."""
    key, value = pairs[int(rng.integers(len(pairs)))]
    question = pick(rng, ["What is the {k}?", "What is the value of {k}?", "What does the form say for {k}?"]
                     ).format(k=key)
    return question, value, key



def task_receipt(rng: np.random.Generator, cfg: SynthConfig) -> Made:
    """A receipt: one `item: price` line per item and a `Total:` line that is their sum (tall canvases suit it)."""
    w, h = canvas(rng, cfg)
    n = int(rng.integers(2, 4)) if h < 128 else int(rng.integers(3, 6))
    pool = [t for t in T.WORDS if len(t) <= 5]
    items = [pool[int(k)] for k in rng.choice(len(pool), size=n, replace=False)]
    prices = [int(p) for p in rng.integers(1, 20, size=n)]
    total = sum(prices)
    img = T.render_document(list(zip(items, map(str, prices))) + [("Total", str(total))], (w, h), rng,
                            clean=cfg.clean_text)
    kind = pick(rng, ["total", "price", "price", "count"])
    if kind == "total":
        question, answer = pick(rng, ["What is the total?", "What is the total on the receipt?"]), str(total)
    elif kind == "price":
        k = int(rng.integers(n))
        question, answer = pick(rng, ["How much is the {i}?", "What does the {i} cost?"]).format(i=items[k]), \
            str(prices[k])
    else:
        question, answer = pick(rng, ["How many items are on the receipt?", "How many items were bought?"]), str(n)
    meta = {"answers": [answer], "items": dict(zip(items, prices)), "total": total, **canvas_meta(cfg, w, h)}
    return Made(img, question, answer, meta, category=kind)
