"""GRPO (Group Relative Policy Optimization, DeepSeekMath; as TRL's GRPOTrainer) for `train: grpo` stages.

One optimizer step, on each rank's share of the step's prompts (docs/rl.md, "The grpo stage"):

1. Rollouts. Each prompt (a sample up to its first assistant answer, with its images) is sampled G times
   (grpo.num_generations) with vlkit's batched KV-cache generation (temperature, top-p), the model in eval mode and
   a generator seeded by (train.seed, global step, rank), so a resumed run samples exactly what the uninterrupted
   one sampled. Completions keep their stop token when they have one. A prompt whose answer is an image (VLUAS:
   the first assistant answer opens with `<|gen_start|>`) continues after `<|gen_start|><|vision_start|>` with
   one visual code per image token instead (vlkit.infer.generate.sample_code_rows: code 0 from the LM head
   restricted to the code range, unguided, depth-1 tokenizers only); its completion is those code tokens.
2. Rewards. Each completion is decoded into a `Rollout` and scored by the stage's weighted rewards
   (vlkit.eval.rewards.score): text with special tokens dropped, codes by the visual tokenizer into
   `Rollout.image` (a PIL image).
3. Advantages, per group of G: A = (r - mean) / (std + 1e-4), or r - mean with scale_rewards: false (Dr. GRPO).
   A group whose completions all got the same reward teaches nothing (A = 0).
4. The loss, on prompt + completion sequences run teacher-forced through the policy (with the images):
   per completion token, ratio = exp(logp - logp_old) and
       loss_t = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL_t(policy || ref).
   There is one policy update per batch of rollouts, so logp_old is the detached logp of the same forward and the
   ratio is 1: the clipped form is kept as TRL keeps it with num_iterations 1 (its gradient is A * grad logp).
   logp is taken over what the token could have been sampled from: text ids (without the pads) for a text
   token, the code range for a code token. The reference is a frozen copy of the model at the stage start, built
   only when beta > 0. `sequence`
   averaging takes the mean over each completion's tokens, then over completions (GRPO); `token` sums over all
   completion tokens and divides by their number (DAPO).

Normalisation as the trainer's: each rank's loss sum is divided by the global count (completions or tokens) and
multiplied by the world size, so DDP's gradient mean gives the update of one process holding every rollout.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from vlkit.chat import IGNORE
from vlkit.config import ConfigError, StageConfig, TrainConfig
from vlkit.data.collate import Collator, Example, image_spans
from vlkit.errors import UserError
from vlkit.eval.rewards import ANSWER_FORMATS, Rollout, check_weights, score
from vlkit.train import checkpoint as ckpt_io
from vlkit.train import distributed as dist_utils

if TYPE_CHECKING:
    from vlkit.train.trainer import Trainer

STD_EPS = 1e-4  # added to a group's reward std before dividing (a group of equal rewards gives A = 0, not NaN)
REFERENCE = "reference"  # the reference policy's weights in a checkpoint's trainer state
# the keys a grpo stage adds to its metrics rows (besides `reward/<name>` per reward; kl only when beta > 0)
METRICS = ("reward", "reward_std", "kl", "clip_fraction", "entropy", "completion_length")


# ---------------------------------------------------------------------------------------------------------
# the objective, as pure functions


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """Rewards (prompts, G) -> advantages (prompts, G): each reward minus its group's mean, divided by the group's
    (unbiased) standard deviation + 1e-4 when `scale` (GRPO), left unscaled otherwise (Dr. GRPO)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + STD_EPS)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates of KL(policy || reference) from the sampled tokens' log-probs under each.
    k1: logp - ref_logp (unbiased, can be negative); k3: exp(ref_logp - logp) - (ref_logp - logp) - 1 (Schulman's
    unbiased, low-variance estimator, always >= 0, as TRL uses)."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1.0
    raise ConfigError(f"grpo.kl_estimator={estimator!r} is not allowed; choose one of ['k1', 'k3']")


def clipped_objective(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                      epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, negated into a loss: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high)
    * A), ratio = exp(logp - logp_old). Returns (loss per token, whether the clipped term is the one taken: there
    the token gets no gradient)."""
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def loss_sum(per_token: torch.Tensor, seq: torch.Tensor, lengths: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The numerator of the averaged loss: `token` sums every token's loss (divided later by the global number of
    completion tokens); `sequence` sums each completion's mean token loss (divided later by the global number of
    completions). seq[t]: the completion of token t; lengths[i]: completion i's token count."""
    if loss_type == "token":
        return per_token.sum()
    if loss_type == "sequence":
        return (per_token / lengths[seq].to(per_token.dtype)).sum()
    raise ConfigError(f"grpo.loss_type={loss_type!r} is not allowed; choose one of ['sequence', 'token']")


