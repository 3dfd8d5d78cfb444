"""A stage's data: its `data.train` sources checked, read as a streamed feed (or encoded up front), and what the
model supervises besides text (TargetSpec). The trainer (vlkit.train.trainer) runs on what `load_feed` returns."""
from __future__ import annotations

import difflib
import json
from typing import Callable, Optional

import torch

from vlkit.config import ConfigError, DataConfig, TargetSpec
from vlkit.data.collate import EncodeStats, Example, encode_samples, sample_length
from vlkit.data.feed import StreamFeed, mixture, read_records
from vlkit.data.grouping import LengthGrouping
from vlkit.data.sources import SOURCE_OPTIONS, SourceOptions
from vlkit.errors import UserError
from vlkit.images import normalize_pixels


def target_spec(pipe, data: DataConfig, seed: int) -> TargetSpec:
    """What the model supervises besides text: visual codes (vision_target: codes) and NTP-M masks."""
    cfg = pipe.config
    spec = TargetSpec(prompt_dropout=data.prompt_dropout, prompt_noise=data.prompt_noise,
                      dense=cfg.dense_prediction, seed=seed)
    if cfg.vision_target == "codes":
        vq = pipe.vq
        if vq is None:
            raise ConfigError("vision_target=codes but the pipeline has no visual tokenizer (vq/)")

        def encode_codes(images: list[torch.Tensor]) -> torch.Tensor:
            # the visual tokenizer's input normalisation, [-1, 1] (what VisualTokenizer.preprocess applies)
            pixels = normalize_pixels(torch.stack(images)).to(vq.quantizer.codebook.device)
            return vq.encode(pixels).reshape(len(images), -1, vq.cfg.depth)

        spec.code_offset, spec.encode_codes = cfg.text_vocab_size, encode_codes
    return spec


def file_mixture(data: DataConfig, seed: int):
    """The stage's `path:` sources indexed as light records (vlkit/data/records.py): read once, no pixels; each
    source's `max_skip` is checked on what its reading skipped."""
    from vlkit.data.records import FileMixture

    if not data.train:
        raise ConfigError("stage data.train is empty: name at least one source {path: DIR}")
    specs = []
    for i, src in enumerate(data.train):
        src = source_spec(src, i)
        if "path" not in src:
            raise ConfigError(f"data.train.{i}: `synth:` streams cannot be mixed with `path:` sources in one stage")
        specs.append(src)
    return FileMixture(specs, data.strict, seed)


def sample_encoder(pipe, data: DataConfig, seed: int, keep_samples: bool = False,
                   answer_format: str = "plain") -> Callable[[list[dict], EncodeStats], list[Example]]:
    """samples -> encoded examples (images decoded and resized, text tokenized), skipping and counting failures;
    `keep_samples`: each example keeps its sample (a grpo stage's rewards read the ground truth there);
    `answer_format`: the first human turn asks for that answer format (a grpo stage's prompts, as eval asks)."""
    spec = target_spec(pipe, data, seed)
    image_size, images = pipe.config.vision.image_size, pipe.image_processor

    def encode(samples: list[dict], st: EncodeStats) -> list[Example]:
        if answer_format != "plain":
            samples = [ask_format(s, answer_format) for s in samples]
        return encode_samples(samples, pipe.processor, image_size, pipe.model.tokens_per_image, data.max_length,
                              strict=data.strict, stats=st, spec=spec, image_processor=images, video=data.video,
                              tokens_per_clip=pipe.model.tokens_per_clip, keep_samples=keep_samples)

    return encode


def ask_format(sample: dict, fmt: str) -> dict:
    """A copy of `sample` whose first human turn asks for the answer format `fmt` (vlkit.eval.answer_formats)."""
    from vlkit.chat import USER_ROLES
    from vlkit.eval.answer_formats import format_prompt

    turns = list(sample.get("conversations") or [])
    for i, turn in enumerate(turns):
        if turn.get("from") in USER_ROLES:
            turns[i] = {**turn, "value": format_prompt(str(turn.get("value", "")), fmt)}
            break
    return {**sample, "conversations": turns}


def length_grouping(pipe, data: DataConfig, seed: int) -> Optional[LengthGrouping]:
    """The stage's length grouping (data.group_by_length), measuring samples as the model will see them."""
    if not data.group_by_length:
        return None

    def measure(sample: Optional[dict]) -> int:
        return sample_length(sample, pipe.processor, pipe.image_processor, pipe.model.tokens_per_image, data.video,
                             pipe.model.tokens_per_clip)

    return LengthGrouping(measure, data.group_window, seed)


