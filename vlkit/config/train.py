"""Training configuration: a recipe (model, tokenizer, train settings, stages), each stage's data, and what an
encoded example supervises beyond text (TargetSpec)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from vlkit.config.base import ConfigError, _Checked, from_dict, non_negative, positive, ranged
from vlkit.config.video import VideoConfig

# the stage kinds (a stage's `train:`), in the order a recipe uses them; vlkit.train.stages.STAGES gives each its
# trainable modules and properties (tests/config/test_train.py checks the two agree)
STAGE_KINDS = ("vision", "align", "multitask", "sft", "lora", "grpo")
# the answer formats a grpo stage's completions follow: the keys of vlkit.eval.rewards.ANSWER_FORMATS
# (tests/train/test_grpo.py checks the two agree)
ANSWER_FORMAT_NAMES = ("plain", "think", "visionary")


@dataclass
class DataConfig(_Checked):
    """Where a stage reads its samples and how they are mixed."""

    train: list = field(default_factory=list)  # [{"path": DIR_OR_FILE, "weight": 1.0, "tasks": [...]}, ...]
    max_length: int = positive(512)
    packing: bool = False  # pack several samples into one row (block-diagonal attention)
    # global batches of samples of similar length (text + image tokens), sorted within a look-ahead window of
    # group_window batches (vlkit/data/grouping.py): mixed image sizes pad little; streamed feeds only
    group_by_length: bool = False
    group_window: int = positive(16)
    strict: bool = False  # fail on a bad sample instead of skipping it with a counted warning
    # image-generation samples trained with a blank prompt (classifier-free guidance)
    prompt_dropout: float = ranged(0.1, 0, 1, hi_open=True)
    # other image-generation samples trained with 1-2 filler words inserted in the prompt
    prompt_noise: float = ranged(0.0, 0, 1)
    # how the stage's video clips become frames: fps, max_frames, max_total_pixels, temporal_patch_size (vlkit.video)
    video: VideoConfig = field(default_factory=VideoConfig)


@dataclass
class GRPOConfig(_Checked):
    """A `train: grpo` stage's settings (its `grpo:` key; docs/rl.md, "The grpo stage"). The stage's batch_size is
    the number of prompts per step (global); each prompt gets `num_generations` sampled completions."""

    SECTION = "grpo"

    num_generations: int = ranged(8, 2)  # G completions per prompt (a group); advantages are relative within it
    temperature: float = ranged(1.0, 0, 100, lo_open=True)  # sampling temperature of the rollouts (> 0)
    top_p: float = ranged(1.0, 0, 1, lo_open=True)
    max_new_tokens: int = positive(64)
    epsilon: float = ranged(0.2, 0, 1, lo_open=True)  # the ratio is clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: Optional[float] = positive(None)  # None: epsilon (symmetric); DAPO uses 0.28 with epsilon 0.2
    beta: float = non_negative(0.0)  # the KL penalty's weight; 0: no reference model is built
    # k1: logp - ref_logp; k3: exp(ref_logp - logp) - (ref_logp - logp) - 1 (Schulman's unbiased, low-variance
    # estimator of KL(policy || reference), always >= 0; what TRL uses)
    kl_estimator: Literal["k1", "k3"] = "k3"
    scale_rewards: bool = True  # true: (r - group mean) / (group std + 1e-4); false: r - group mean (Dr. GRPO)
    # sequence: mean over each completion's tokens, then over completions (GRPO); token: sum over all completion
    # tokens / their number (DAPO), so long completions weigh more
    loss_type: Literal["sequence", "token"] = "sequence"
    rewards: dict = field(default_factory=dict)  # {reward name: weight}, names of vlkit.eval.rewards.REWARDS
    answer_format: Literal[ANSWER_FORMAT_NAMES] = "plain"  # where a completion's answer is (vlkit.eval.rewards)
    lora: bool = False  # adapters on the LM (the stage's lora_r/alpha/dropout), trained with the connector, merged

    def __post_init__(self) -> None:
        super().__post_init__()
        # the names are checked against the reward registry when the stage starts (a user's own reward is
        # registered by then); here only the shape
        for name, weight in self.rewards.items():
            if not isinstance(name, str) or isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                    or not math.isfinite(weight):
                raise ConfigError(f"grpo.rewards: {name!r}: {weight!r} must map a reward name to a finite number")

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


@dataclass
class StageConfig(_Checked):
    name: str = "sft"
    train: Literal[STAGE_KINDS] = "sft"  # what trains: the kinds of vlkit.train.stages.STAGES
    steps: int = positive(100)
    epochs: Optional[float] = positive(None)  # if set, overrides steps
    lr: float = positive(1e-3)
    lr_vision: Optional[float] = positive(None)  # per-module learning rates; unset: lr
    lr_connector: Optional[float] = positive(None)
    lr_text: Optional[float] = positive(None)
    warmup_steps: int = non_negative(10)
    batch_size: int = positive(16)
    grad_accum: int = positive(1)
    lora_r: int = positive(16)  # train: lora (adapters on the LM's attention and MLP projections; merged at stage end)
    lora_alpha: float = positive(32.0)
    lora_dropout: float = ranged(0.05, 0, 1, hi_open=True)
    lora_vision: bool = False  # also adapt the vision encoder
    data: DataConfig = field(default_factory=DataConfig)
    grpo: Optional[GRPOConfig] = None  # train: grpo only (default settings when not given)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train == "grpo" and self.grpo is None:
            self.grpo = GRPOConfig()
        elif self.train != "grpo" and self.grpo is not None:
            raise ConfigError(f"stage {self.name!r}: `grpo:` settings need `train: grpo` (it has train: {self.train})")


@dataclass
class TrainConfig(_Checked):
    out: str = "runs/train"
    seed: int = non_negative(0)
    weight_decay: float = non_negative(0.0)
    grad_clip: float = non_negative(1.0)  # 0: no clipping
    # auto: bf16 where it is fast (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32; on a CPU without
    # them bf16 autocast is several times slower than fp32. No fp16: without a loss scaler its gradients underflow
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    log_every: int = positive(10)
    save_every: int = non_negative(0)  # 0: only at stage ends
    keep_last: int = non_negative(2)  # 0: keep every checkpoint
    num_workers: int = non_negative(0)
    max_bad_steps: int = positive(10)  # consecutive non-finite losses before the run stops
    distributed: Literal["ddp", "fsdp"] = "ddp"  # fsdp: shard parameters, gradients, optimizer state (torchrun only)
    # a learning curve: every eval_every steps (0: never) score greedy answers on eval_limit samples per task of
    # eval_data (a data folder) -> metrics.jsonl rows {"eval": {task: score}}, TensorBoard, the quickstart report
    eval_every: int = non_negative(0)
    eval_data: Optional[str] = None
    eval_limit: int = positive(50)
    eval_tasks: Optional[list] = None


@dataclass
class TokenizerConfig(_Checked):
    """A recipe's `tokenizer:` section: a tokenizer.json (or a Hugging Face tokenizer folder holding one) to load,
    or the size of a BPE trained on the stage data."""

    path: Optional[str] = None
    vocab_size: int = positive(1024)


@dataclass
class Recipe:
    """A training recipe (YAML): the model, the tokenizer, the run's settings and the stages in order."""

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
        from_dict(TokenizerConfig, data.get("tokenizer") or {}, "tokenizer")  # checked; build_pipeline reads the dict
        return cls(model=data.get("model") or {}, tokenizer=data.get("tokenizer") or {}, init=data.get("init"),
                   vq=data.get("vq"), train=from_dict(TrainConfig, data.get("train") or {}, "train"), stages=stages)


@dataclass
class TargetSpec(_Checked):
    """What an example supervises beyond text (vlkit.data.collate.encode_samples).

    code_offset/encode_codes: vision as target (ModelConfig.vision_target='codes'). `encode_codes` maps uint8
    images (3, H, W) to codes (B, N, D); image tokens are then labelled with `code_offset + code`, and the image
    tokens of a generated image become code tokens in the input too. prompt_dropout: the share of generation
    samples whose user text is blanked (for classifier-free guidance). prompt_noise: the share of the other
    generation samples whose user text gets one or two filler words inserted (see `insert_fillers`).
    dense: NTP-M targets from the sample's segmentation mask, as the first token of each class name (see
    chat.class_token_ids).
    """

    SECTION = "target"

    code_offset: Optional[int] = non_negative(None)
    encode_codes: Optional[Callable] = None  # list of uint8 (3, H, W) tensors -> (B, N, D) codes
    prompt_dropout: float = ranged(0.0, 0, 1, hi_open=True)
    prompt_noise: float = ranged(0.0, 0, 1)
    dense: bool = False
    seed: int = non_negative(0)
