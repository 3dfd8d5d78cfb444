"""Samples -> encoded examples -> batches (padding, or packing with block-diagonal attention).

Encoding happens once, up front: token ids, labels and the preprocessed image tensors (uint8, normalized at
batch time) are kept in memory, which for the synthetic world's small images is cheap and removes all
per-step decoding. A sample that fails to encode (bad image, wrong placeholder count, too long) is skipped
and counted, or raises under `strict`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from vlkit.chat import IGNORE, ROLES, ChatProcessor
from vlkit.config import TargetSpec
from vlkit.config.video import VideoConfig
from vlkit.data.sources import load_sample_mask
from vlkit.data.visuals import ClipTokens, sample_visuals
from vlkit.errors import UserError
from vlkit.images import ImageProcessor
from vlkit.tokenizer import IMAGE_PLACEHOLDER


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    images: list[torch.Tensor]  # uint8 (3, H, W)
    task: str = ""
    sample_id: str = ""
    target_images: list[int] = field(default_factory=list)  # images the assistant produces (generation)
    depth_codes: Optional[list[tuple[int, list[int]]]] = None  # (position, D residual codes) of visual-code tokens
    dense: Optional[list[tuple[int, list[int]]]] = None  # NTP-M: (image-token position, positive class-token ids)
    # the sample itself (task, meta, conversations), kept only for stages that score what the model generates
    # (grpo: its rewards read the ground truth); None elsewhere, so other stages hold no extra memory
    sample: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def prompt_length(self) -> int:
        """The tokens before the first supervised one: the prompt of the first assistant answer, ending with the
        assistant's header (what a grpo stage samples after; later turns are left out)."""
        return next((i for i, t in enumerate(self.labels) if t != IGNORE), len(self.labels))

    @property
    def num_targets(self) -> int:
        """Supervised positions: shifted labels plus NTP-M patches (what the loss is normalised by)."""
        return sum(t != IGNORE for t in self.labels[1:]) + len(self.dense or ())


@dataclass
class EncodeStats:
    encoded: int = 0
    skipped: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)  # first few messages

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(message)


# what a sample that cannot be encoded raises (skipped and counted, or an error under `strict`)
ENCODE_ERRORS = (UserError, OSError, KeyError, TypeError, ValueError)


def encode_samples(samples: Iterable[dict], processor: ChatProcessor, image_size: int,
                   tokens_per_image: Callable[[int, int], int], max_length: int, strict: bool = False,
                   stats: Optional[EncodeStats] = None, spec: Optional[TargetSpec] = None,
                   image_processor: Optional[ImageProcessor] = None, video: Optional[VideoConfig] = None,
                   tokens_per_clip: Optional[ClipTokens] = None, keep_samples: bool = False) -> list[Example]:
    """Samples -> examples: images through `image_processor` (the checkpoint's own; default vlkit's, a bicubic
    resize to `image_size`) as uint8, video clips sampled as `video` says (default VideoConfig()), text tokenized
    with as many image (video) pads as each image (clip) gives tokens (`tokens_per_image`, `tokens_per_clip`).
    `keep_samples`: each example keeps a reference to its sample (`Example.sample`, for rewards)."""
    stats = stats if stats is not None else EncodeStats()
    spec = spec or TargetSpec()
    if image_processor is None:
        image_processor = ImageProcessor.default(image_size)
    out = []
    for sample in samples:
        sid = str(sample.get("id", "?"))
        try:
            vis = sample_visuals(sample, processor, image_processor, tokens_per_image, video, tokens_per_clip)
            images, n_toks, media = vis.pixels, vis.tokens_per_image, vis.encode_kwargs()
            enc = processor.encode_sample(sample, n_toks, **media)
            if enc.target_images:
                if spec.encode_codes is None:
                    raise UserError(f"sample {sid} asks the model to produce an image, which needs "
                                    f"vision_target: codes and a visual tokenizer")
                if spec.prompt_dropout and _coin(spec.seed, sid) < spec.prompt_dropout:
                    enc = processor.encode_sample(blank_user_text(sample), n_toks, **media)
                elif spec.prompt_noise and _coin(spec.seed, "noise:" + sid) < spec.prompt_noise:
                    enc = processor.encode_sample(insert_fillers(sample, spec.seed), n_toks, **media)
            if len(enc.input_ids) > max_length:
                raise UserError(f"sample {sid} has {len(enc.input_ids)} tokens > max_length={max_length}")
            if all(t == IGNORE for t in enc.labels):
                raise UserError(f"sample {sid} has no assistant turn to learn from")
            dense = None
            if spec.dense and (mask := load_sample_mask(sample)) is not None:
                dense = dense_targets(enc.input_ids, processor, mask, (sample.get("meta") or {}).get("classes"), sid)
        except ENCODE_ERRORS as exc:
            if strict:
                raise UserError(f"sample {sid}: {exc}") from None
            stats.skip(type(exc).__name__, f"sample {sid}: {exc}")
            continue
        out.append(Example(enc.input_ids, enc.labels, images, sample.get("task", ""), sid,
                           target_images=list(enc.target_images), dense=dense,
                           sample=sample if keep_samples else None))
        stats.encoded += 1
    if spec.encode_codes is not None:
        attach_codes(out, processor.tok.image_pad_id, spec)
    if stats.skipped:
        warnings.warn(f"skipped {sum(stats.skipped.values())} sample(s) while encoding: {stats.skipped}; "
                      f"e.g. {stats.examples[0]}", stacklevel=2)
    return out


