"""The training loop: plain PyTorch, readable top to bottom.

A recipe (YAML) names the model, the tokenizer and a list of stages; each stage freezes what it does not train,
reads its data mixture, and runs AdamW with warmup + cosine decay, gradient accumulation and clipping, bf16
autocast, a NaN/inf guard and periodic atomic checkpoints. `batch_size` is the global number of samples per
optimizer step: under torchrun each rank takes a strided share, and the loss is normalized by the global count
of supervised tokens, so N processes compute the same update as one.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from vlkit.config import (ConfigError, DataConfig, ModelConfig, StageConfig, TokenizerConfig, TrainConfig,
                          apply_overrides, from_dict, load_yaml, model_config_from_dict, to_dict, tiny_model_config)
from vlkit.data.collate import Collator, EncodeStats, Example, TargetSpec, encode_samples
from vlkit.data.feed import ListFeed, StreamFeed, as_feed, mixture, read_records
from vlkit.data.sources import SOURCE_OPTIONS, SourceOptions
from vlkit.errors import UserError
from vlkit.train import checkpoint as ckpt_io
from vlkit.train import distributed as dist_utils
from vlkit.train.stages import apply_stage, check_stage_kind, check_vision_stage, param_groups, runs_language
from vlkit.train.validation import Validator

log = logging.getLogger("vlkit.train")


class TrainingError(UserError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why."""


