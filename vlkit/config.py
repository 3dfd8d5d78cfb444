"""Typed configuration: dataclasses for every component, YAML/JSON round trip, named presets.

Every checkpoint carries its full ModelConfig as `config.json`; recipes are YAML files whose keys mirror
these dataclasses. Unknown keys and bad values raise `ConfigError` naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional


from vlkit.errors import UserError


class ConfigError(UserError):
    """A configuration value a user wrote is wrong; the message names the key and what is allowed."""


# ModelConfig.prompt_format values: the Hugging Face prompt formats vlkit.hf reproduces (its PROMPT_FORMATS says
# how each one lays out images; a test keeps the two lists equal)
PROMPT_FORMATS = ("llava", "idefics3")


# ---------------------------------------------------------------------------------------------------------
# field ranges: declared next to each field, checked by `check_fields` (every from_dict and every construction)


@dataclass(frozen=True)
class Range:
    """The interval a numeric field must lie in (None: unbounded); tuple fields are checked element-wise."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def ranged(default: Any, lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    """A dataclass field whose value must lie in the range (None, for Optional fields, is always allowed)."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


def positive(default: Any) -> Any:
    return ranged(default, 0, lo_open=True)


def non_negative(default: Any) -> Any:
    return ranged(default, 0)


# ---------------------------------------------------------------------------------------------------------
# the config dataclasses


class _Checked:
    """Config dataclasses check their fields when built, from Python or from a dict (errors name the key)."""

    def __post_init__(self) -> None:
        check_fields(self, _section(self))


@dataclass
class ImageProcessorConfig(_Checked):
    """How an image becomes the vision tower's input, in the order of transformers' slow (PIL) image processors:
    pad to square -> resize -> resize to a square -> centre crop -> rescale -> normalize (with the tower's
    vision.image_mean / image_std). The defaults are vlkit's own processor: a bicubic resize to vision.image_size.
    Hugging Face checkpoints get their processor's settings (vlkit.hf reads preprocessor_config.json or
    processor_config.json); vlkit.images.ImageProcessor is the one implementation."""

    pad_to_square: bool = False  # LlavaImageProcessor's do_pad: pad with the mean colour before resizing
    resize: Literal["exact", "shortest_edge", "longest_edge", "none"] = "exact"  # longest_edge: Idefics3's rule
    height: Optional[int] = positive(None)  # resize: exact; None: vision.image_size
    width: Optional[int] = positive(None)
    edge: Optional[int] = positive(None)  # resize: shortest_edge / longest_edge (the aspect ratio is kept)
    resample: Literal["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"] = "bicubic"
    square: Optional[int] = positive(None)  # then resize to square x square (Idefics3/SmolVLM without splitting)
    crop_height: Optional[int] = positive(None)  # centre crop (CLIP: crop_size), zero-padded if the image is smaller
    crop_width: Optional[int] = positive(None)
    rescale_factor: Optional[float] = positive(1 / 255)  # None: no rescale (do_rescale: false)
    normalize: bool = True  # (x - vision.image_mean) / vision.image_std
    image_splitting: bool = False  # Idefics3/SmolVLM tiling: not implemented; true makes every image an error

    def validate(self) -> None:
        check_fields(self, "vision.processor")
        if self.resize in ("shortest_edge", "longest_edge") and self.edge is None:
            raise ConfigError(f"vision.processor.resize={self.resize!r} needs vision.processor.edge")
        if (self.height is None) != (self.width is None) or (self.crop_height is None) != (self.crop_width is None):
            raise ConfigError("vision.processor: give both height and width (and both crop_height and crop_width) "
                              "or neither")


