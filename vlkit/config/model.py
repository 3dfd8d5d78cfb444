"""Model configuration: the vision tower, its image processor, the connector, the LM, the visual tokenizer.

Every checkpoint carries its full ModelConfig as `config.json`. The choices that name a registry of a higher
layer (connector types, HF prompt formats) are listed here as plain names, so config imports nothing above it;
tests/config/test_model.py checks that they equal the registries' keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from vlkit.config.video import VideoConfig
from vlkit.config.base import ConfigError, _Checked, check_fields, from_dict, non_negative, positive, ranged

CONNECTOR_TYPES = ("linear", "mlp", "resampler", "spatial_merge")  # vlkit.models.connectors.CONNECTORS
PROMPT_FORMAT_NAMES = ("idefics3", "llava", "qwen2_vl")  # the HF prompt formats (vlkit's hf PROMPT_FORMATS)
# keys a checkpoint's config.json may hold from older vlkit versions, dropped when it is read
LEGACY_MODEL_KEYS = ("pad_token_id",)


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
    # native resolution (Qwen2-VL's smart_resize, docs/native_resolution.md): max_pixels > 0 keeps each image's
    # aspect ratio, its sides rounded to multiples of vision.patch_size * merge_size, its area within
    # [min_pixels, max_pixels]; it replaces the resize steps above. 0: off (a fixed size, as before)
    min_pixels: int = non_negative(0)
    max_pixels: int = non_negative(0)
    merge_size: int = positive(1)  # the sides are multiples of patch_size * merge_size (connector.merge_size)

    @property
    def native(self) -> bool:
        return self.max_pixels > 0

    def validate(self) -> None:
        check_fields(self, "vision.processor")
        if self.min_pixels and not self.max_pixels:
            raise ConfigError("vision.processor.min_pixels needs vision.processor.max_pixels (native resolution)")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"vision.processor.min_pixels={self.min_pixels} > max_pixels={self.max_pixels}")
        if self.native and (self.pad_to_square or self.square is not None or self.crop_height is not None
                            or self.image_splitting or self.resize != "exact" or self.height is not None):
            raise ConfigError("vision.processor.max_pixels (native resolution) sizes each image itself: leave "
                              "pad_to_square, resize, height/width, square, crop and image_splitting at their defaults")
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
    hidden_act: Literal["gelu", "gelu_tanh", "quick_gelu", "silu"] = "gelu_tanh"  # gelu_tanh (SigLIP) | quick_gelu (CLIP)
    stem: Literal["patch", "conv"] = "patch"  # patch: one patchify conv (SigLIP/CLIP) | conv: a small CNN (from scratch)
    class_token: bool = False  # CLIP has one; it is dropped from the features handed to the connector
    pre_norm: bool = False  # CLIP's pre_layrnorm
    post_norm: bool = True  # SigLIP's post_layernorm (applied only when the last layer is selected)
    feature_layer: int = -1  # hidden state feeding the connector (LLaVA uses -2, the penultimate layer)
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = positive((0.5, 0.5, 0.5))
    # patch positions: learned (SigLIP/CLIP: a table for the image_size grid, interpolated to others) | rope2d
    # (Qwen2-VL: 2D rotary embeddings in every attention layer, any grid, no table; native resolution packs the
    # images of a batch into one sequence, docs/native_resolution.md)
    position: Literal["learned", "rope2d"] = "learned"
    rope_theta: float = positive(10000.0)  # rope2d
    # Qwen2-VL / Qwen2.5-VL towers (docs/native_resolution.md); the defaults are the SigLIP/CLIP layout
    # frames per patch: > 1 embeds patches with a Conv3d over that many frames (Qwen2-VL: 2, bias-free); an image
    # is repeated in time, a clip's frames are grouped (its last frame repeated to fill the last group)
    temporal_patch_size: int = positive(1)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # the blocks' norms (Qwen2.5-VL: rmsnorm)
    mlp: Literal["fc", "swiglu"] = "fc"  # fc: fc1 -> act -> fc2 | swiglu: down(act(gate(x)) * up(x)) (Qwen2.5-VL)
    # window attention (Qwen2.5-VL): > 0: each patch attends only to the patches of its window_size x window_size
    # pixel window (windows tile each image from its top-left corner), except in full_attention_layers
    window_size: int = non_negative(0)
    full_attention_layers: list = field(default_factory=list)  # layer indexes that see the whole image
    processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)  # resize, crop, rescale ...

    def validate(self) -> None:
        check_fields(self, "vision")
        self.processor.validate()
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision.hidden_size={self.hidden_size} must be divisible by vision.num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision.image_size={self.image_size} must be a multiple of vision.patch_size={self.patch_size}")
        if self.position == "rope2d" and (self.hidden_size // self.num_heads) % 4:
            raise ConfigError(f"vision.position=rope2d needs a head dim (hidden_size / num_heads = "
                              f"{self.hidden_size // self.num_heads}) divisible by 4")
        if self.position == "rope2d" and self.class_token:
            raise ConfigError("vision.position=rope2d has no position for a class token; set vision.class_token: false")
        if self.temporal_patch_size > 1 and (self.position != "rope2d" or self.stem != "patch" or self.class_token):
            raise ConfigError(f"vision.temporal_patch_size={self.temporal_patch_size} is Qwen2-VL's patch embedding: it "
                              f"needs vision.position=rope2d, vision.stem=patch and no class token")
        if self.window_size and (self.position != "rope2d" or self.window_size % self.patch_size):
            raise ConfigError(f"vision.window_size={self.window_size} needs vision.position=rope2d and a multiple of "
                              f"vision.patch_size={self.patch_size}")
        bad = [i for i in self.full_attention_layers if not isinstance(i, int) or not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(f"vision.full_attention_layers={self.full_attention_layers}: {bad} are not layer indexes "
                              f"0..{self.num_layers - 1}")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ConfigError(f"vision.stem=conv needs a power-of-two vision.patch_size, got {self.patch_size}")
        # indexes hidden states as transformers does: 0 = embeddings, i = after layer i, -1 = last
        if not -(self.num_layers + 1) <= self.feature_layer <= self.num_layers:
            raise ConfigError(f"vision.feature_layer={self.feature_layer} out of range for {self.num_layers} layers")


@dataclass
class ConnectorConfig(_Checked):
    """Maps vision features to LM embeddings; `type` picks an entry of the connector registry."""

    type: Literal[CONNECTOR_TYPES] = "mlp"  # the keys of vlkit.models.connectors.CONNECTORS
    num_queries: int = positive(16)  # resampler: learnable queries (a square number)
    num_heads: int = positive(4)  # resampler cross-attention heads
    merge_size: int = positive(2)  # spatial_merge: merge_size x merge_size patches become one token
    norm: bool = True  # spatial_merge: LayerNorm before merging (Qwen2-VL); Idefics3's pixel shuffle has none
    merge_proj: Literal["mlp", "linear"] = "mlp"  # spatial_merge: mlp (Qwen2-VL, 2 layers) | linear (Idefics3)
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"  # spatial_merge's norm (Qwen2.5-VL: rmsnorm)

    def validate(self) -> None:
        check_fields(self, "connector")


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
    # mrope: Qwen2-VL's M-RoPE, (temporal, height, width) position ids for image tokens (docs/native_resolution.md);
    # text alone gets the same positions and logits as default
    rope: Literal["default", "mrope"] = "default"
    # M-RoPE: how many of the head's dim_per_head / 2 rotary frequencies follow the temporal, height and width
    # position (Qwen2-VL: [16, 24, 24] for 128-dim heads); None: in those proportions
    mrope_section: Optional[list] = None
    # M-RoPE: temporal positions between consecutive temporal patches of a video clip (Qwen2-VL: 1; Qwen2.5-VL:
    # tokens_per_second x the seconds one temporal patch spans); transformers truncates (t * step) to an integer
    mrope_time_step: float = positive(1.0)

    def validate(self) -> None:
        check_fields(self, "text")
        if self.rope == "mrope" and self.mrope_section is not None:
            sec, half = list(self.mrope_section), self.dim_per_head // 2
            if len(sec) != 3 or any(not isinstance(x, int) or x < 0 for x in sec) or sum(sec) != half:
                raise ConfigError(f"text.mrope_section={self.mrope_section} must be 3 non-negative integers summing "
                                  f"to dim_per_head / 2 = {half}")
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

    @property
    def mrope_sections(self) -> list[int]:
        """M-RoPE's (temporal, height, width) split of the dim_per_head / 2 frequencies."""
        if self.mrope_section is not None:
            return list(self.mrope_section)
        half = self.dim_per_head // 2
        t = half // 4
        return [t, (half - t) // 2, half - t - (half - t) // 2]


@dataclass
class VQConfig(_Checked):
    """Visual tokenizer (vlkit.models.vq): its code grid equals the LM's image-token grid."""

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
    # the slots of video clips ((T, 3, H, W) inputs); None: clips fill image_token_id slots like images
    video_token_id: Optional[int] = non_negative(None)
    # None: vlkit's tokenizer and ChatML prompts. An HF prompt format (the keys of vlkit's HF PROMPT_FORMATS):
    # the checkpoint keeps the imported model's own tokenizer, chat template and image-token layout
    prompt_format: Optional[Literal[PROMPT_FORMAT_NAMES]] = None
    # how this model's video clips are sampled (fps, frame and pixel budgets): the trainer records the data.video of
    # the last stage that sets one, so that chat, eval and the server sample clips as training did; default: VideoConfig()
    video: VideoConfig = field(default_factory=VideoConfig)

    def validate(self) -> None:
        check_fields(self, "")
        self.vision.validate()
        self.connector.validate()
        self.text.validate()
        proc = self.vision.processor
        if proc.native and self.connector.type == "spatial_merge" and proc.merge_size != self.connector.merge_size:
            raise ConfigError(f"vision.processor.merge_size={proc.merge_size} must equal connector.merge_size="
                              f"{self.connector.merge_size}: native sizes are multiples of patch_size * merge_size")
        if proc.native and (self.vision_target == "codes" or self.dense_prediction):
            raise ConfigError("native resolution (vision.processor.max_pixels) does not yet combine with "
                              "vision_target: codes or dense_prediction, which need one fixed image size")
        if self.vision_target == "codes":
            if self.vq is None:
                raise ConfigError("vision_target='codes' needs a `vq` config (the visual tokenizer)")
            self.vq.validate()
            if self.text_vocab_size is None:
                raise ConfigError("vision_target='codes' needs text_vocab_size (codes follow the text tokens)")
            need = self.text_vocab_size + self.vq.codebook_size
            if self.text.vocab_size < need:
                raise ConfigError(f"text.vocab_size={self.text.vocab_size} < text_vocab_size + codebook_size = {need}")


def model_config_from_dict(data: dict) -> ModelConfig:
    """A checkpoint's or recipe's model mapping -> a validated ModelConfig (errors name `model.<key>`)."""
    cfg = from_dict(ModelConfig, {k: v for k, v in data.items() if k not in LEGACY_MODEL_KEYS}, "model")
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------------
# presets: a recipe's `model: {preset: NAME, ...overrides}` starts from PRESETS[NAME]


def tiny_model_config(connector: str = "mlp", vocab_size: int = 512, **overrides: Any) -> ModelConfig:
    """The width-64 model that tests and the quickstart use."""
    cfg = ModelConfig(connector=ConnectorConfig(type=connector), text=TextConfig(vocab_size=vocab_size))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


PRESETS = {"tiny": tiny_model_config}
