"""Reading samples from any registered format (`read_samples`), a recipe's source (`read_source`) and the
pixels of a sample whichever reader made it (`load_sample_images`, `load_sample_videos`, `load_sample_mask`)."""
from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image

from vlkit.config import from_dict, ranged
from vlkit.data.sources.base import CAPTION_PROMPT, DataError, DataWarning, PathLike, ReadStats
from vlkit.data.sources.formats import FORMATS, detect_format, expand_path
from vlkit.data.sources.normalize import Reader
from vlkit.images import decode_bytes, load_image
from vlkit.tokenizer import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from vlkit.video import load_video

if TYPE_CHECKING:
    from vlkit.config.video import VideoConfig


def read_samples(path: PathLike, strict: bool = False, stats: Optional[ReadStats] = None, *,
                 check_images: bool = True, image_folder: Optional[PathLike] = None,
                 caption_prompt: str = CAPTION_PROMPT, decode_images: bool = True) -> Iterator[dict]:
    """Yield the samples of `path`: a folder with *.jsonl (or *.json lists) and images, a .jsonl/.json file,
    a .tar shard or a folder of them, a saved HF dataset (the format is detected: FORMATS), or a brace pattern
    of any of these (`shards/{00000..00099}.tar`).

    A sample holds `conversations` ({from, value}) or `messages` ({role, content}: a string with `<image>`
    placeholders or OpenAI-style parts); both come out as `conversations`. JSON(L) sources yield `images` as
    absolute paths (relative ones are resolved against `image_folder`, else the JSON file's folder), checked
    to exist and pass `PIL.Image.verify` (`check_images=False`: existence only). tar and HF sources (and JSON
    samples with inline data: URLs) yield `images` as names plus the decoded RGB `PIL.Image`s in
    `image_objects` (and a mask in `mask_object`). WebDataset records without a conversation (img2dataset:
    image + `.txt` caption) become caption samples asking `caption_prompt`. Bad samples are skipped and
    counted in `stats` (pass a `ReadStats` to see the counts) with a `DataWarning` naming file and line;
    `strict=True` raises `DataError` instead. Videos (`videos`, one per `<video>`): JSON(L) sources give paths
    (checked to exist); tar and HF sources give names and the decoded frames of each clip in `video_objects`.
    `decode_images=False` (the streaming index, vlkit/data/records.py): images and clips held as data stay
    undecoded in `image_bytes` (a mask in `mask_bytes`, clips in `video_bytes`); `load_sample_images` and
    `load_sample_videos` decode them when needed."""
    stats = stats if stats is not None else ReadStats()
    folder = Path(image_folder) if image_folder is not None else None
    if folder is not None and not folder.is_dir():
        raise DataError(f"image_folder {folder} is not a folder")
    reader = Reader(strict, stats, check_images, folder, caption_prompt, decode_images)
    for p in expand_path(path):
        fmt = FORMATS[detect_format(p)]
        if folder is not None and fmt.holds_images:
            raise DataError(f"{p}: image_folder applies to JSON(L) and HF sources; {fmt.describe} hold their "
                            "images")
        for sample in fmt.samples(reader, p):
            stats.read += 1
            yield sample
    if stats.n_skipped:
        warnings.warn(f"{os.fspath(path)}: {stats.summary()}", DataWarning, stacklevel=2)
        if stats.read == 0:
            raise DataError(f"{os.fspath(path)}: no usable sample ({stats.summary()}); first problem: "
                            f"{(stats.messages or stats.bad_files or ['?'])[0]}")


# ---------------------------------------------------------------------------------------------------------
# a recipe's source: {path, image_folder, max_skip, caption_prompt} (+ the trainer's weight, tasks)


@dataclass
class SourceOptions:
    """How a `data.train` entry `{path: ...}` is read (the trainer adds `weight` and `tasks`)."""

    image_folder: Optional[str] = None  # relative image paths are relative to this folder (LLaVA's --image_folder)
    max_skip: float = ranged(0.01, 0, 1)  # the largest share of samples that may be skipped before it is an error
    caption_prompt: str = CAPTION_PROMPT  # the question of caption samples made from img2dataset shards

    @classmethod
    def from_spec(cls, src: dict, where: str = "source") -> "SourceOptions":
        return from_dict(cls, {k: src[k] for k in SOURCE_OPTIONS if k in src}, where)