@dataclass
class VisionConfig(_Checked):
    """ViT encoder (SigLIP/CLIP layout)."""

    image_size: int = positive(64)  # the resolution the processor resizes to; the encoder accepts others (interpolated)
    patch_size: int = positive(8)
    num_channels: int = positive(3)
    hidden_size: int = positive(64)
    intermediate_size: int = positive(256)
    num_layers: int = positive(2)
    num_heads: int = positive(4)
    layer_norm_eps: float = positive(1e-6)
    hidden_act: Literal["gelu", "gelu_tanh", "quick_gelu"] = "gelu_tanh"  # gelu_tanh (SigLIP) | quick_gelu (CLIP)
    stem: Literal["patch", "conv"] = "patch"  # patch: one patchify conv (SigLIP/CLIP) | conv: a small CNN (from scratch)
    class_token: bool = False  # CLIP has one; it is dropped from the features handed to the connector
    pre_norm: bool = False  # CLIP's pre_layrnorm
    post_norm: bool = True  # SigLIP's post_layernorm (applied only when the last layer is selected)
    feature_layer: int = -1  # hidden state feeding the connector (LLaVA uses -2, the penultimate layer)
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = positive((0.5, 0.5, 0.5))
    processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)  # resize, crop, rescale ...

    def validate(self) -> None:
        check_fields(self, "vision")
        self.processor.validate()
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision.hidden_size={self.hidden_size} must be divisible by vision.num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size={self.image_size} must be a multiple of vision.patch_size={self.patch_size}")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ConfigError(f"vision.stem=conv needs a power-of-two vision.patch_size, got {self.patch_size}")
        # indexes hidden states as transformers does: 0 = embeddings, i = after layer i, -1 = last
        if not -(self.num_layers + 1) <= self.feature_layer <= self.num_layers:
            raise ConfigError(f"vision.feature_layer={self.feature_layer} out of range for {self.num_layers} layers")


@dataclass
class ConnectorConfig(_Checked):
    """Maps vision features to LM embeddings; `type` picks an entry of the connector registry."""

    type: str = "mlp"  # linear | mlp | resampler | spatial_merge (checked against the registry in validate)
    num_queries: int = positive(16)  # resampler: learnable queries (a square number)
    num_heads: int = positive(4)  # resampler cross-attention heads
    merge_size: int = positive(2)  # spatial_merge: merge_size x merge_size patches become one token
    norm: bool = True  # spatial_merge: LayerNorm before merging (Qwen2-VL); Idefics3's pixel shuffle has none
    merge_proj: Literal["mlp", "linear"] = "mlp"  # spatial_merge: mlp (Qwen2-VL, 2 layers) | linear (Idefics3)

    def validate(self) -> None:
        from vlkit.models.connectors import CONNECTORS

        check_fields(self, "connector")
        if self.type not in CONNECTORS:
            raise ConfigError(f"connector.type={self.type!r} is unknown; choose one of {sorted(CONNECTORS)}")


@dataclass
class TextConfig(_Checked):
    """Decoder LM (Llama/Qwen2 layout)."""

    vocab_size: int = positive(512)  # the LM's full vocabulary: text tokens (+ visual codes for VLUAS models)
    hidden_size: int = positive(64)
    intermediate_size: int = positive(176)
    num_layers: int = positive(2)
    num_heads: int = positive(4)
    num_kv_heads: int = positive(2)
    head_dim: Optional[int] = positive(None)  # default hidden_size // num_heads
    rope_theta: float = positive(10000.0)
    rms_norm_eps: float = positive(1e-6)
    max_position_embeddings: int = positive(2048)
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 has biases on q/k/v
    rope_scaling: Optional[dict] = None  # as in HF configs: {"rope_type": "linear" | "llama3", "factor": ..., ...}

    def validate(self) -> None:
        check_fields(self, "text")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("default", "linear", "llama3"):
                raise ConfigError(f"text.rope_scaling type {kind!r} is not supported; allowed: default, linear, llama3")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"text.num_heads={self.num_heads} must be a multiple of text.num_kv_heads={self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(f"text.hidden_size={self.hidden_size} must be divisible by text.num_heads={self.num_heads}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class VQConfig(_Checked):
    """Visual tokenizer (models/vq.py): its code grid equals the LM's image-token grid."""

    codebook_size: int = positive(256)
    code_dim: int = positive(32)
    depth: int = positive(1)  # residual quantization depth (shared codebook); > 1 uses the depth transformer
    hidden_size: int = positive(64)
    num_layers: int = non_negative(2)
    num_heads: int = positive(4)
    downsample: int = positive(8)  # pixels per code along each side
    image_size: int = positive(64)
    commitment_weight: float = non_negative(0.25)
    ema_decay: float = ranged(0.99, 0, 1, hi_open=True)
    dead_code_threshold: float = ranged(1e-3, 0, 1, hi_open=True)  # a fraction of the mean code usage
    perceptual_weight: float = non_negative(0.0)
    contrastive_weight: float = non_negative(0.0)
    contrastive_dim: int = positive(64)  # text-embedding width for the optional contrastive head (contrastive_weight > 0)

    def validate(self) -> None:
        check_fields(self, "vq")
        if self.image_size % self.downsample:
            raise ConfigError(f"vq.image_size={self.image_size} must be a multiple of vq.downsample={self.downsample}")


