"""The training loop: plain PyTorch, readable top to bottom.

A recipe (YAML) names the model, the tokenizer and a list of stages; each stage freezes what it does not train,
reads its data mixture, and runs AdamW with warmup + cosine decay, gradient accumulation and clipping, bf16
autocast, a NaN/inf guard and periodic atomic checkpoints. `batch_size` is the global number of samples per
optimizer step: under torchrun each rank takes a strided share, and the loss is normalized by the global count
of supervised tokens, so N processes compute the same update as one. A `grpo` stage's step samples answers and
learns from their rewards instead (vlkit/train/grpo.py); the loop around it is the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from vlkit import hf as _hf  # noqa: F401  (registers the Hugging Face checkpoint formats: `init:` may be one)
from vlkit.config import PRESETS, ConfigError, ModelConfig, Recipe, StageConfig, TrainConfig, apply_overrides, \
    load_yaml, model_config_from_dict, to_dict
from vlkit.data.collate import Collator, EncodeStats, Example
from vlkit.data.feed import ListFeed, StreamFeed, as_feed
from vlkit.errors import UserError
from vlkit.io import write_json
from vlkit.train import checkpoint as ckpt_io
from vlkit.train import distributed as dist_utils
from vlkit.train.grpo import METRICS as GRPO_METRICS
from vlkit.train.grpo import GRPOStep
from vlkit.train.grpo import check_stage as check_grpo_stage
from vlkit.train.stage_data import load_feed, tokenizer_corpus
from vlkit.train.stages import StageKind, apply_stage, check_vision_stage, param_groups, stage_kind
from vlkit.train.validation import Validator

log = logging.getLogger("vlkit.train")


class TrainingError(UserError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why."""


# ---------------------------------------------------------------------------------------------------------
# building the pipeline


def build_pipeline(recipe: Recipe, corpus: Callable[[], Any]):
    """A fresh model + tokenizer per the recipe (or the `init` checkpoint)."""
    from vlkit.models.vlm import VisionLanguageModel
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
    if preset not in PRESETS:
        raise ConfigError(f"model.preset={preset!r} is unknown; choose one of {sorted(PRESETS)}")
    base = to_dict(PRESETS[preset]())
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value
    base["text"]["vocab_size"] = len(tok)
    base["image_token_id"] = tok.image_pad_id
    base["video_token_id"] = tok.video_pad_id  # None for a tokenizer file without <|video_pad|>: clips as frames
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


def record_video_sampling(cfg: ModelConfig, stage: StageConfig) -> None:
    """The stage's data.video into the model's config (ModelConfig.video, saved with the checkpoint) when the stage
    sets one, so that chat, eval and the server sample clips as training did; a stage that keeps the default
    leaves what an earlier stage (or the init checkpoint) recorded."""
    from dataclasses import replace

    from vlkit.config.video import VideoConfig

    if stage.data.video != VideoConfig():
        cfg.video = replace(stage.data.video)


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