@dataclass
class Recipe:
    model: dict = field(default_factory=dict)  # {"preset": "tiny", ...ModelConfig overrides}
    tokenizer: dict = field(default_factory=dict)  # {"path": tokenizer.json} | {"vocab_size": N} (trained)
    init: Optional[str] = None  # start from this checkpoint instead of a fresh model
    vq: Optional[str] = None  # a trained visual tokenizer directory (needed by model.vision_target: codes)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list = field(default_factory=list)  # [StageConfig]

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        allowed = {"model", "tokenizer", "init", "vq", "train", "stages"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"recipe: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        stages = data.get("stages") or []
        if not isinstance(stages, list) or not stages:
            raise ConfigError("recipe: `stages` must be a non-empty list")
        stages = [from_dict(StageConfig, s, f"stages.{i}") for i, s in enumerate(stages)]
        for i, s in enumerate(stages):
            check_stage_kind(s, f"stages.{i}.train")
        from_dict(TokenizerConfig, data.get("tokenizer") or {}, "tokenizer")  # checked; build_pipeline reads the dict
        return cls(model=data.get("model") or {}, tokenizer=data.get("tokenizer") or {}, init=data.get("init"),
                   vq=data.get("vq"), train=from_dict(TrainConfig, data.get("train") or {}, "train"), stages=stages)


# ---------------------------------------------------------------------------------------------------------
# building the pipeline


def build_pipeline(recipe: Recipe, corpus: Callable[[], Any]):
    """A fresh model + tokenizer per the recipe (or the `init` checkpoint)."""
    from vlkit.models.vlm import VisionLanguageModel
    import vlkit.hf  # noqa: F401  (registers the Hugging Face checkpoint formats: init may be an HF model)
    from vlkit.models.bundle import Bundle, load_bundle
    from vlkit.tokenizer import Tokenizer

    if recipe.init:  # fp32 master weights whatever the checkpoint's dtype (bf16 runs use autocast)
        return adapt_init(load_bundle(recipe.init, dtype=torch.float32), recipe)
    if "path" in recipe.tokenizer:
        tok = Tokenizer.from_file(recipe.tokenizer["path"])
    else:
        tok = Tokenizer.train(corpus(), vocab_size=int(recipe.tokenizer.get("vocab_size", 1024)))
    spec = dict(recipe.model)
    preset = spec.pop("preset", "tiny")
    if preset != "tiny":
        raise ConfigError(f"model.preset={preset!r} is unknown; choose 'tiny' or give the full config")
    base = to_dict(tiny_model_config())
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value
    base["text"]["vocab_size"] = len(tok)
    base["image_token_id"], base["pad_token_id"] = tok.image_pad_id, tok.pad_id
    vq = None
    if base.get("vision_target") == "codes":  # VLUAS: the codes follow the text tokens in the vocabulary
        from vlkit.models.vq import VisualTokenizer, check_code_grid

        if not recipe.vq:
            raise ConfigError("model.vision_target=codes needs `vq: DIR`, a visual tokenizer trained with "
                              "`vlkit train recipes/vq.yaml`")
        vq = VisualTokenizer.from_pretrained(recipe.vq).eval()
        base["vq"] = to_dict(vq.cfg)
        base["text_vocab_size"] = len(tok)
        base["text"]["vocab_size"] = len(tok) + vq.cfg.codebook_size
    cfg: ModelConfig = model_config_from_dict(base)
    if vq is not None:
        check_code_grid(cfg)
    return Bundle(VisionLanguageModel(cfg), tok, vq=vq)


# `model:` keys a recipe may set on top of `init:`: what the model learns, not its shape.
INIT_MODEL_KEYS = ("vision_target", "vision_loss_weight", "depth_layers", "dense_prediction", "dense_loss_weight",
                   "dense_negatives", "dense_from")


def adapt_init(pipe, recipe: Recipe):
    """The `init` checkpoint with the recipe's `model:` keys applied. `vision_target: codes` on a vision-as-input
    checkpoint grows it into VLUAS (VisionLanguageModel.with_visual_codes) with the recipe's `vq:` tokenizer."""
    from dataclasses import replace

    from vlkit.models.vq import VisualTokenizer
    from vlkit.models.bundle import Bundle

    spec = dict(recipe.model)
    fixed = sorted(set(spec) - set(INIT_MODEL_KEYS))
    if fixed:
        raise ConfigError(f"model: {fixed} cannot change when starting from init: {recipe.init}; on top of a "
                          f"checkpoint a recipe may set only {list(INIT_MODEL_KEYS)}")
    cfg = pipe.config
    target = spec.pop("vision_target", cfg.vision_target)
    if target == "codes" and cfg.vision_target != "codes":
        if not recipe.vq:
            raise ConfigError("model.vision_target=codes on top of init needs `vq: DIR`, a visual tokenizer "
                              "trained with `vlkit train recipes/vq.yaml`")
        if pipe.tokenizer.gen_start_id is None:
            raise ConfigError(f"init: {recipe.init} has no <|gen_start|> token, which image generation needs; "
                              "build the model with `vlkit build` (it adds vlkit's special tokens)")
        vq = VisualTokenizer.from_pretrained(recipe.vq).eval()
        grow = {k: spec.pop(k) for k in ("vision_loss_weight", "depth_layers") if k in spec}
        pipe = Bundle(pipe.model.with_visual_codes(vq.cfg, **grow), pipe.tokenizer, vq=vq)
    elif target != cfg.vision_target:
        raise ConfigError(f"model.vision_target={target!r} on top of init: {recipe.init} (vision_target="
                          f"{cfg.vision_target!r}): a recipe can only add visual codes (none -> codes)")
    elif "depth_layers" in spec and spec["depth_layers"] != cfg.depth_layers:
        raise ConfigError("model.depth_layers can change only when `vision_target: codes` adds the codes")
    if spec:
        new = replace(pipe.config, **spec)
        new.validate()
        pipe.model.cfg = new
    return pipe


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
            pixels = torch.stack(images).float().div(127.5).sub(1.0).to(vq.quantizer.codebook.device)
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


def sample_encoder(pipe, data: DataConfig, seed: int) -> Callable[[list[dict], EncodeStats], list[Example]]:
    """samples -> encoded examples (images decoded and resized, text tokenized), skipping and counting failures."""
    spec = target_spec(pipe, data, seed)
    image_size, images = pipe.config.vision.image_size, pipe.image_processor

    def encode(samples: list[dict], st: EncodeStats) -> list[Example]:
        return encode_samples(samples, pipe.processor, image_size, pipe.model.tokens_per_image, data.max_length,
                              strict=data.strict, stats=st, spec=spec, image_processor=images)

    return encode


def load_examples(pipe, data: DataConfig, seed: int, stats: Optional[EncodeStats] = None) -> list[Example]:
    """The in-memory path: every record of the stage's file mixture encoded up front, in mixture order (a source
    with weight 2 is encoded twice). Training streams instead (`load_feed`); tests and
    benchmarks/stream_data.py use this to compare."""
    from vlkit.data.sources import check_skip_share

    mix = file_mixture(data, seed)
    encode = sample_encoder(pipe, data, seed)
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
              order_seed: Optional[int] = None) -> StreamFeed:
    """The stage's training feed, streamed: its `synth:` stream, or its files indexed as light records and walked
    in epoch permutations seeded by `order_seed` (default `seed`; `train` passes train.seed, the order the
    in-memory path used). Either way a batch is read and encoded only when it is needed (in DataLoader workers
    with train.num_workers > 0), by the rank that trains on it."""
    encode = sample_encoder(pipe, data, seed)
    stream = stream_of(data, seed)
    if stream is not None:
        return StreamFeed(stream, encode, stats=stats)
    mix = file_mixture(data, seed)
    return StreamFeed(mix.__getitem__, encode, length=len(mix), seed=seed if order_seed is None else order_seed,
                      stats=stats, max_skip=mix.max_skip)