@dataclass
class ModelConfig(_Checked):
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vq: Optional[VQConfig] = None
    vision_target: Literal["none", "codes"] = "none"  # none (vision as input) | codes (VLUAS: also predict codes)
    vision_loss_weight: float = non_negative(1.0)  # per visual-code token, relative to a text token
    text_vocab_size: Optional[int] = positive(None)  # tokens below this id are text; codes follow (VLUAS)
    depth_layers: int = positive(2)  # depth transformer layers (vision_target='codes' with vq.depth > 1)
    dense_prediction: bool = False  # NTP-M: train image tokens of segmentation samples on class-name tokens
    dense_loss_weight: float = non_negative(1.0)  # per patch, relative to a text token
    dense_negatives: int = positive(16)  # NTP-M: the top-k scoring non-positive tokens taken as negatives per patch
    # NTP-M reads the image tokens where the LM outputs them ("lm") or where it takes them in ("connector": the LM
    # head scores the connector's output, so each image token is trained to look like the words of its patch)
    dense_from: Literal["lm", "connector"] = "lm"
    max_images: int = positive(8)  # per sample; more is a user error
    # weight init of a fresh model: normal = N(0, 0.02) for every weight (HF's initializer_range; right for wide
    # models); fan_in = N(0, 1/fan_in), which keeps activations O(1) in narrow models trained from scratch, where
    # 0.02 leaves every layer a near-zero map and the LM finds its image path only after a long plateau
    init: Literal["normal", "fan_in"] = "normal"
    image_token_id: int = non_negative(4)  # <|image_pad|> in vlkit's tokenizer; set from the tokenizer for HF models
    pad_token_id: int = non_negative(0)
    # None: vlkit's tokenizer and ChatML prompts. An HF prompt format (PROMPT_FORMATS: llava,
    # idefics3): the checkpoint keeps the imported model's own tokenizer, chat template and image-token layout
    prompt_format: Optional[str] = None

    def validate(self) -> None:
        check_fields(self, "")
        if self.prompt_format is not None and self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format={self.prompt_format!r} is unknown; choose one of "
                              f"{sorted(PROMPT_FORMATS)} or leave it unset (vlkit's ChatML)")
        self.vision.validate()
        self.connector.validate()
        self.text.validate()
        if self.vision_target == "codes":
            if self.vq is None:
                raise ConfigError("vision_target='codes' needs a `vq` config (the visual tokenizer)")
            self.vq.validate()
            if self.text_vocab_size is None:
                raise ConfigError("vision_target='codes' needs text_vocab_size (codes follow the text tokens)")
            need = self.text_vocab_size + self.vq.codebook_size
            if self.text.vocab_size < need:
                raise ConfigError(f"text.vocab_size={self.text.vocab_size} < text_vocab_size + codebook_size = {need}")


