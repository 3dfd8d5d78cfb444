"""The task registry (`TASKS`): one generator per task, each turning a random generator into one sample.

Generators live by family in scene_tasks.py (caption, vqa, grounding, reg, segmentation, generation),
text_tasks.py (ocr, chart, doc, receipt), multi_tasks.py (multi_count, change: two images) and video_tasks.py (video_qa:
a clip of frames). A generator returns a `Made` (base.py: image, question, answer, meta, held-out
flag, optional mask); `make_memory_sample` wraps it into the sample format of DESIGN.md, `make_sample` also
into the PNG bytes to write. Every sample's randomness comes
from `np.random.default_rng([seed, split, index])`, so samples are independent of each other, of the
worker that made them and of the task mixture's other entries.

Held-out compositions (`heldout="default"`): the (color, shape) pairs in `DEFAULT_HELDOUT_PAIRS` and the
relation phrasings in `DEFAULT_HELDOUT_PHRASES` never occur in the train split (no image shows such an
object, no text names one). The test split has all compositions; a sample is marked `meta.heldout = true`
when its image (or the image it asks for) shows a held-out pair, its text names one, or it uses a held-out
phrasing; `heldout_boost` of the test split's scene samples are made to show one.
"""
from __future__ import annotations

import struct
import zlib
from typing import Callable

import numpy as np

from vlkit.config.synth import SPLITS, SynthConfig
from vlkit.data.synth.base import Made, Retry
from vlkit.data.synth.scene_tasks import (task_caption, task_generation, task_grounding, task_reg, task_segmentation,
                                          task_vqa)
from vlkit.data.synth.multi_tasks import task_change, task_multi_count
from vlkit.data.synth.text_tasks import task_chart, task_doc, task_ocr, task_receipt
from vlkit.data.synth.video_tasks import task_video_qa
from vlkit.data.synth.world import LABEL_CLASSES
from vlkit.tokenizer import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

TASKS: dict[str, Callable[[np.random.Generator, SynthConfig], Made]] = {
    "caption": task_caption,
    "vqa": task_vqa,
    "grounding": task_grounding,
    "reg": task_reg,
    "ocr": task_ocr,
    "chart": task_chart,
    "doc": task_doc,
    "segmentation": task_segmentation,
    "generation": task_generation,
    "receipt": task_receipt,
    "multi_count": task_multi_count,
    "change": task_change,
    "video_qa": task_video_qa,
}
# What `tasks=None` means (generate_dataset, a synth stream): today's single-image tasks; receipt, the multi-image
# and video tasks are asked for by name, so default data sets stay what they were.
DEFAULT_TASKS = ("caption", "vqa", "grounding", "reg", "ocr", "chart", "doc", "segmentation", "generation")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image) -> bytes:
    """8-bit RGB or grayscale PNG of a PIL image or uint8 array: unfiltered rows, zlib level 1. About 3x
    faster than Pillow's encoder for small images (Pillow tries every row filter), deterministic bytes."""
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"encode_png takes gray or RGB, got {channels} channels")
    raw = np.zeros((h, w * channels + 1), dtype=np.uint8)  # a leading 0 per row: filter type None
    raw[:, 1:] = arr.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if channels == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
            + _chunk(b"IEND", b""))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def sample_id(task: str, split: str, seed: int, index: int) -> str:
    return f"{task}-{split}-{seed}-{index:06d}"


def make_sample(task: str, index: int, seed: int, cfg: SynthConfig) -> tuple[dict, dict[str, bytes]]:
    """Sample `index` of (seed, split): the sample dict (paths relative to the dataset folder) and the
    files to write ({relative path: PNG bytes})."""
    mem = make_memory_sample(task, index, seed, cfg)
    sid, mask, meta = mem["id"], mem["mask_object"], dict(mem["meta"])
    images = mem["image_objects"]
    paths = [f"images/{sid}.png"] if len(images) == 1 else [f"images/{sid}-{k}.png" for k in range(len(images))]
    files = {p: encode_png(im) for p, im in zip(paths, images)}
    videos = [[f"videos/{sid}/{t:03d}.png" for t in range(len(clip))] for clip in mem.get("video_objects", [])]
    for frame_paths, clip in zip(videos, mem.get("video_objects", [])):
        files.update({p: encode_png(im) for p, im in zip(frame_paths, clip)})
    if mask is not None:
        files[f"masks/{sid}.png"] = encode_png(mask)
        meta = {**{k: v for k, v in meta.items() if k not in ("heldout", "category")}, "mask": f"masks/{sid}.png",
                "heldout": meta["heldout"], "category": meta["category"]}
    sample = {"id": sid, "images": paths, "conversations": mem["conversations"], "task": task, "meta": meta}
    if videos:
        sample = {"id": sid, "videos": videos, **{k: v for k, v in sample.items() if k not in ("id", "images")}}
    return sample, files


def text_mask(texts: list[tuple[str, tuple]], size: tuple[int, int]) -> np.ndarray:
    """uint8 HxW: 0 background, k = the k-th text's ink box (its dense label: the text's words)."""
    out = np.zeros((size[1], size[0]), dtype=np.uint8)
    for k, (_, (x1, y1, x2, y2)) in enumerate(texts):
        out[max(0, int(y1)):int(y2), max(0, int(x1)):int(x2)] = k + 1
    return out


def make_memory_sample(task: str, index: int, seed: int, cfg: SynthConfig) -> dict:
    """Sample `index` of (seed, split) held in memory: the image as a PIL image in `image_objects` and the
    segmentation mask (or None) in `mask_object`, as the readers of vlkit.data.sources give them."""
    rng = sample_rng(seed, cfg.split, index)
    for _ in range(20):
        try:
            made = TASKS[task](rng, cfg)
            break
        except Retry:
            continue
    else:  # pragma: no cover
        raise RuntimeError(f"could not make a {task} sample")
    images = made.images or ([made.image] if made.image is not None else [])
    if made.image_is_target:
        conversations = [{"from": "human", "value": made.question}, {"from": "gpt", "value": IMAGE_PLACEHOLDER}]
    else:
        marks = VIDEO_PLACEHOLDER if made.video is not None else "\n".join([IMAGE_PLACEHOLDER] * len(images))
        first = cfg.question_first > 0 and rng.random() < cfg.question_first
        prompt = f"{made.question}\n{marks}" if first else f"{marks}\n{made.question}"
        conversations = [{"from": "human", "value": prompt}, {"from": "gpt", "value": made.answer}]
        for q, a in made.follow_ups:  # more questions about the same image (SynthConfig.turns)
            conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    meta = dict(made.meta, heldout=bool(made.heldout), category=made.category)
    mask = made.mask
    if cfg.dense_labels and mask is None and made.scene is not None:
        mask, meta["classes"] = made.scene.label_mask(), list(LABEL_CLASSES)
    elif cfg.dense_labels and cfg.dense_text and mask is None and made.texts:
        mask, meta["classes"] = text_mask(made.texts, made.image.size), ["background"] + [t for t, _ in made.texts]
    out = {"id": sample_id(task, cfg.split, seed, index), "image_objects": images, "mask_object": mask,
           "conversations": conversations, "task": task, "meta": meta}
    if made.video is not None:  # a clip as frames: vlkit.data.sources' `videos` (one list of frames per <video>)
        out["video_objects"] = [made.video]
    return out