# ---------------------------------------------------------------------------------------------------------
# the loop


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    def __init__(self, pipe, cfg: TrainConfig, out: Path, callbacks: tuple = ()):
        self.pipe = pipe
        self.cfg = cfg
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.callbacks = callbacks  # each called as cb(trainer, global_step) after a step
        self.rank, self.world, self.device = dist_utils.setup()
        self.precision = dist_utils.resolve_precision(cfg.precision, self.device)
        log.info("precision: %s%s", self.precision, " (auto)" if cfg.precision == "auto" else "")
        self.t0 = time.perf_counter()
        self.validator = Validator(cfg, self.out) if cfg.eval_every else None
        self.global_step = 0
        self.bad_steps_total = 0
        self.history: list[dict] = []

    # -- one stage -------------------------------------------------------------------------------------
    def run_stage(self, stage_index: int, stage: StageConfig, examples: "list[Example] | ListFeed | StreamFeed",
                  resume: Optional[tuple[dict, Any, dict]] = None) -> None:
        cfg, model = self.cfg, self.pipe.model
        model.to(self.device).train()
        if stage.train == "lora":
            from vlkit.models.lora import apply_lora

            apply_lora(model, r=stage.lora_r, alpha=stage.lora_alpha, dropout=stage.lora_dropout,
                       vision=stage.lora_vision, trainable=("connector",))
        check_vision_stage(stage, model.cfg)
        counts = apply_stage(model, stage)
        text = runs_language(stage)
        # DDP or FSDP (train.distributed) under torchrun, the model itself in one process; FSDP shards `model` in
        # place (same parameter names), so the parameter groups and clipping below use it as they are
        ddp = dist_utils.wrap_model(model, cfg.distributed, self.device, find_unused=stage.train != "multitask",
                                    precision=self.precision)
        if stage.batch_size % (self.world * stage.grad_accum):
            raise ConfigError(f"stage {stage.name}: batch_size={stage.batch_size} must be divisible by "
                              f"world_size x grad_accum = {self.world * stage.grad_accum}")
        total = stage.steps
        feed = as_feed(examples, cfg.seed)
        if stage.epochs is not None:
            total = math.ceil(stage.epochs * len(feed) / stage.batch_size)
        opt = torch.optim.AdamW(param_groups(model, stage, cfg.weight_decay), betas=(0.9, 0.95), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(stage.warmup_steps, total))
        v = self.pipe.config.vision
        collate = Collator(self.pipe.tokenizer.pad_id, v.image_mean, v.image_std, stage.data.packing,
                           stage.data.max_length)
        step = 0
        if resume is not None:
            state, opt_state, rng = resume
            dist_utils.load_optimizer_state(model, opt, opt_state)
            sched.load_state_dict(state["scheduler"])
            step = state["step"]
            feed.load_state(state)
            self.bad_steps_total = state.get("bad_steps_total", 0)
            ckpt_io.set_rng_state(rng, state["python_rng"])
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        bar = None
        if dist_utils.is_main():
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc=f"{stage.name} ({counts['trainable']:,} trainable)",
                       unit="step", dynamic_ncols=True, leave=True)
        consecutive_bad = 0
        t_last, samples_since, tokens_since = time.perf_counter(), 0, 0
        # this rank's share of each global batch; closing the iterator stops its DataLoader workers
        with contextlib.closing(feed.batches(stage.batch_size, self.rank, self.world, cfg.num_workers)) as batches:
            while step < total:
                # -- this rank's share of the step's global batch, in micro-batches ----------------------------
                mine = sorted(next(batches), key=len)  # less padding
                micro = [mine[k::stage.grad_accum] for k in range(stage.grad_accum)]
                local_tokens = sum(e.num_targets if text else len(e.dense or ()) for e in mine)
                global_tokens = dist_utils.all_reduce_sum(float(local_tokens), self.device)
                loss_sum = 0.0
                for k, idx in enumerate(micro):
                    batch = collate(idx).to(self.device)
                    sync = contextlib.nullcontext() if (k == len(micro) - 1 or self.world == 1) else ddp.no_sync()
                    with sync:
                        with autocast:
                            out = ddp(batch.input_ids, batch.images, **batch.model_inputs(), run_language=text)
                        part = out["loss"] * out["num_tokens"]
                        (part * self.world / max(global_tokens, 1.0)).backward()
                    loss_sum += float(part.detach())
                loss = dist_utils.all_reduce_sum(loss_sum, self.device) / max(global_tokens, 1.0)
                if not math.isfinite(loss):
                    opt.zero_grad(set_to_none=True)
                    consecutive_bad += 1
                    self.bad_steps_total += 1
                    log.warning("step %d: non-finite loss (%s), step skipped (%d in a row)", step, loss,
                                consecutive_bad)
                    if consecutive_bad >= cfg.max_bad_steps:
                        raise TrainingError(f"{consecutive_bad} consecutive non-finite losses in stage {stage.name!r} "
                                            f"(last at step {step}); lower the learning rate or check the data. "
                                            f"The last good checkpoint is in {self.out / 'checkpoints'}")
                    continue  # the next batch takes this step's place
                consecutive_bad = 0
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                           cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                step += 1
                self.global_step += 1
                samples_since += stage.batch_size
                tokens_since += int(global_tokens)
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    row = {"stage": stage.name, "step": step, "global_step": self.global_step, "loss": round(loss, 5),
                           "lr": sched.get_last_lr()[0], "grad_norm": round(float(grad_norm), 4),
                           "samples_per_s": round(samples_since / (now - t_last), 2),
                           "tokens_per_s": round(tokens_since / (now - t_last), 1),
                           "bad_steps": self.bad_steps_total, "epoch": feed.state()["epoch"]}
                    t_last, samples_since, tokens_since = now, 0, 0
                    self.log_metrics(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}", sps=row["samples_per_s"])
                if bar is not None:
                    bar.update(1)
                # a `vision` stage trains no LM, so there is nothing to answer with yet
                if self.validator is not None and text and self.global_step % cfg.eval_every == 0:
                    self.validate(stage.name, step)
                # LoRA stages save only at their end, once the adapters are merged into plain weights
                if cfg.save_every and step % cfg.save_every == 0 and step < total and stage.train != "lora":
                    self.save(stage_index, step, feed.state(), opt, sched)
                for cb in self.callbacks:
                    cb(self, self.global_step)
        if bar is not None:
            bar.close()
        model = self.pipe.model = dist_utils.unwrap_model(model)  # FSDP: plain again, full weights on every rank
        if stage.train == "lora":
            from vlkit.models.lora import merge_lora

            self.pipe.model = merge_lora(model)
        self.save(stage_index + 1, 0, {"epoch": 0, "pos": 0}, None, None)  # stage boundary: the next starts fresh

    # -- bookkeeping -----------------------------------------------------------------------------------
    def save(self, stage_index: int, step: int, position: dict, opt, sched) -> None:
        # FSDP: every rank takes part in gathering the full weights and optimizer state to rank 0
        pipe, opt_state = dist_utils.gather_for_save(self.pipe, opt)
        if dist_utils.is_main():
            state = {"stage": stage_index, "step": step, **position, "global_step": self.global_step,
                     "bad_steps_total": self.bad_steps_total,
                     "scheduler": sched.state_dict() if sched is not None else None}
            ckpt_io.save_checkpoint(pipe, self.out, self.global_step, state, opt_state, self.cfg.keep_last)
        dist_utils.barrier()

    def validate(self, stage: str, step: int) -> None:
        """A learning-curve point (train.eval_every), on the main rank while the others wait."""
        if dist_utils.is_main():
            if self.cfg.distributed == "fsdp" and self.world > 1:
                log.warning("train.eval_every is skipped under FSDP (sharded weights); evaluate the checkpoints")
            else:
                self.log_metrics(self.validator(self.pipe, stage, step, self.global_step,
                                                time.perf_counter() - self.t0))
        dist_utils.barrier()

    def log_metrics(self, row: dict) -> None:
        self.history.append(row)
        if not dist_utils.is_main():
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"):
                if k in row:
                    self._tb.add_scalar(f"{row['stage']}/{k}", row[k], row["global_step"])
            for task, score in row.get("eval", {}).items():
                if score is not None:
                    self._tb.add_scalar(f"eval/{task}", score, row["global_step"])

    @property
    def _tb(self):
        if not hasattr(self, "_tb_writer"):
            self._tb_writer = None
            try:  # TensorBoard is optional: `pip install tensorboard` to get event files
                from torch.utils.tensorboard import SummaryWriter

                self._tb_writer = SummaryWriter(str(self.out / "tb"))
            except Exception:
                pass
        return self._tb_writer