# ---------------------------------------------------------------------------------------------------------
# the loop


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class Throughput:
    """Samples and supervised tokens per second since the last logged row."""

    def __init__(self):
        self.t, self.samples, self.tokens = time.perf_counter(), 0, 0

    def add(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens

    def rates(self) -> dict:
        now = time.perf_counter()
        out = {"samples_per_s": round(self.samples / (now - self.t), 2),
               "tokens_per_s": round(self.tokens / (now - self.t), 1)}
        self.t, self.samples, self.tokens = now, 0, 0
        return out


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
        cfg, kind = self.cfg, stage_kind(stage)
        record_video_sampling(self.pipe.config, stage)
        model, ddp, counts = self._prepare_model(stage, kind)
        if stage.batch_size % (self.world * stage.grad_accum):
            raise ConfigError(f"stage {stage.name}: batch_size={stage.batch_size} must be divisible by "
                              f"world_size x grad_accum = {self.world * stage.grad_accum}")
        feed = as_feed(examples, cfg.seed)
        total = stage.steps if stage.epochs is None else math.ceil(stage.epochs * len(feed) / stage.batch_size)
        opt = torch.optim.AdamW(param_groups(model, stage, cfg.weight_decay), betas=(0.9, 0.95), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(stage.warmup_steps, total))
        v = self.pipe.config.vision
        collate = Collator(self.pipe.tokenizer.pad_id, v.image_mean, v.image_std, stage.data.packing,
                           stage.data.max_length)
        # a stage that learns from rewards (grpo) samples completions and scores them in its own step
        rl = GRPOStep(self, stage, model, collate) if kind.samples_rollouts else None
        step = self._restore(resume, model, opt, sched, feed)
        if rl is not None and resume is not None:
            rl.restore(resume[0])
        bar = self._progress_bar(stage, total, step, counts)
        consecutive_bad, meter = 0, Throughput()
        # this rank's share of each global batch; closing the iterator stops its DataLoader workers
        with contextlib.closing(feed.batches(stage.batch_size, self.rank, self.world, cfg.num_workers)) as batches:
            while step < total:
                if rl is not None:
                    loss, tokens, extra = rl.step(ddp, next(batches), self.global_step)
                else:
                    (loss, tokens), extra = self._forward_backward(ddp, next(batches), stage, kind, collate), {}
                if not math.isfinite(loss):
                    opt.zero_grad(set_to_none=True)
                    consecutive_bad = self._bad_step(stage, step, loss, consecutive_bad + 1)
                    continue  # the next batch takes this step's place
                consecutive_bad = 0
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                           cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                step += 1
                self.global_step += 1
                meter.add(stage.batch_size, int(tokens))
                if step % cfg.log_every == 0 or step == total:
                    self._log_step(stage, step, loss, float(grad_norm), sched.get_last_lr()[0], feed, meter, bar,
                                   extra)
                if bar is not None:
                    bar.update(1)
                self._after_step(stage_index, stage, kind, step, total, feed, opt, sched,
                                 rl.checkpoint_tensors() if rl is not None else None)
        if bar is not None:
            bar.close()
        self._finish_stage(stage_index, kind.adds_lora(stage), model)

    def _prepare_model(self, stage: StageConfig, kind: StageKind):
        """The model set up for the stage (adapters added, modules frozen) and the object the loop calls: DDP or
        FSDP (train.distributed) under torchrun, the model itself in one process. FSDP shards `model` in place
        (same parameter names), so the parameter groups and clipping use it as it is."""
        model = self.pipe.model
        model.to(self.device).train()
        if kind.adds_lora(stage):
            from vlkit.models.lora import apply_lora

            apply_lora(model, r=stage.lora_r, alpha=stage.lora_alpha, dropout=stage.lora_dropout,
                       vision=stage.lora_vision, trainable=("connector",))
        check_vision_stage(stage, model.cfg)
        counts = apply_stage(model, stage)
        ddp = dist_utils.wrap_model(model, self.cfg.distributed, self.device, find_unused=not kind.trains_everything,
                                    precision=self.precision)
        return model, ddp, counts

    def _restore(self, resume: Optional[tuple[dict, Any, dict]], model, opt, sched, feed) -> int:
        """A resumed stage's optimizer, scheduler, data position and RNG; returns the step it goes on from."""
        if resume is None:
            return 0
        state, opt_state, rng = resume
        dist_utils.load_optimizer_state(model, opt, opt_state)
        sched.load_state_dict(state["scheduler"])
        feed.load_state(state)
        self.bad_steps_total = state.get("bad_steps_total", 0)
        ckpt_io.set_rng_state(rng, state["python_rng"])
        return state["step"]

    def _progress_bar(self, stage: StageConfig, total: int, step: int, counts: dict):
        if not dist_utils.is_main():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=step, desc=f"{stage.name} ({counts['trainable']:,} trainable)",
                    unit="step", dynamic_ncols=True, leave=True)

    def _forward_backward(self, ddp, mine: list[Example], stage: StageConfig, kind: StageKind,
                          collate: Collator) -> tuple[float, float]:
        """This rank's share of the step's global batch, in micro-batches: gradients accumulated, the loss
        normalized by the global count of supervised tokens. Returns (global mean loss, global token count)."""
        text = kind.runs_language
        mine = sorted(mine, key=len)  # less padding
        micro = [mine[k::stage.grad_accum] for k in range(stage.grad_accum)]
        local_tokens = sum(e.num_targets if text else len(e.dense or ()) for e in mine)
        global_tokens = dist_utils.all_reduce_sum(float(local_tokens), self.device)
        loss_sum = 0.0
        for k, idx in enumerate(micro):
            batch = collate(idx).to(self.device)
            sync = contextlib.nullcontext() if (k == len(micro) - 1 or self.world == 1) else ddp.no_sync()
            with sync:
                with self.autocast():
                    out = ddp(batch.input_ids, batch.images, **batch.model_inputs(), run_language=text)
                part = out["loss"] * out["num_tokens"]
                (part * self.world / max(global_tokens, 1.0)).backward()
            loss_sum += float(part.detach())
        return dist_utils.all_reduce_sum(loss_sum, self.device) / max(global_tokens, 1.0), global_tokens

    def autocast(self):
        """bf16 autocast when the run's precision is bf16, else nothing."""
        return (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                else contextlib.nullcontext())

    def _bad_step(self, stage: StageConfig, step: int, loss: float, consecutive: int) -> int:
        """A non-finite loss: the step is skipped; too many in a row stop the run. Returns `consecutive`."""
        self.bad_steps_total += 1
        log.warning("step %d: non-finite loss (%s), step skipped (%d in a row)", step, loss, consecutive)
        if consecutive >= self.cfg.max_bad_steps:
            raise TrainingError(f"{consecutive} consecutive non-finite losses in stage {stage.name!r} "
                                f"(last at step {step}); lower the learning rate or check the data. "
                                f"The last good checkpoint is in {self.out / 'checkpoints'}")
        return consecutive

    def _log_step(self, stage: StageConfig, step: int, loss: float, grad_norm: float, lr: float, feed,
                  meter: "Throughput", bar, extra: Optional[dict] = None) -> None:
        """A metrics row; `extra`: the step's own keys (a grpo stage's reward, kl, entropy, ...)."""
        row = {"stage": stage.name, "step": step, "global_step": self.global_step, "loss": round(loss, 5),
               "lr": lr, "grad_norm": round(grad_norm, 4), **meter.rates(),
               "bad_steps": self.bad_steps_total, "epoch": feed.state()["epoch"], **(extra or {})}
        self.log_metrics(row)
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}", sps=row["samples_per_s"])

    def _after_step(self, stage_index: int, stage: StageConfig, kind: StageKind, step: int, total: int, feed,
                    opt, sched, tensors: Optional[dict] = None) -> None:
        """A learning-curve point, a periodic checkpoint (with the stage's `tensors`, e.g. a grpo stage's reference
        policy) and the callbacks, each when due."""
        # a stage that does not run the LM (vision) has nothing to answer with yet
        if self.validator is not None and kind.runs_language and self.global_step % self.cfg.eval_every == 0:
            self.validate(stage.name, step)
        # LoRA stages save only at their end, once the adapters are merged into plain weights
        if self.cfg.save_every and step % self.cfg.save_every == 0 and step < total and not kind.adds_lora(stage):
            self.save(stage_index, step, feed.state(), opt, sched, tensors)
        for cb in self.callbacks:
            cb(self, self.global_step)

    def _finish_stage(self, stage_index: int, lora: bool, model) -> None:
        model = self.pipe.model = dist_utils.unwrap_model(model)  # FSDP: plain again, full weights on every rank
        if lora:
            from vlkit.models.lora import merge_lora

            self.pipe.model = merge_lora(model)
        self.save(stage_index + 1, 0, {"epoch": 0, "pos": 0}, None, None)  # stage boundary: the next starts fresh

    # -- bookkeeping -----------------------------------------------------------------------------------
    def save(self, stage_index: int, step: int, position: dict, opt, sched, tensors: Optional[dict] = None) -> None:
        # FSDP: every rank takes part in gathering the full weights and optimizer state to rank 0
        pipe, opt_state = dist_utils.gather_for_save(self.pipe, opt)
        if dist_utils.is_main():
            state = {"stage": stage_index, "step": step, **position, "global_step": self.global_step,
                     "bad_steps_total": self.bad_steps_total,
                     "scheduler": sched.state_dict() if sched is not None else None}
            ckpt_io.save_checkpoint(pipe, self.out, self.global_step, state, opt_state, self.cfg.keep_last, tensors)
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
            for k in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", *GRPO_METRICS):
                if row.get(k) is not None:
                    self._tb.add_scalar(f"{row['stage']}/{k}", row[k], row["global_step"])
            for k, v in row.items():  # each reward component of a grpo stage
                if k.startswith("reward/") and v is not None:
                    self._tb.add_scalar(f"{row['stage']}/{k}", v, row["global_step"])
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