def load_examples(pipe, data: DataConfig, seed: int, stats: Optional[EncodeStats] = None,
                  keep_samples: bool = False) -> list[Example]:
    """The in-memory path: every record of the stage's file mixture encoded up front, in mixture order (a source
    with weight 2 is encoded twice). Training streams instead (`load_feed`); tests and
    benchmarks/stream_data.py use this to compare."""
    from vlkit.data.sources import check_skip_share

    mix = file_mixture(data, seed)
    encode = sample_encoder(pipe, data, seed, keep_samples)
    stats = stats if stats is not None else EncodeStats()
    out = encode(read_records(mix.__getitem__, range(len(mix)), stats), stats)
    check_skip_share("the stage's data", stats.encoded, stats.skipped, mix.max_skip, stats.examples, "encoding")
    if not out:
        raise UserError("the stage's data gave no usable sample")
    return out


TOKENIZER_CORPUS = 4000  # samples of a `synth:` stream that train the text tokenizer
SOURCE_KEYS = {"path": ("path", "weight", "tasks", *SOURCE_OPTIONS), "synth": ("synth", "weight")}


def source_spec(src, i: int) -> dict:
    """A data.train entry as a dict, its keys and values checked: {path: FILE_OR_DIR, weight, tasks, image_folder,
    max_skip, caption_prompt} (docs/data.md) or {synth: {...}, weight}."""
    if isinstance(src, str):
        src = {"path": src}
    if not isinstance(src, dict):
        raise ConfigError(f"data.train.{i} must be a mapping like {{path: DIR}} or {{synth: {{tasks: [vqa]}}}}")
    kinds = [k for k in SOURCE_KEYS if k in src]
    if len(kinds) != 1:
        raise ConfigError(f"data.train.{i} needs exactly one of `path` or `synth`, got keys {sorted(src)}")
    allowed = SOURCE_KEYS[kinds[0]]
    unknown = sorted(set(src) - set(allowed))
    if unknown:
        hints = [f"`{k}` -> `{m[0]}`?" for k in unknown if (m := difflib.get_close_matches(k, allowed, 1, 0.6))]
        raise ConfigError(f"data.train.{i}: unknown key(s) {unknown}{' (' + ', '.join(hints) + ')' if hints else ''}"
                          f"; allowed: {list(allowed)}")
    if "path" in src:
        SourceOptions.from_spec(src, f"data.train.{i}")
    weight = src.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
        raise ConfigError(f"data.train.{i}.weight={weight!r} must be a number > 0")
    return src


def stream_of(data: DataConfig, seed: int):
    """The stage's `synth:` sources as one sample stream (None if it reads files)."""
    from vlkit.data.synth.stream import synth_stream

    specs = [source_spec(s, i) for i, s in enumerate(data.train)]
    streams = [s for s in specs if "synth" in s]
    if not streams:
        return None
    if len(streams) != len(specs):
        raise ConfigError("a stage reads either `synth:` streams or `path:` sources, not both")
    return mixture([synth_stream(s["synth"], seed) for s in streams], [float(s.get("weight", 1.0)) for s in streams],
                   seed)


def load_feed(pipe, data: DataConfig, seed: int, stats: Optional[EncodeStats] = None,
              order_seed: Optional[int] = None, keep_samples: bool = False,
              answer_format: str = "plain") -> StreamFeed:
    """The stage's training feed, streamed: its `synth:` stream, or its files indexed as light records and walked
    in epoch permutations seeded by `order_seed` (default `seed`; `train` passes train.seed, the order the
    in-memory path used); with data.group_by_length, batches of similar length (vlkit/data/grouping.py). Either way a batch is read and encoded only when it is needed (in DataLoader workers
    with train.num_workers > 0), by the rank that trains on it. `keep_samples`: examples keep their samples (grpo);
    `answer_format`: prompts ask for it (grpo)."""
    encode = sample_encoder(pipe, data, seed, keep_samples, answer_format)
    group = length_grouping(pipe, data, seed)
    stream = stream_of(data, seed)
    if stream is not None:
        return StreamFeed(stream, encode, stats=stats, group=group)
    mix = file_mixture(data, seed)
    return StreamFeed(mix.__getitem__, encode, length=len(mix), seed=seed if order_seed is None else order_seed,
                      stats=stats, max_skip=mix.max_skip, group=group)


def tokenizer_corpus(stages: list, seed: int):
    """The text a fresh tokenizer learns from: every stage's data once (a `vision` stage may see only some of the
    tasks); a `synth:` stream gives its first TOKENIZER_CORPUS samples."""
    from vlkit.data.sources import corpus_text, read_source

    seen = set()
    for stage in stages:
        key = json.dumps(stage.data.train, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        stream = stream_of(stage.data, seed)
        if stream is not None:  # the tokenizer learns from the stream's first samples
            yield from corpus_text(stream(g) for g in range(TOKENIZER_CORPUS))
            continue
        for j, src in enumerate(stage.data.train):
            yield from corpus_text(read_source(source_spec(src, j), check_images=False))
