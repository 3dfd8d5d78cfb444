"""Typed configuration: dataclasses for every component, YAML/JSON round trip, named presets.

Every checkpoint carries its full ModelConfig as `config.json`; recipes are YAML files whose keys mirror
these dataclasses. Unknown keys and bad values raise `ConfigError` naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from vlkit.errors import UserError


class ConfigError(UserError):
    """A configuration value a user wrote is wrong; the message names the key and what is allowed."""


@dataclass
class VisionConfig:
    """ViT encoder (SigLIP/CLIP layout)."""

    image_size: int = 64  # the resolution the processor resizes to; the encoder accepts others (interpolated)
    patch_size: int = 8
    num_channels: int = 3
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_tanh"  # gelu | gelu_tanh (SigLIP) | quick_gelu (CLIP)
    class_token: bool = False  # CLIP has one; it is dropped from the features handed to the connector
    pre_norm: bool = False  # CLIP's pre_layrnorm
    post_norm: bool = True  # SigLIP's post_layernorm (applied only when the last layer is selected)
    feature_layer: int = -1  # hidden state feeding the connector (LLaVA uses -2, the penultimate layer)
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)

    def validate(self) -> None:
        _positive(self, "image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision.hidden_size={self.hidden_size} must be divisible by vision.num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size={self.image_size} must be a multiple of vision.patch_size={self.patch_size}")
        _choice(self, "hidden_act", ("gelu", "gelu_tanh", "quick_gelu"))
        # indexes hidden states as transformers does: 0 = embeddings, i = after layer i, -1 = last
        if not -(self.num_layers + 1) <= self.feature_layer <= self.num_layers:
            raise ConfigError(f"vision.feature_layer={self.feature_layer} out of range for {self.num_layers} layers")


@dataclass
class ConnectorConfig:
    """Maps vision features to LM embeddings; `type` picks an entry of the connector registry."""

    type: str = "mlp"  # linear | mlp | resampler | spatial_merge
    num_queries: int = 16  # resampler: learnable queries (a square number)
    num_heads: int = 4  # resampler cross-attention heads
    merge_size: int = 2  # spatial_merge: merge_size x merge_size patches become one token
    norm: bool = True  # spatial_merge: LayerNorm before merging (Qwen2-VL); Idefics3's pixel shuffle has none
    merge_proj: str = "mlp"  # spatial_merge: mlp (Qwen2-VL, 2 layers) | linear (Idefics3: one bias-free Linear)

    def validate(self) -> None:
        from vlkit.models.connectors import CONNECTORS

        if self.type not in CONNECTORS:
            raise ConfigError(f"connector.type={self.type!r} is unknown; choose one of {sorted(CONNECTORS)}")
        _positive(self, "num_queries", "num_heads", "merge_size")
        _choice(self, "merge_proj", ("mlp", "linear"))


@dataclass
class TextConfig:
    """Decoder LM (Llama/Qwen2 layout)."""

    vocab_size: int = 512  # the LM's full vocabulary: text tokens (+ visual codes for VLUAS models)
    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # default hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 has biases on q/k/v
    rope_scaling: Optional[dict] = None  # as in HF configs: {"rope_type": "linear" | "llama3", "factor": ..., ...}

    def validate(self) -> None:
        _positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ConfigError(f"text.rope_scaling must be a mapping like {{rope_type: llama3, factor: 8}}, "
                                  f"got {self.rope_scaling!r}")
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
class VQConfig:
    """Visual tokenizer (models/vq.py): its code grid equals the LM's image-token grid."""

    codebook_size: int = 256
    code_dim: int = 32
    depth: int = 1  # residual quantization depth (shared codebook); > 1 uses the depth transformer
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    downsample: int = 8  # pixels per code along each side
    image_size: int = 64
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 1e-3
    perceptual_weight: float = 0.0
    contrastive_weight: float = 0.0
    contrastive_dim: int = 64  # text-embedding width for the optional contrastive head (used when contrastive_weight > 0)

    def validate(self) -> None:
        _positive(self, "codebook_size", "code_dim", "depth", "hidden_size", "downsample", "image_size")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vq: Optional[VQConfig] = None
    vision_target: str = "none"  # none (vision as input) | codes (VLUAS: also predict visual codes)
    vision_loss_weight: float = 1.0  # per visual-code token, relative to a text token
    text_vocab_size: Optional[int] = None  # tokens below this id are text; codes follow (VLUAS)
    depth_layers: int = 2  # depth transformer layers (vision_target='codes' with vq.depth > 1)
    dense_prediction: bool = False  # NTP-M: train image tokens of segmentation samples on class-name tokens
    dense_loss_weight: float = 1.0  # per patch, relative to a text token
    dense_negatives: int = 16  # NTP-M: the top-k scoring non-positive tokens taken as negatives per patch
    max_images: int = 8  # per sample; more is a user error
    image_token_id: int = 4  # <|image_pad|> in vlkit's tokenizer; set from the tokenizer for HF models
    pad_token_id: int = 0

    def validate(self) -> None:
        self.vision.validate()
        self.connector.validate()
        self.text.validate()
        _choice(self, "vision_target", ("none", "codes"))
        _positive(self, "depth_layers", "dense_negatives")
        for name in ("vision_loss_weight", "dense_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
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
class DataConfig:
    """Where a stage reads its samples and how they are mixed."""

    train: list = field(default_factory=list)  # [{"path": DIR_OR_FILE, "weight": 1.0, "tasks": [...]}, ...]
    max_length: int = 512
    packing: bool = False  # pack several samples into one row (block-diagonal attention)
    strict: bool = False  # fail on a bad sample instead of skipping it with a counted warning
    prompt_dropout: float = 0.1  # image-generation samples trained with a blank prompt (classifier-free guidance)
    prompt_noise: float = 0.0  # other image-generation samples trained with 1-2 filler words inserted in the prompt


@dataclass
class StageConfig:
    name: str = "sft"
    train: str = "sft"  # align (connector only) | multitask (everything) | sft (vision encoder frozen) | lora
    steps: int = 100
    epochs: Optional[float] = None  # if set, overrides steps
    lr: float = 1e-3
    lr_vision: Optional[float] = None
    lr_connector: Optional[float] = None
    lr_text: Optional[float] = None
    warmup_steps: int = 10
    batch_size: int = 16
    grad_accum: int = 1
    lora_r: int = 16  # train: lora (adapters on the LM's attention and MLP projections; merged at stage end)
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_vision: bool = False  # also adapt the vision encoder
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class TrainConfig:
    out: str = "runs/train"
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "bf16"  # bf16 | fp32
    log_every: int = 10
    save_every: int = 0  # 0: only at stage ends
    keep_last: int = 2
    num_workers: int = 0
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    distributed: str = "ddp"  # ddp | fsdp (shard parameters, gradients, optimizer state; under torchrun only)

    def __post_init__(self) -> None:
        _choice(self, "distributed", ("ddp", "fsdp"))


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
    """Build dataclass `cls` from a dict, checking keys and basic types; errors name the dotted key."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{path or cls.__name__}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{path}.{key}" if path else key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        return _coerce(tp, value, path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is tuple:
        return tuple(value)
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML scalar)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if isinstance(node, list):
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
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


# ---------------------------------------------------------------------------------------------------------


def _positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.replace("Config", "").lower()
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{section}.{name}={value!r} must be a positive integer")


def _choice(obj: Any, name: str, allowed: tuple) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        section = type(obj).__name__.replace("Config", "").lower()
        raise ConfigError(f"{section}.{name}={value!r} is not allowed; choose one of {list(allowed)}")