def sample_length(sample: Optional[dict], processor: ChatProcessor, image_processor: ImageProcessor,
                  tokens_per_image: Callable[[int, int], int], video: Optional[VideoConfig] = None,
                  tokens_per_clip: Optional[ClipTokens] = None) -> int:
    """The number of tokens the sample encodes to: its text plus N pads per image (N = tokens_per_image at the
    processed size) and per clip (as `encode_samples`). 0 for a sample that cannot be read or encoded."""
    if sample is None:
        return 0
    try:
        vis = sample_visuals(sample, processor, image_processor, tokens_per_image, video, tokens_per_clip)
        return len(processor.encode_sample(sample, vis.tokens_per_image, **vis.encode_kwargs()).input_ids)
    except ENCODE_ERRORS:
        return 0


def _coin(seed: int, key: str) -> float:
    """A uniform draw in [0, 1) that depends only on (seed, key): the same samples are dropped on every rank."""
    import hashlib

    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 2 ** 32


# Words that carry no content in an image prompt; `insert_fillers` puts them between the prompt's words.
FILLERS = ("a", "the", "to", "of", "and", "so", "then", "now", "please", "here", "just", "with")


def insert_fillers(sample: dict, seed: int) -> dict:
    """The sample with one or two filler words inserted at random gaps between the words of each user turn.
    Words are only added, never dropped or replaced, so no phrasing that the data lacks is synthesized; the
    model learns that a content word keeps its meaning at another distance from the words around it."""
    import random

    rng = random.Random(f"{seed}:{sample.get('id', '?')}")

    def insert(text: str) -> str:
        words = text.split(" ")
        for _ in range(rng.choice((1, 2))):
            words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
        return " ".join(words)

    return _map_user_text(sample, insert)


def blank_user_text(sample: dict) -> dict:
    """The unconditional version of a generation sample: user turns keep only their image placeholders."""
    return _map_user_text(sample, lambda text: IMAGE_PLACEHOLDER * text.count(IMAGE_PLACEHOLDER))


def _map_user_text(sample: dict, fn: Callable[[str], str]) -> dict:
    """A copy of the sample with the text of each user turn replaced by fn(text)."""
    turns = []
    for t in sample["conversations"]:
        if ROLES.get(t.get("from", t.get("role"))) == "user":
            key = "value" if "value" in t else "content"
            t = dict(t, **{key: fn(str(t.get(key, "")))})
        turns.append(t)
    return dict(sample, conversations=turns)


def image_spans(input_ids: Sequence[int], pad_id: int) -> list[tuple[int, int]]:
    """[start, end) of each run of image-pad tokens, in order (one run per image)."""
    spans, start = [], None
    for i, t in enumerate(list(input_ids) + [None]):
        if t == pad_id and start is None:
            start = i
        elif t != pad_id and start is not None:
            spans.append((start, i))
            start = None
    return spans