def check_stage(stage: StageConfig, train_cfg: TrainConfig) -> None:
    """What the config layer cannot check for a grpo stage: its rewards are registered, its answer format known, and
    the run is not FSDP-sharded (rollouts need the full weights on each rank)."""
    g = stage.grpo
    try:
        check_weights(g.rewards)
    except UserError as exc:
        raise ConfigError(f"stage {stage.name!r}: {exc}") from None
    if g.answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"stage {stage.name!r}: grpo.answer_format={g.answer_format!r} is unknown; choose one of "
                          f"{sorted(ANSWER_FORMATS)}")
    if train_cfg.distributed == "fsdp":
        raise ConfigError(f"stage {stage.name!r}: train: grpo runs under train.distributed=ddp only (its rollouts "
                          "sample from the full weights on every rank)")


# ---------------------------------------------------------------------------------------------------------
# the step


@dataclass
class Rollouts:
    """One step's completions on this rank, G consecutive ones per prompt."""

    sequences: list[Example]  # prompt + completion, labels on the completion tokens only
    advantages: torch.Tensor  # (n,) one per completion
    sums: dict  # metric sums (rewards, lengths, ...) to all-reduce


class GRPOStep:
    """A grpo stage's step, built by the trainer at the stage start (after adapters are added and modules frozen)."""

    def __init__(self, trainer: "Trainer", stage: StageConfig, model: torch.nn.Module, collate: Collator):
        from vlkit.infer.chat import ChatBundle

        check_stage(stage, trainer.cfg)
        self.trainer, self.stage, self.cfg, self.model, self.collate = trainer, stage, stage.grpo, model, collate
        self.tokenizer = trainer.pipe.tokenizer
        self.gen = ChatBundle.of(trainer.pipe).generation_config(
            max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        # a sampled image or video pad would have no image to fill it in the teacher-forced pass: never sampled
        mcfg = model.cfg
        self.gen.suppress_token_ids = tuple(t for t in (mcfg.image_token_id, mcfg.video_token_id) if t is not None)
        # what each sampled token was drawn from, for its log-prob: text ids without the pads, or the code range
        ids = torch.arange(mcfg.text.vocab_size)
        self.text_ids = ids < (self.gen.vocab_limit if self.gen.vocab_limit is not None else mcfg.text.vocab_size)
        self.text_ids[list(self.gen.suppress_token_ids)] = False
        self.code_ids = None
        if model.code_offset is not None:
            self.code_ids = (ids >= model.code_offset) & (ids < model.code_offset + mcfg.vq.codebook_size)
        self.reference = None
        if self.cfg.beta > 0:
            self.reference = self._frozen_copy(model)

    @staticmethod
    def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
        """The policy as it is now, frozen: the reference. Fresh adapters (B = 0) merge into exactly the base."""
        from vlkit.models.lora import has_lora, merge_lora

        ref = copy.deepcopy(model)
        if has_lora(ref):
            ref = merge_lora(ref)
        ref.requires_grad_(False)
        return ref.eval()

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_tensors(self) -> Optional[dict]:
        """What a checkpoint must hold besides the policy to resume exactly: the reference's weights."""
        return None if self.reference is None else {REFERENCE: self.reference.state_dict()}

    def restore(self, state: dict) -> None:
        """A resumed stage's reference policy (the model at the stage start), from the checkpoint it resumes."""
        if self.reference is not None:
            tensors = ckpt_io.load_tensors(Path(state["checkpoint"]), REFERENCE)
            self.reference.load_state_dict(tensors)

    # -- one step ------------------------------------------------------------------------------------------
    def seed(self, global_step: int) -> int:
        """The rollouts' sampling seed: a function of (train seed, global step, rank) only."""
        return (self.trainer.cfg.seed * 1_000_003 + global_step) * 65_537 + self.trainer.rank

    def prompt_images(self, ex: Example, prompt: list[int]) -> list[torch.Tensor]:
        """The images (and clips) of `ex` that its prompt holds: all of them unless a later turn has some."""
        pads = [t for t in (self.model.cfg.image_token_id, self.model.cfg.video_token_id) if t is not None]
        if sum(prompt.count(t) for t in pads) == sum(ex.input_ids.count(t) for t in pads):
            return ex.images
        return ex.images[:sum(len(image_spans(prompt, t)) for t in pads)]  # one run of pads per image, in order

    def draws_image(self, ex: Example) -> bool:
        """Whether `ex`'s first assistant answer is an image to generate (VLUAS): its rollouts sample visual codes."""
        return bool(ex.target_images) and ex.prompt_length < len(ex.input_ids) \
            and ex.input_ids[ex.prompt_length] == self.tokenizer.gen_start_id

    @torch.no_grad()
    def rollouts(self, mine: list[Example], global_step: int) -> Rollouts:
        from vlkit.infer.generate import generate_stream

        G, model, tok = self.cfg.num_generations, self.model, self.tokenizer
        prompts, pixels = [], []
        for ex in mine:
            if ex.sample is None:
                raise UserError(f"sample {ex.sample_id}: a grpo stage scores completions against their samples; "
                                "encode its data with keep_samples=True (train() does)")
            ids = ex.input_ids[:ex.prompt_length]
            px = [self.collate.normalize(im).to(self.trainer.device) for im in self.prompt_images(ex, ids)]
            if self.draws_image(ex):  # the answer opens an image: the codes that follow are what is sampled
                ids = ids + [tok.gen_start_id, tok.vision_start_id]
            prompts += [ids] * G
            pixels += [px] * G
        drawn = [r for r in range(len(prompts)) if self.draws_image(mine[r // G])]
        written = [r for r in range(len(prompts)) if not self.draws_image(mine[r // G])]
        gen = copy.copy(self.gen)
        gen.seed = self.seed(global_step)
        completions: list[list[int]] = [[] for _ in prompts]
        pictures: dict[int, object] = {}  # row -> its image (image rollouts)
        was_training = model.training
        model.eval()
        try:
            with self.trainer.autocast():
                if written:
                    for row, t in generate_stream(model, [prompts[r] for r in written], [pixels[r] for r in written],
                                                  gen, tok.pad_id):
                        completions[written[row]].append(t)
                if drawn:
                    drawings = self.draw([prompts[r] for r in drawn], [pixels[r] for r in drawn], gen.seed,
                                         mine[drawn[0] // G])
                    for r, (codes, picture) in zip(drawn, drawings):
                        completions[r], pictures[r] = codes, picture
        finally:
            model.train(was_training)
        stops = set(gen.stop_token_ids)
        texts = ["" if r in pictures else tok.decode([t for t in c if t not in stops], skip_special=True).strip()
                 for r, c in enumerate(completions)]
        rollouts = [Rollout(text, mine[r // G].sample, self.cfg.answer_format, image=pictures.get(r))
                    for r, text in enumerate(texts)]
        totals, parts = score(rollouts, self.cfg.rewards)
        rewards = torch.tensor(totals, dtype=torch.float64).view(len(mine), G)
        advantages = group_advantages(rewards, self.cfg.scale_rewards).flatten().float()
        sequences = [Example(p + c, [IGNORE] * len(p) + c, mine[i // G].images[:len(px)], mine[i // G].task,
                             mine[i // G].sample_id)
                     for i, (p, c, px) in enumerate(zip(prompts, completions, pixels))]
        sums = {"reward": float(rewards.sum()), "reward_std": float(rewards.std(dim=1).sum()),
                "groups": float(len(mine)), "completions": float(len(completions)),
                "completion_tokens": float(sum(len(c) for c in completions)),
                **{f"reward/{name}": float(sum(values)) for name, values in parts.items()}}
        return Rollouts(sequences, advantages, sums)

    def draw(self, prompts: list[list[int]], pixels: list[list[torch.Tensor]], seed: int,
             first: Example) -> list[tuple[list[int], object]]:
        """Image rollouts: visual codes sampled after each prompt (unguided, the stage's temperature and top-p), as
        (code token ids, the PIL image the visual tokenizer decodes them to) per prompt."""
        from vlkit.config import ImageGenerationConfig
        from vlkit.infer.generate import sample_code_rows
        from vlkit.models.vq import tensor_to_pil

        vq = self.trainer.pipe.vq
        if vq is None or self.model.code_offset is None:
            raise UserError(f"sample {first.sample_id}: its answer is an image, which a grpo stage can sample only "
                            "with a VLUAS model (vision_target: codes) and its visual tokenizer (vq/)")
        if self.model.depth is not None:
            raise UserError(f"sample {first.sample_id}: grpo image rollouts support depth-1 visual tokenizers only "
                            f"(this one has vq.depth={self.model.cfg.vq.depth}: the depth transformer's residual "
                            "codes would need their own log-probs in the loss)")
        gen = ImageGenerationConfig(cfg_scale=1.0, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                    seed=seed)
        codes = sample_code_rows(self.model, prompts, vq.num_codes, gen, self.tokenizer.pad_id, pixels)
        with torch.autocast(codes.device.type, enabled=False):
            pictures = tensor_to_pil(vq.decode_codes(codes.to(vq.quantizer.codebook.device)))
        return [((c + self.model.code_offset).tolist(), p) for c, p in zip(codes, pictures)]

    def step(self, ddp, mine: list[Example], global_step: int) -> tuple[float, float, dict]:
        """Rollouts, rewards and one accumulated backward pass over this rank's share of the step's prompts.
        Returns (global loss, global completion tokens, the metrics row's GRPO keys)."""
        device, world, cfg = self.trainer.device, self.trainer.world, self.cfg
        ro = self.rollouts(mine, global_step)
        n = len(ro.sequences)
        local_tokens = ro.sums["completion_tokens"]
        denominator = dist_utils.all_reduce_sum(local_tokens if cfg.loss_type == "token" else float(n), device)
        micro = [list(range(k, n, self.stage.grad_accum)) for k in range(self.stage.grad_accum)]
        sums = dict(ro.sums, loss=0.0, kl=0.0, clipped=0.0, entropy=0.0)
        for k, idx in enumerate(micro):
            if not idx:
                continue
            sync = contextlib.nullcontext() if (k == len(micro) - 1 or world == 1) else ddp.no_sync()
            with sync:
                part = self._loss(ddp, [ro.sequences[i] for i in idx], ro.advantages[idx].to(device), sums)
                (part * world / max(denominator, 1.0)).backward()
        totals = dist_utils.all_reduce_sums(sums, device)
        loss = totals.pop("loss") / max(denominator, 1.0)
        return loss, totals["completion_tokens"], self.metrics(totals)

    def _loss(self, ddp, sequences: list[Example], advantages: torch.Tensor, sums: dict) -> torch.Tensor:
        """The loss numerator (loss_sum) of a micro-batch of completions; adds its metric sums into `sums`."""
        cfg = self.cfg
        batch, at, tokens, seq, lengths = self.targets(sequences)
        logp, entropy = self.logprobs(ddp, batch, at, tokens)
        per_token, clipped = clipped_objective(logp, logp.detach(), advantages[seq], cfg.epsilon, cfg.clip_high)
        if self.reference is not None:
            with torch.no_grad():
                ref_logp, _ = self.logprobs(self.reference, batch, at, tokens)
            kl = kl_estimate(logp, ref_logp, cfg.kl_estimator)
            per_token = per_token + cfg.beta * kl
            sums["kl"] += float(kl.detach().sum())
        part = loss_sum(per_token, seq, lengths, cfg.loss_type)
        sums["loss"] += float(part.detach())
        sums["clipped"] += float(clipped.sum())
        sums["entropy"] += float(entropy.sum())
        return part

    def targets(self, sequences: list[Example]):
        """The collated micro-batch and what the loss scores in it: (batch, at (B, T) the positions whose logits
        score a completion token, those tokens (M,), each one's completion (M,), each completion's length (n,))."""
        batch = self.collate(sequences).to(self.trainer.device)
        target = batch.labels[:, 1:]
        keep = target != IGNORE
        at = torch.zeros_like(batch.labels, dtype=torch.bool)
        at[:, :-1] = keep  # the logits at t score the token at t + 1
        seq = torch.arange(len(sequences), device=keep.device)[:, None].expand_as(keep)[keep]
        return batch, at, target[keep], seq, keep.sum(1)

    def logprobs(self, module, batch, at: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The completion tokens' log-probs under `module` (the policy, DDP-wrapped or not, or the reference),
        teacher-forced with the prompts' images, and each position's entropy."""
        with self.trainer.autocast():
            logits = module(batch.input_ids, batch.images, logits_at=at)["logits"]
        return self._token_logprobs(logits, tokens)

    def _token_logprobs(self, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of `tokens` under logits (M, V) / temperature (the distribution they were sampled from, before
        top-p), and each position's entropy (detached) over that distribution."""
        # the policy scores what it could sample: text ids without the pads for a text token, the code range for
        # a visual code (image rollouts; text ids are all below the codes)
        allowed = self.text_ids.to(logits.device)[None]
        if self.code_ids is not None:
            is_code = tokens >= self.model.code_offset
            allowed = torch.where(is_code[:, None], self.code_ids.to(logits.device)[None], allowed)
        logits = logits.float().masked_fill(~allowed, float("-inf"))
        logprobs = torch.log_softmax(logits / self.cfg.temperature, dim=-1)
        entropy = torch.special.entr(logprobs.detach().exp()).sum(-1)  # -p log p, 0 where p = 0
        return logprobs.gather(1, tokens[:, None]).squeeze(1), entropy

    def metrics(self, t: dict) -> dict:
        """The metrics row's GRPO keys from the global sums of one step."""
        tokens, completions = max(t["completion_tokens"], 1.0), max(t["completions"], 1.0)
        reward = t["reward"] / completions
        row = {"reward": round(reward, 5), "reward_std": round(t["reward_std"] / max(t["groups"], 1.0), 5),
               **{k: round(v / completions, 5) for k, v in t.items() if k.startswith("reward/")},
               "clip_fraction": round(t["clipped"] / tokens, 5), "entropy": round(t["entropy"] / tokens, 5),
               "completion_length": round(t["completion_tokens"] / completions, 3)}
        if self.reference is not None:
            row["kl"] = round(t["kl"] / tokens, 6)
        return {k: (v if math.isfinite(v) else None) for k, v in row.items()}