@dataclass
class DataConfig(_Checked):
    """Where a stage reads its samples and how they are mixed."""

    train: list = field(default_factory=list)  # [{"path": DIR_OR_FILE, "weight": 1.0, "tasks": [...]}, ...]
    max_length: int = positive(512)
    packing: bool = False  # pack several samples into one row (block-diagonal attention)
    strict: bool = False  # fail on a bad sample instead of skipping it with a counted warning
    # image-generation samples trained with a blank prompt (classifier-free guidance)
    prompt_dropout: float = ranged(0.1, 0, 1, hi_open=True)
    # other image-generation samples trained with 1-2 filler words inserted in the prompt
    prompt_noise: float = ranged(0.0, 0, 1)


@dataclass
class StageConfig(_Checked):
    name: str = "sft"
    train: str = "sft"  # vision (tower + connector on per-patch labels) | align (connector only) | multitask (everything) | sft (vision frozen) | lora (train/stages.py)
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


# ---------------------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a dict: unknown keys, wrong types, choices and ranges raise ConfigError naming
    the dotted key (`stages.0.lr=-1.0 must be > 0`)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{path or cls.__name__}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    hints = _hints(cls)
    kwargs = {key: _check_value(fields[key], hints[key], value, f"{path}.{key}" if path else key)
              for key, value in data.items()}
    return cls(**kwargs)  # __post_init__ checks the defaults of the keys not given


def check_fields(obj: Any, path: str = "") -> None:
    """The one validator of config dataclasses: each field against its type (Literal = the allowed choices) and its
    declared range (`ranged`, `positive`, ...). Values are normalized in place (an int for a float field becomes a
    float); nested config dataclasses are checked too. Errors name the key as `path.field`."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{path}.{f.name}" if path else f.name
        setattr(obj, f.name, _check_value(f, hints[f.name], getattr(obj, f.name), key))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _section(obj: Any) -> str:
    """The key prefix of a config built directly (`TrainConfig` -> `train`, `StageConfig` -> `stage`)."""
    return type(obj).__name__.replace("Config", "").lower()


def _check_value(f: dataclasses.Field, tp: Any, value: Any, key: str) -> Any:
    value = _coerce(tp, value, key)
    rng = f.metadata.get("range")
    for v in (value if isinstance(value, tuple) else (value,)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        if rng is not None and v is not None and v not in rng:
            raise ConfigError(f"{key}={value!r} must be {rng}")
    return value


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        return _coerce(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            check_fields(value, path)
            return value
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} must be an integer")
        return value
    if tp is float:
        return _number(value, path)
    if tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} must be a list of numbers")
        return tuple(_number(v, path) for v in value)
    for kind, what in ((str, "a string"), (list, "a list"), (dict, "a mapping")):
        if tp is kind and not isinstance(value, kind):
            raise ConfigError(f"{path}={value!r} must be {what}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}={value!r} must be a number")
    return float(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML scalar)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `a.b.c=value` in the recipe dict; a list is indexed by position (`stages.1.lr=...`)."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for depth, k in enumerate(keys):
            where = ".".join(keys[:depth]) or "the recipe"
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} has {len(node)} entries (0..{len(node) - 1}), "
                                      f"no {k!r}")
                k = int(k)
            elif not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {where}={node!r} has no key {k!r}")
            if depth == len(keys) - 1:
                node[k] = value
            else:
                if isinstance(node, dict) and node.get(k) is None:
                    node[k] = {}
                node = node[k]
    return data


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def model_config_from_dict(data: dict) -> ModelConfig:
    cfg = from_dict(ModelConfig, data, "model")
    cfg.validate()
    return cfg


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------
# presets


def tiny_model_config(connector: str = "mlp", vocab_size: int = 512, **overrides: Any) -> ModelConfig:
    """The width-64 model that tests and the quickstart use."""
    cfg = ModelConfig(connector=ConnectorConfig(type=connector), text=TextConfig(vocab_size=vocab_size))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


PRESETS = {"tiny": tiny_model_config}