# ---------------------------------------------------------------------------------------------------------
# entry points


def train(recipe: Recipe, out: Optional[str | Path] = None, resume: bool = False, callbacks: tuple = (),
          pipe=None) -> Path:
    """Runs every stage of `recipe`; returns the final checkpoint directory (`<out>/final`)."""
    out = Path(out or recipe.train.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an existing file there or on the path, no permission
        raise ConfigError(f"train.out={str(out)!r} cannot be the run's folder: {exc.strerror}") from None
    torch.manual_seed(recipe.train.seed)
    resume_state = None
    start_stage = 0
    if resume:
        import vlkit.hf  # noqa: F401  (registers the Hugging Face checkpoint formats)
        from vlkit.models.bundle import load_bundle

        latest = ckpt_io.latest_checkpoint(out)
        if latest is None:
            log.warning("--resume: no checkpoint in %s/checkpoints; starting from scratch", out)
        else:
            pipe = load_bundle(latest, dtype=torch.float32)
            resume_state = ckpt_io.load_trainer_state(latest)
            start_stage = resume_state[0]["stage"]
            if dist_utils.is_main():  # rows logged after the checkpoint are logged again by the resumed run
                ckpt_io.drop_metrics_after(out / "metrics.jsonl", resume_state[0]["global_step"])
            if resume_state[0]["step"] == 0:
                resume_state = None  # a stage boundary: nothing to restore but the weights
            log.info("resuming from %s (stage %d)", latest, start_stage)
    if pipe is None:
        from vlkit.data.sources import corpus_text, read_source

        def corpus():  # every stage's data once (a `vision` stage may see only some of the tasks)
            seen = set()
            for stage in recipe.stages:
                key = json.dumps(stage.data.train, sort_keys=True, default=str)
                if key in seen:
                    continue
                seen.add(key)
                stream = stream_of(stage.data, recipe.train.seed)
                if stream is not None:  # the tokenizer learns from the stream's first samples
                    yield from corpus_text(stream(g) for g in range(TOKENIZER_CORPUS))
                    continue
                for j, src in enumerate(stage.data.train):
                    yield from corpus_text(read_source(source_spec(src, j), check_images=False))

        pipe = build_pipeline(recipe, corpus)
    if dist_utils.is_main():
        (out / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
    trainer = Trainer(pipe, recipe.train, out, callbacks)
    if resume_state is not None:
        trainer.global_step = resume_state[0]["global_step"]
    elif resume and start_stage:
        trainer.global_step = ckpt_io.load_trainer_state(ckpt_io.latest_checkpoint(out))[0]["global_step"]
    for i, stage in enumerate(recipe.stages):
        if i < start_stage:
            continue
        enc_stats = EncodeStats()
        feed = load_feed(pipe, stage.data, recipe.train.seed + i, enc_stats, order_seed=recipe.train.seed)
        if feed.length is not None:
            log.info("stage %s: %d records indexed, streamed with %d DataLoader worker(s)", stage.name, feed.length,
                     recipe.train.num_workers)
        trainer.run_stage(i, stage, feed, resume_state if i == start_stage else None)
    final = out / "final"
    if dist_utils.is_main():
        pipe.model.eval()
        pipe.save_pretrained(final)
    dist_utils.barrier()
    return final


def train_from_recipe(path: str | Path, overrides: list[str] = (), resume: bool = False) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data = apply_overrides(load_yaml(path), list(overrides))
    if "vq" in data and "stages" not in data:  # a visual-tokenizer recipe
        from vlkit.train.vq_trainer import train_visual_tokenizer_from_recipe

        return train_visual_tokenizer_from_recipe(path, overrides=list(overrides))
    final = train(Recipe.from_dict(data), resume=resume)
    if dist_utils.is_main():
        print(f"final checkpoint: {final}")
    dist_utils.cleanup()
    return final
