"""The point of native resolution, measured: wide documents and receipts read after training with today's square
resize (arm `square`) or at native resolution (arm `native`: `vision.position: rope2d` + the processor's
smart_resize), at the SAME number of image tokens per image and the same training compute (steps x batch).

Data: the synthetic world's OCR lines and documents on a wide canvas (`aspect: wide`; `--size 256
--aspect-ratio 4` gives 256 x 64 images). The native arm keeps them at 256 x 64: a 16 x 4 grid of LM tokens
(patch 8, 2 x 2 merge) = 64 tokens. The square arm resizes them to the square whose grid has as many tokens:
128 x 128 -> 8 x 8 = 64. (The canvas must allow this: 8/3, for example, gives no square grid with the native
count, and the script says so.) Both arms: the quickstart's model (conv stem, 2x2 merge, 4 x 128 LM; arms.py), one
tokenizer, the same seed, steps, batch and learning rate, trained from scratch in process by vlkit's trainer.
Evaluation: OCR exact match (and CER, lower is better) and doc ANLS on held-out test-split samples (vlkit's eval
runner and metrics), each with its 95% bootstrap CI, and native - square with a paired 95% bootstrap CI. Prints
JSON.

    python benchmarks/native_resolution.py --out /tmp/native_res [--steps 3000 --batch 32 --n-test 500]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from arms import evaluate, paired, per_sample, quickstart_model, rounded, shared_tokenizer, train_arm

FACTOR = 16  # the tiny preset's patch size (8) x the spatial_merge connector's merge_size (2)
METRICS = [("ocr", "exact_match"), ("ocr", "cer"), ("doc", "anls")]  # CER: lower is better
TASKS = sorted({t for t, _ in METRICS})


def canvas(size: int, aspect_ratio: float) -> tuple[int, int]:
    """(height, width) of the synthetic world's wide canvas (vlkit.config.synth.SynthConfig.short_side)."""
    return round(size / aspect_ratio), size


def arm_models(size: int, aspect_ratio: float) -> tuple[dict, dict, int]:
    """The two arms' `model:` recipe sections and their common image-token count."""
    from vlkit.images import smart_resize

    h, w = canvas(size, aspect_ratio)
    nh, nw = smart_resize(h, w, FACTOR, FACTOR * FACTOR, h * w)  # native: the image's own size, rounded
    tokens = (nh // FACTOR) * (nw // FACTOR)
    side = math.isqrt(tokens)
    if side * side != tokens:
        sys.exit(f"native_resolution: a {w} x {h} canvas gives a {nw // FACTOR} x {nh // FACTOR} token grid "
                 f"({tokens} tokens), which no square grid matches; pick --size/--aspect-ratio so that it does "
                 f"(e.g. 256 and 4)")
    base = quickstart_model()
    square = {**base, "vision": {**base["vision"], "image_size": side * FACTOR}}
    native = {**base, "vision": {**base["vision"], "position": "rope2d", "processor": {
        "min_pixels": FACTOR * FACTOR, "max_pixels": nh * nw, "merge_size": 2}}}
    return square, native, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/native_resolution")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--aspect-ratio", type=float, default=4.0)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ocr-kinds", default="word,number,line,box",
                    help="what the OCR samples show (synth ocr_kinds), e.g. number: digits only")
    a = ap.parse_args()
    out = Path(a.out)
    from vlkit.data.synth import generate_dataset
    from vlkit.data.synth.stream import synth_stream

    kinds = a.ocr_kinds.split(",")
    synth = {"tasks": TASKS, "size": a.size, "aspect": "wide", "aspect_ratio": a.aspect_ratio, "ocr_kinds": kinds}
    square, native, tokens = arm_models(a.size, a.aspect_ratio)
    tok = shared_tokenizer(synth_stream(synth, a.seed), out / "tokenizer.json")
    test = out / "test"
    if not (test / "data.jsonl").exists():
        generate_dataset(test, n=a.n_test, tasks=TASKS, split="test", seed=a.seed + 1, size=a.size,
                         aspect="wide", aspect_ratio=a.aspect_ratio, ocr_kinds=kinds, progress=False)
    h, w = canvas(a.size, a.aspect_ratio)
    result = {"steps": a.steps, "batch": a.batch, "lr": a.lr, "canvas": [w, h], "image_tokens": tokens,
              "n_test": a.n_test, "seed": a.seed, "ocr_kinds": kinds, "arms": {}}
    scores = {}
    for name, model in (("square", square), ("native", native)):
        final, info = train_arm(model, {"train": [{"synth": synth}], "max_length": a.max_length}, tok, out / name,
                                a.steps, a.batch, a.lr, a.seed)
        from vlkit.pipeline import load

        pipe = load(final)
        size = (h, w) if name == "native" else (square["vision"]["image_size"],) * 2
        assert pipe.model.tokens_per_image(*size) == tokens, "the arms must give the same number of image tokens"
        evaluate(final, test, TASKS, out / name / "eval")
        scores[name] = {(t, m): per_sample(out / name / "eval", t, m) for t, m in METRICS}
        result["arms"][name] = {**info, **{f"{t}_{m}": _summary(scores[name][t, m]) for t, m in METRICS}}
        print(json.dumps({name: result["arms"][name]}), file=sys.stderr)
    result["native_minus_square"] = {f"{t}_{m}": _difference(paired(scores["native"][t, m], scores["square"][t, m]))
                                     for t, m in METRICS}
    print(json.dumps(result, indent=2))


def _summary(values: dict) -> dict:
    from vlkit.eval.metrics import summarize

    s = summarize(values.values())
    return {"value": rounded(s["value"]), "ci95": rounded(s["ci95"]), "n": s["n"]}


def _difference(p: dict) -> dict:
    return {"value": p["difference"], "ci95": p["ci95"], "n": p["n"]}


if __name__ == "__main__":
    main()