def attach_codes(examples: list[Example], pad_id: int, spec: TargetSpec, batch_size: int = 256) -> None:
    """Vision as target: label every image token with its visual code (offset into the LM vocabulary); the tokens
    of a generated image become those code tokens in the input as well, and that image leaves `images`.
    Residual codes (D > 1) are kept per position in `depth_codes`. Encodes all images in batches, in place."""
    flat = [im for ex in examples for im in ex.images]
    codes = torch.cat([spec.encode_codes(flat[i:i + batch_size]).cpu() for i in range(0, len(flat), batch_size)]) \
        if flat else torch.zeros(0, 0, 1, dtype=torch.long)
    depth = codes.shape[-1]
    k = 0
    for ex in examples:
        spans = image_spans(ex.input_ids, pad_id)
        depth_codes = []
        for j, (a, b) in enumerate(spans):
            c = codes[k + j]
            if c.shape[0] != b - a:
                raise UserError(f"sample {ex.sample_id}: image {j} has {b - a} tokens but {c.shape[0]} visual codes; "
                                f"the tokenizer's code grid must equal the LM's image-token grid")
            ids = (c[:, 0] + spec.code_offset).tolist()
            ex.labels[a:b] = ids
            if j in ex.target_images:
                ex.input_ids[a:b] = ids
            if depth > 1:
                depth_codes += [(a + n, c[n].tolist()) for n in range(b - a)]
        k += len(spans)
        ex.images = [im for j, im in enumerate(ex.images) if j not in ex.target_images]
        ex.depth_codes = depth_codes or None


def patch_classes(mask: np.ndarray, grid: int, min_fraction: float = 0.2) -> list[list[int]]:
    """Per image token (row-major on a grid x grid layout): the class indices of the mask present in that patch,
    i.e. covering at least `min_fraction` of it, and always the patch's majority class."""
    m = torch.from_numpy(np.array(mask, dtype=np.int64))
    n_cls = int(m.max()) + 1
    frac = torch.nn.functional.adaptive_avg_pool2d(
        torch.nn.functional.one_hot(m, n_cls).permute(2, 0, 1).float()[None], grid)[0]  # (C, g, g)
    present = frac >= min_fraction
    present.scatter_(0, frac.argmax(0, keepdim=True), True)
    flat = present.reshape(n_cls, -1).T
    return [row.nonzero().flatten().tolist() for row in flat]


def dense_targets(input_ids: Sequence[int], processor: ChatProcessor, mask: np.ndarray,
                  classes: Optional[Sequence[str]], sid: str) -> list[tuple[int, list[int]]]:
    """NTP-M targets for a masked sample's (single) image: (position, positive word-token ids of the classes
    present in that patch; see chat.class_word_tokens)."""
    from vlkit.chat import class_word_tokens

    if not classes:
        raise UserError(f"sample {sid} has a mask but no meta.classes naming its values")
    spans = image_spans(input_ids, processor.tok.image_pad_id)
    if len(spans) != 1:
        raise UserError(f"sample {sid}: a segmentation sample needs exactly one image, got {len(spans)}")
    a, b = spans[0]
    grid = math.isqrt(b - a)
    if grid * grid != b - a:
        raise UserError(f"sample {sid}: {b - a} image tokens do not form a square grid")
    if int(mask.max()) >= len(classes):
        raise UserError(f"sample {sid}: mask value {int(mask.max())} has no name in meta.classes ({len(classes)})")
    words = class_word_tokens(processor.tok, classes)
    return [(a + n, sorted({t for c in cls for t in words[c]})) for n, cls in enumerate(patch_classes(mask, grid))]


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    images: list[torch.Tensor]  # float, normalized
    attention_mask: Optional[torch.Tensor] = None
    position_ids: Optional[torch.Tensor] = None
    attn_mask_4d: Optional[torch.Tensor] = None
    num_samples: int = 0
    depth_codes: Optional[torch.Tensor] = None  # (B, T, D) residual codes at visual-code tokens, -1 elsewhere
    dense_targets: Optional[torch.Tensor] = None  # (B, T, P) NTP-M positive token ids at image tokens, -1 padded

    def to(self, device) -> "Batch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(mv(self.input_ids), mv(self.labels), [i.to(device) for i in self.images],
                     mv(self.attention_mask), mv(self.position_ids), mv(self.attn_mask_4d), self.num_samples,
                     mv(self.depth_codes), mv(self.dense_targets))

    def model_inputs(self) -> dict:
        """Keyword arguments for VisionLanguageModel.forward."""
        return {"labels": self.labels, "attention_mask": self.attention_mask, "position_ids": self.position_ids,
                "attn_mask_4d": self.attn_mask_4d, "depth_codes": self.depth_codes,
                "dense_targets": self.dense_targets}