SOURCE_OPTIONS = tuple(f.name for f in fields(SourceOptions))


def check_skip_share(source: str, kept: int, skipped: dict, max_skip: float, examples: list = (),
                     stage: str = "reading") -> None:
    """DataError when more than `max_skip` of a source's samples were skipped: it names the source, the counts,
    the main reasons and the first problem, and says how to accept the loss."""
    n_skip = sum(skipped.values())
    total = kept + n_skip
    if not n_skip or n_skip <= max_skip * total:
        return
    share = n_skip / total
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1])[:4])
    first = f" First: {examples[0]}." if examples else ""
    raise DataError(f"source {source}: {n_skip} of {total} samples ({share:.1%}) were skipped while {stage}, more "
                    f"than max_skip={max_skip:g} allows ({reasons}).{first} Fix the data (images relative to "
                    f"another folder need `image_folder:`), or set `max_skip: {math.ceil(share * 100) / 100:g}` on "
                    f"this source to train on what is left.")


def read_source(src: dict, strict: bool = False, stats: Optional[ReadStats] = None, *,
                check_images: bool = True) -> Iterator[dict]:
    """The samples of one recipe source `{path, image_folder?, max_skip?, caption_prompt?}` (other keys are the
    caller's); after the last one, a DataError if more than `max_skip` of them were skipped."""
    opts = SourceOptions.from_spec(src)
    stats = stats if stats is not None else ReadStats()
    yield from read_samples(src["path"], strict, stats, check_images=check_images, image_folder=opts.image_folder,
                            caption_prompt=opts.caption_prompt)
    check_skip_share(src["path"], stats.read, stats.skipped, opts.max_skip, stats.messages + stats.bad_files)


# ---------------------------------------------------------------------------------------------------------
# a sample's pixels and text


def load_sample_images(sample: dict) -> list[Image.Image]:
    """The sample's images as RGB PIL images, whichever reader produced it."""
    if "image_objects" in sample:
        return list(sample["image_objects"])
    if "image_bytes" in sample:  # read with decode_images=False
        return [decode_bytes(b, what=f"image {k}") for k, b in enumerate(sample["image_bytes"])]
    return [load_image(p) for p in sample.get("images", [])]


def load_sample_videos(sample: dict, cfg: Optional["VideoConfig"] = None) -> list[list[Image.Image]]:
    """The sample's video clips, each as its sampled RGB frames (vlkit.video; PyAV only for video files): decoded
    frames in `video_objects` (tar and HF sources, the synthetic stream), clip data in `video_bytes` (read with
    decode_images=False: a video file's bytes or a list of frame bytes) or `videos` (paths, frame lists)."""
    clips = next((sample[k] for k in ("video_objects", "video_bytes") if k in sample), sample.get("videos", []))
    return [load_video(v, cfg, what=f"video {k}") for k, v in enumerate(clips)]


def load_sample_mask(sample: dict) -> Optional[np.ndarray]:
    """The segmentation mask (uint8 HxW class indices) or None."""
    if sample.get("mask_object") is not None:
        return np.asarray(sample["mask_object"])
    if sample.get("mask_bytes") is not None:  # read with decode_images=False
        with Image.open(io.BytesIO(sample["mask_bytes"])) as m:
            return np.asarray(m)
    path = (sample.get("meta") or {}).get("mask")
    if not path:
        return None
    with Image.open(path) as m:
        return np.asarray(m)


def corpus_text(path_or_samples: Union[PathLike, Iterable[dict]]) -> Iterator[str]:
    """Every conversation turn's text (with `<image>` / `<video>` placeholders removed), e.g. to train a BPE
    tokenizer."""
    if isinstance(path_or_samples, (str, os.PathLike)):
        samples: Iterable[dict] = read_samples(path_or_samples, check_images=False)
    else:
        samples = path_or_samples
    for sample in samples:
        for turn in sample.get("conversations", []):
            text = turn.get("value", "").replace(IMAGE_PLACEHOLDER, "").replace(VIDEO_PLACEHOLDER, "").strip()
            if text:
                yield text
