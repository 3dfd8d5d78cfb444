"""The text drawn is the text recorded: Tesseract reads large clean renders of OCR, document and chart
samples. Skipped only when the `tesseract` binary is absent (Debian: apt-get install tesseract-ocr)."""
import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from vlkit.data.synth import SynthConfig, make_sample
from vlkit.grounding import from_bins

TESSERACT = shutil.which("tesseract")
pytestmark = pytest.mark.skipif(TESSERACT is None,
                                reason="tesseract binary not installed (apt-get install tesseract-ocr)")

CLEAN = SynthConfig(size=256, clean_text=True)  # black on white, upright, DejaVu Sans Bold
LOOKALIKE = str.maketrans("COSVWXZ", "cosvwxz")  # same glyph in both cases: only size tells them apart


def same_text(read_text: str, truth: str) -> bool:
    return read_text == truth or read_text.translate(LOOKALIKE) == truth.translate(LOOKALIKE)


def read(img: Image.Image, psm: int, tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.png"
    img.save(path)
    out = subprocess.run([TESSERACT, str(path), "stdout", "--psm", str(psm)], capture_output=True, text=True,
                         timeout=60, env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def render(task, i):
    sample, files = make_sample(task, i, 0, CLEAN)
    return sample, Image.open(io.BytesIO(files[sample["images"][0]])).convert("RGB")


def test_ocr_text_is_what_is_recorded(tmp_path):
    jobs = []
    for i in range(24):
        sample, img = render("ocr", i)
        if sample["meta"]["category"] == "box":  # read only the region the question points at
            x1, y1, x2, y2 = from_bins(sample["meta"]["box"], *img.size)
            img = img.crop((max(0, x1 - 8), max(0, y1 - 8), min(img.width, x2 + 10), min(img.height, y2 + 10)))
        jobs.append((sample, img))
    assert {s["meta"]["category"] for s, _ in jobs} >= {"word", "number", "box", "line"}
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: read(j[1], 7, tmp_path, j[0]["id"]), jobs))
    for (sample, _), text in zip(jobs, got):
        assert same_text(text, sample["meta"]["answers"][0]), (sample["id"], text, sample["meta"]["answers"])


def test_document_lines_are_what_is_recorded(tmp_path):
    jobs = [render("doc", i) for i in range(8)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: read(j[1], 6, tmp_path, j[0]["id"]), jobs))
    lines_ok = total = 0
    for (sample, _), text in zip(jobs, got):
        read_lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        fields = sample["meta"]["fields"]
        assert len(read_lines) == len(fields), (fields, read_lines)
        for (key, value), line in zip(fields.items(), read_lines):
            assert line.split(":")[0] == key  # every key, in order
            lines_ok += same_text(line, f"{key}: {value}")
            total += 1
    assert lines_ok >= total - 1  # Tesseract may misread one bold digit pair ("88"); the rest is exact


def test_chart_labels_are_what_is_recorded(tmp_path):
    jobs = [render("chart", i) for i in range(8)]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: read(j[1], 11, tmp_path, j[0]["id"]), jobs))
    for (sample, _), text in zip(jobs, got):
        words = text.split()
        for label in sample["meta"]["labels"]:
            assert label in words, (sample["meta"]["labels"], words)


@pytest.mark.parametrize("aspect", ["wide", "tall"])
def test_wide_and_tall_documents_read_back(tmp_path, aspect):
    """Native-resolution documents (256 x 96, 96 x 256) carry the text their meta records."""
    cfg = SynthConfig(size=256, clean_text=True, aspect=aspect)
    jobs = []
    for i in range(6):
        sample, files = make_sample("doc", i, 0, cfg)
        jobs.append((sample, Image.open(io.BytesIO(files[sample["images"][0]])).convert("RGB")))
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: read(j[1], 6, tmp_path, j[0]["id"]), jobs))
    lines_ok = total = 0
    for (sample, _), text in zip(jobs, got):
        read_lines = {ln.strip() for ln in text.splitlines() if ln.strip()}
        for key, value in sample["meta"]["fields"].items():
            total += 1
            lines_ok += any(same_text(ln, f"{key}: {value}") for ln in read_lines)
    assert lines_ok >= 0.9 * total, (lines_ok, total)


def test_receipt_lines_read_back(tmp_path):
    cfg = SynthConfig(size=256, clean_text=True, aspect="tall")
    jobs = []
    for i in range(6):
        sample, files = make_sample("receipt", i, 0, cfg)
        jobs.append((sample, Image.open(io.BytesIO(files[sample["images"][0]])).convert("RGB")))
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda j: read(j[1], 6, tmp_path, j[0]["id"]), jobs))
    ok = total = 0
    for (sample, _), text in zip(jobs, got):
        lines = {ln.strip() for ln in text.splitlines() if ln.strip()}
        expect = [f"{k}: {v}" for k, v in sample["meta"]["items"].items()] + [f"Total: {sample['meta']['total']}"]
        total += len(expect)
        ok += sum(any(same_text(ln, e) for ln in lines) for e in expect)
    assert ok >= 0.9 * total, (ok, total)