class Collator:
    """Right-pads a list of examples into a batch, or packs them into rows of `max_length`."""

    def __init__(self, pad_id: int, mean: Sequence[float], std: Sequence[float], packing: bool = False,
                 max_length: int = 512):
        self.pad_id = pad_id
        self.processor = ImageProcessor.default(0, mean, std)  # only its rescale + normalize: images are sized
        self.packing = packing
        self.max_length = max_length

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> the tower's float input (vlkit.images: the one normalisation)."""
        return self.processor.normalize(img)

    def __call__(self, examples: Sequence[Example]) -> Batch:
        images = [self.normalize(im) for ex in examples for im in ex.images]
        if self.packing:
            return self.pack(examples, images)
        n = max(len(e) for e in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, :len(e)] = torch.tensor(e.input_ids)
            labels[i, :len(e)] = torch.tensor(e.labels)
        # right padding with a causal mask: real tokens never see the padding after them, so no mask is needed
        return Batch(ids, labels, images, num_samples=len(examples),
                     **self.extras(examples, [[(i, 0)] for i in range(len(examples))], ids.shape))

    @staticmethod
    def extras(examples: Sequence[Example], where: list[list[tuple[int, int]]], shape: tuple) -> dict:
        """depth_codes / dense_targets tensors; where[r] lists (example index, offset) placed in row r."""
        out = {}
        for name, attr in (("depth_codes", "depth_codes"), ("dense_targets", "dense")):
            if not any(getattr(e, attr) for e in examples):
                continue
            width = max(len(v) for e in examples for _, v in (getattr(e, attr) or ()))
            t = torch.full((*shape, width), -1, dtype=torch.long)
            for r, row in enumerate(where):
                for i, off in row:
                    for pos, values in getattr(examples[i], attr) or ():
                        t[r, off + pos, :len(values)] = torch.tensor(values)
            out[name] = t
        return out

    def pack(self, examples: Sequence[Example], images: list[torch.Tensor]) -> Batch:
        """First-fit packing in the given order (images stay in order, as the model scatters them in order)."""
        rows: list[list[Example]] = []
        lengths: list[int] = []
        where: list[list[tuple[int, int]]] = []
        for i, e in enumerate(examples):
            if rows and lengths[-1] + len(e) <= self.max_length:
                rows[-1].append(e)
                where[-1].append((i, lengths[-1]))
                lengths[-1] += len(e)
            else:
                rows.append([e])
                where.append([(i, 0)])
                lengths.append(len(e))
        n = max(lengths)
        b = len(rows)
        ids = torch.full((b, n), self.pad_id, dtype=torch.long)
        labels = torch.full((b, n), IGNORE, dtype=torch.long)
        pos = torch.zeros((b, n), dtype=torch.long)
        seg = torch.full((b, n), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            off = 0
            for s, e in enumerate(row):
                L = len(e)
                ids[r, off:off + L] = torch.tensor(e.input_ids)
                lab = torch.tensor(e.labels)
                lab[0] = IGNORE  # never predict a sample's first token from the previous sample
                labels[r, off:off + L] = lab
                pos[r, off:off + L] = torch.arange(L)
                seg[r, off:off + L] = s
                off += L
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        same = seg[:, :, None] == seg[:, None, :]
        mask4d = (same & causal) | torch.eye(n, dtype=torch.bool)
        return Batch(ids, labels, images, position_ids=pos, attn_mask_4d=mask4d[:, None], num_samples=len(examples),
                     **self.extras(examples, where, ids.shape))
