"""Training throughput of packed variable-size image batches against padding every image to the largest image of
its batch: same samples, same batches, same model (same initial weights), same number of steps.

Model: the tiny preset with native resolution (`vision.position: rope2d`, the processor's smart_resize, the
spatial_merge connector). Data: the synthetic world's text images at mixed aspects (square, wide, tall; one per
sample) plus square scenes. Arm `packed`: each image at its own native size, all patches of a batch encoded as
one packed sequence (block-diagonal attention, no padding). Arm `padded`: each image padded (bottom/right, black)
to the largest height and width among its batch's images, so it gives that size's image tokens as well.

Training steps (forward, backward, AdamW) run in timed windows of `--steps` steps, the two arms alternating
window by window so that a shared machine's load drift hits both alike. Prints JSON: samples/s of each arm with a
95% bootstrap CI over the windows, the packed/padded ratio with a paired bootstrap CI (vlkit.eval.metrics), the
number of samples timed, and what each arm computes per sample (vision patches, LM tokens).

    python benchmarks/packed_throughput.py [--windows 10 --steps 5 --batch 16 --size 128 --device auto]
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from vlkit.chat import ChatProcessor
from vlkit.config import ImageProcessorConfig, TextConfig, VisionConfig, tiny_model_config
from vlkit.data.collate import Collator, encode_samples
from vlkit.data.sources import corpus_text
from vlkit.data.synth.stream import synth_stream
from vlkit.eval.metrics import bootstrap_ci, summarize
from vlkit.images import ImageProcessor
from vlkit.models.vlm import VisionLanguageModel
from vlkit.tokenizer import Tokenizer

TASKS = {"ocr": 2, "doc": 1, "chart": 1, "vqa": 1}


class PaddedProcessor:
    """The native processor's pixels, padded (bottom/right, black) to height x width: the padding baseline."""

    def __init__(self, native: ImageProcessor, height: int, width: int):
        self.native, self.height, self.width = native, height, width

    def pixels(self, img) -> torch.Tensor:
        x = self.native.pixels(img)
        out = torch.zeros(3, self.height, self.width, dtype=torch.uint8)
        out[:, :x.shape[1], :x.shape[2]] = x
        return out


def build(args, tok: Tokenizer) -> tuple[VisionLanguageModel, ImageProcessor]:
    torch.manual_seed(args.seed)
    factor = 8 * 2  # patch_size x merge_size
    vision = VisionConfig(position="rope2d", processor=ImageProcessorConfig(
        min_pixels=factor * factor, max_pixels=args.size * args.size, merge_size=2))
    cfg = tiny_model_config("spatial_merge", vision=vision, text=TextConfig(vocab_size=len(tok)))
    cfg.image_token_id = tok.image_pad_id
    model = VisionLanguageModel(cfg)
    return model, ImageProcessor.from_vision(cfg.vision)


def arm_batches(args, model, native, proc, samples) -> dict:
    """{arm: [examples of each batch]}: the same samples, batch by batch, natively sized or padded."""
    out = {"packed": [], "padded": []}
    for k in range(0, len(samples), args.batch):
        chunk = samples[k:k + args.batch]
        packed = encode_samples(chunk, proc, 0, model.tokens_per_image, args.max_length, strict=True,
                                image_processor=native)
        h = max(int(im.shape[1]) for ex in packed for im in ex.images)
        w = max(int(im.shape[2]) for ex in packed for im in ex.images)
        padded = encode_samples(chunk, proc, 0, model.tokens_per_image, args.max_length, strict=True,
                                image_processor=PaddedProcessor(native, h, w))
        out["packed"].append(packed)
        out["padded"].append(padded)
    return out


def per_sample_cost(batches: list) -> dict:
    exs = [ex for b in batches for ex in b]
    patches = sum(int(im.shape[1] * im.shape[2]) // 64 for ex in exs for im in ex.images)
    return {"vision_patches": round(patches / len(exs), 1), "lm_tokens": round(sum(map(len, exs)) / len(exs), 1)}


def run_window(model, opt, collate, batches, start: int, steps: int, device, autocast) -> tuple[float, int]:
    """`steps` training steps over batches[start:...] (cycling); (seconds, samples)."""
    samples = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        examples = batches[(start + i) % len(batches)]
        batch = collate(examples).to(device)
        with autocast():
            loss = model(batch.input_ids, batch.images, **batch.model_inputs())["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        samples += len(examples)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=10, help="timed windows per arm")
    ap.add_argument("--steps", type=int, default=5, help="training steps per window")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=8, help="distinct batches (cycled)")
    ap.add_argument("--size", type=int, default=128, help="synthetic canvas size (the long side of wide/tall)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    stream = synth_stream({"tasks": TASKS, "size": args.size, "aspect": "mixed"}, args.seed)
    samples = [stream(g) for g in range(args.batch * args.batches)]
    tok = Tokenizer.train(list(corpus_text(samples)), vocab_size=512)
    base, native = build(args, tok)
    proc = ChatProcessor(tok)
    arms = arm_batches(args, base, native, proc, samples)
    v = base.cfg.vision
    collate = Collator(tok.pad_id, v.image_mean, v.image_std, False, args.max_length)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" else \
        (lambda: torch.autocast(device.type, enabled=False))
    models = {arm: copy.deepcopy(base).to(device).train() for arm in arms}
    opts = {arm: torch.optim.AdamW(m.parameters(), lr=1e-4) for arm, m in models.items()}
    for arm in arms:
        run_window(models[arm], opts[arm], collate, arms[arm], 0, args.warmup, device, autocast)
    rates: dict[str, list[float]] = {arm: [] for arm in arms}
    counted = {arm: 0 for arm in arms}
    for w in range(args.windows):
        for arm in (("packed", "padded") if w % 2 == 0 else ("padded", "packed")):
            seconds, n = run_window(models[arm], opts[arm], collate, arms[arm], args.warmup + w * args.steps,
                                    args.steps, device, autocast)
            rates[arm].append(n / seconds)
            counted[arm] += n
    a, b = np.array(rates["packed"]), np.array(rates["padded"])
    ratio_ci = bootstrap_ci(len(a), lambda wt: ((wt @ a) / wt.sum(1)) / ((wt @ b) / wt.sum(1)))
    result = {
        "device": str(device), "precision": args.precision, "threads": torch.get_num_threads(),
        "batch": args.batch, "windows": args.windows, "steps_per_window": args.steps, "size": args.size,
        "tasks": TASKS, "aspect": "mixed",
        **{arm: {"samples_per_s": summarize(rates[arm]), "samples_timed": counted[arm], **per_sample_cost(arms[arm])}
           for arm in arms},
        "ratio_packed_over_padded": {"value": float(a.mean() / b.mean()), "ci95": list(ratio_ci) if ratio_ci else None,
                                     "n_windows": len(a)},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