def resume_run(out: Path) -> tuple[Any, Optional[tuple[dict, Any, dict]], int, int]:
    """The latest checkpoint of the run in `out`: (pipeline, trainer state to restore or None at a stage boundary,
    stage index to go on from, global step); (None, None, 0, 0) when there is none."""
    from vlkit.models.bundle import load_bundle

    latest = ckpt_io.latest_checkpoint(out)
    if latest is None:
        log.warning("--resume: no checkpoint in %s/checkpoints; starting from scratch", out)
        return None, None, 0, 0
    pipe = load_bundle(latest, dtype=torch.float32)
    state = ckpt_io.load_trainer_state(latest)
    state[0]["checkpoint"] = str(latest)  # where a stage reads tensors it saved there (a grpo stage's reference)
    start_stage, global_step = state[0]["stage"], state[0]["global_step"]
    if dist_utils.is_main():  # rows logged after the checkpoint are logged again by the resumed run
        ckpt_io.drop_metrics_after(out / "metrics.jsonl", global_step)
    log.info("resuming from %s (stage %d)", latest, start_stage)
    # at a stage boundary (step 0) there is nothing to restore but the weights
    return pipe, (state if state[0]["step"] else None), start_stage, global_step


def train(recipe: Recipe, out: Optional[str | Path] = None, resume: bool = False, callbacks: tuple = (),
          pipe=None) -> Path:
    """Runs every stage of `recipe`; returns the final checkpoint directory (`<out>/final`)."""
    out = Path(out or recipe.train.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an existing file there or on the path, no permission
        raise ConfigError(f"train.out={str(out)!r} cannot be the run's folder: {exc.strerror}") from None
    torch.manual_seed(recipe.train.seed)
    resume_state, start_stage, global_step = None, 0, 0
    if resume:
        resumed, resume_state, start_stage, global_step = resume_run(out)
        pipe = resumed or pipe
    if pipe is None:
        pipe = build_pipeline(recipe, lambda: tokenizer_corpus(recipe.stages, recipe.train.seed))
    if dist_utils.is_main():
        write_json(out / "recipe.json", to_dict(recipe))
    trainer = Trainer(pipe, recipe.train, out, callbacks)
    trainer.global_step = global_step
    for stage in recipe.stages:  # before any work: a grpo stage's rewards are registered, its setup allowed
        if stage_kind(stage).samples_rollouts:
            check_grpo_stage(stage, recipe.train)
    for i, stage in enumerate(recipe.stages):
        if i < start_stage:
            continue
        enc_stats = EncodeStats()
        rollouts = stage_kind(stage).samples_rollouts
        # a rollout's prompt is scored against its sample: never blanked (prompt dropout is for guidance in SFT)
        data = dataclasses.replace(stage.data, prompt_dropout=0.0) if rollouts else stage.data
        feed = load_feed(pipe, data, recipe.train.seed + i, enc_stats, order_seed=recipe.train.seed,
                         keep_samples=rollouts, answer_format=stage.grpo.answer_format if rollouts else "plain")
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
