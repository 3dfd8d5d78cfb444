"""Hugging Face interop: load HF checkpoints into vlkit modules, export vlkit models as llava-hf, compose VLMs.

Everything here reads `config.json` / `*.safetensors` / `tokenizer.json` directly, so loading needs neither
transformers nor a network. Parameter names map by prefix rules (vlkit's modules already use the SigLIP/CLIP
and Llama/Qwen2 names below the prefix); configs map field by field, with the HF class defaults for fields a
`config.json` leaves out (transformers 4.x writes only non-default values).

Supported (`FORMATS`, keyed by HF `model_type`): vision encoders siglip / clip (whole or vision-only), decoder
LMs llama (incl. SmolLM2) / qwen2, whole VLMs llava (LLaVA-1.5, llava-hf layout) and idefics3 / smolvlm.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from vlkit.config import ConfigError, ConnectorConfig, ImageProcessorConfig, ModelConfig, TextConfig, VisionConfig
from vlkit.errors import CheckpointError, UserError
from vlkit.tokenizer import IMAGE_PLACEHOLDER  # vlkit's placeholder in sample text (not an HF model's image token)

CONFIG_FILE = "config.json"


class ExportError(UserError):
    """A model cannot be written in the requested format; the message says which property prevents it."""


# ---------------------------------------------------------------------------------------------------------
# files


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}; expected a vlkit checkpoint or a Hugging Face model")
    return read_json(path / CONFIG_FILE)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        bins = [p.name for p in path.glob("*.bin")]
        hint = f" (found {bins}: convert them to safetensors; vlkit never unpickles weights)" if bins else ""
        raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json{hint}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(path / name)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path / name} is missing, corrupt or truncated: {exc}") from None
    return state


# ---------------------------------------------------------------------------------------------------------
# config translation (HF -> vlkit)

# the HF config classes' defaults, for fields that a config.json written with `use_diff` leaves out
VISION_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6),
    "idefics3_vision": dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16,
                            num_channels=3, image_size=224, patch_size=32, hidden_act="gelu_pytorch_tanh",
                            layer_norm_eps=1e-6),
}
VISION_DEFAULTS["smolvlm_vision"] = VISION_DEFAULTS["idefics3_vision"]
# LlavaConfig's default vision tower (CLIP ViT-L/14-336)
LLAVA_VISION_DEFAULT = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, patch_size=14,
                            image_size=336, num_hidden_layers=24, num_attention_heads=16)
TEXT_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, use_sliding_window=False),
}
HF_ACT = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
VLKIT_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def vision_config_from_hf(c: dict, feature_layer: int = -1, post_norm: Optional[bool] = None,
                          preprocessor: Optional[dict] = None) -> VisionConfig:
    """An HF vision-tower config (clip_vision_model, siglip_vision_model, idefics3_vision) -> VisionConfig, with the
    image processor of `preprocessor` (the checkpoint's image-processor settings; {}: resize to the tower's size).
    post_norm=None: as the tower's last_hidden_state (SigLIP applies post_layernorm to it, CLIP only to its
    pooled class token)."""
    kind = c.get("model_type", "")
    if kind not in VISION_DEFAULTS:
        raise CheckpointError(f"vision model_type {kind!r} is not supported; supported: {sorted(VISION_DEFAULTS)}")
    c = {**VISION_DEFAULTS[kind], **c}
    if c["hidden_act"] not in HF_ACT:
        raise CheckpointError(f"vision hidden_act {c['hidden_act']!r} is not supported; supported: {sorted(HF_ACT)}")
    clip = kind == "clip_vision_model"
    post_norm = (not clip) if post_norm is None else post_norm
    patch = int(c["patch_size"])
    # SigLIP-so400m-384 has patch 14: its conv ignores the last 384 % 14 pixels, so the tower is built for 378
    # (the same 27 x 27 grid); the processor still resizes to 384 and vlkit's patch conv drops the rest likewise
    size = int(c["image_size"]) // patch * patch
    processor, mean, std = image_processor_from_hf(preprocessor or {}, int(c["image_size"]), clip)
    return VisionConfig(image_size=size, patch_size=patch, num_channels=int(c["num_channels"]),
                        hidden_size=int(c["hidden_size"]), intermediate_size=int(c["intermediate_size"]),
                        num_layers=int(c["num_hidden_layers"]), num_heads=int(c["num_attention_heads"]),
                        layer_norm_eps=float(c["layer_norm_eps"]), hidden_act=HF_ACT[c["hidden_act"]],
                        class_token=clip, pre_norm=clip, post_norm=post_norm, feature_layer=feature_layer,
                        image_mean=tuple(mean), image_std=tuple(std), processor=processor)


# ---------------------------------------------------------------------------------------------------------
# image processors (preprocessor_config.json, or processor_config.json's `image_processor` in transformers 5)

# PIL's filter codes, as transformers writes `resample`
RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_COMMON = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True)
_CLIP = dict(_COMMON, default_to_square=False, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
             resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_pad=False)
_SIGLIP = dict(_COMMON, size={"height": 224, "width": 224}, do_center_crop=False, resample=3,
               image_mean=[0.5] * 3, image_std=[0.5] * 3)
_IDEFICS3 = dict(_COMMON, size={"longest_edge": 4 * 364}, max_image_size={"longest_edge": 364}, resample=1,
                 image_mean=[0.5] * 3, image_std=[0.5] * 3, do_image_splitting=True, do_pad=True)


@dataclass
class ImageProcessorFormat:
    defaults: dict  # the transformers class's defaults, for keys a config leaves out
    translate: Callable[[dict, str], ImageProcessorConfig]


def _size(value: Any, key: str, source: str, square: bool = True) -> dict:
    if isinstance(value, int):  # old configs: one int, a square or (CLIP) the shortest edge
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: image processor `{key}`={value!r} must be a mapping")
    return value


def _resample(value: Any, source: str) -> str:
    if value not in RESAMPLE_CODES:
        raise CheckpointError(f"{source}: image processor resample={value!r} is not supported; supported: "
                              f"{sorted(RESAMPLE_CODES)} (PIL filter codes)")
    return RESAMPLE_CODES[value]


def _resize(size: dict, edge: str, source: str) -> dict:
    """An HF processor's `size` -> ImageProcessorConfig resize fields: one `edge` key (shortest_edge for CLIP /
    SigLIP / LLaVA, longest_edge for Idefics3) keeps the aspect ratio; {height, width} is exact."""
    if edge in size and (edge == "longest_edge" or set(size) == {edge}):
        return dict(resize=edge, edge=int(size[edge]))
    if {"height", "width"} <= set(size):
        return dict(resize="exact", height=int(size["height"]), width=int(size["width"]))
    raise CheckpointError(f"{source}: image processor size={size} is not supported; supported: "
                          f"{{{edge}}} or {{height, width}}")


def _generic_processor(p: dict, source: str) -> ImageProcessorConfig:
    """CLIP / SigLIP / LLaVA image processors: transformers' PilBackend steps."""
    out = dict(pad_to_square=bool(p.get("do_pad", False)), resample=_resample(p["resample"], source))
    if not p["do_resize"]:
        out["resize"] = "none"
    else:
        out.update(_resize(_size(p["size"], "size", source, square=p.get("default_to_square", True)),
                           "shortest_edge", source))
    if p.get("do_center_crop"):
        crop = _size(p["crop_size"], "crop_size", source)
        out.update(crop_height=int(crop["height"]), crop_width=int(crop["width"]))
    return ImageProcessorConfig(**out, rescale_factor=float(p["rescale_factor"]) if p["do_rescale"] else None,
                                normalize=bool(p["do_normalize"]))


def _idefics3_processor(p: dict, source: str) -> ImageProcessorConfig:
    """Idefics3 / SmolVLM: resize the longest edge to size.longest_edge, then (no image splitting) to a square of
    max_image_size.longest_edge."""
    out: dict = dict(resample=_resample(p["resample"], source), image_splitting=bool(p["do_image_splitting"]),
                     square=int(_size(p["max_image_size"], "max_image_size", source)["longest_edge"]))
    if p["do_resize"]:
        out.update(_resize(_size(p["size"], "size", source), "longest_edge", source))
    else:
        out["resize"] = "none"
    return ImageProcessorConfig(**out, rescale_factor=float(p["rescale_factor"]) if p["do_rescale"] else None,
                                normalize=bool(p["do_normalize"]))


# transformers' image_processor_type -> how vlkit reproduces it (the registry is the list of what is supported)
IMAGE_PROCESSORS: dict[str, ImageProcessorFormat] = {
    "CLIPImageProcessor": ImageProcessorFormat(_CLIP, _generic_processor),
    "LlavaImageProcessor": ImageProcessorFormat(_CLIP, _generic_processor),
    "SiglipImageProcessor": ImageProcessorFormat(_SIGLIP, _generic_processor),
    "Idefics3ImageProcessor": ImageProcessorFormat(_IDEFICS3, _idefics3_processor),
    "SmolVLMImageProcessor": ImageProcessorFormat(_IDEFICS3, _idefics3_processor),
}


def read_image_processor(path: str | Path) -> dict:
    """The checkpoint's image-processor settings: transformers 5 writes them as `image_processor` in
    processor_config.json, transformers 4 as preprocessor_config.json; {} when there are none."""
    path = Path(path)
    if (path / "processor_config.json").is_file():
        section = read_json(path / "processor_config.json").get("image_processor")
        if isinstance(section, dict):
            return section
    p = path / "preprocessor_config.json"
    return read_json(p) if p.is_file() else {}


def image_processor_from_hf(pre: dict, tower_size: int, clip: bool, source: str = "the image processor"):
    """HF image-processor settings -> (ImageProcessorConfig, mean, std). Without settings: a resize to the
    tower's image size with the tower's usual mean/std (CLIP's or 0.5)."""
    if not pre:
        mean, std = (CLIP_MEAN, CLIP_STD) if clip else ((0.5,) * 3, (0.5,) * 3)
        return ImageProcessorConfig(height=tower_size, width=tower_size), mean, std
    kind = pre.get("image_processor_type") or ("CLIPImageProcessor" if clip else "SiglipImageProcessor")
    kind = kind[:-4] if kind.endswith("Fast") else kind  # the fast (torchvision) classes share the settings
    if kind not in IMAGE_PROCESSORS:
        raise CheckpointError(f"{source}: image_processor_type {kind!r} is not supported; supported: "
                              f"{sorted(IMAGE_PROCESSORS)}")
    fmt = IMAGE_PROCESSORS[kind]
    p = {**fmt.defaults, **{k: v for k, v in pre.items() if v is not None}}
    try:
        cfg = fmt.translate(p, source)
        cfg.validate()
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} ({kind}) cannot be used: {exc}") from None
    mean, std = p["image_mean"], p["image_std"]
    mean, std = ([mean] * 3 if isinstance(mean, (int, float)) else mean), ([std] * 3 if isinstance(std, (int, float)) else std)
    return cfg, tuple(float(x) for x in mean), tuple(float(x) for x in std)


def image_processor_to_hf(v: VisionConfig) -> dict:
    """VisionConfig's processor -> a transformers image-processor config (CLIP, SigLIP or LLaVA class) that
    gives the same pixels; ExportError for what those classes cannot express."""
    p = v.processor
    if p.image_splitting or p.square is not None or p.resize == "longest_edge":
        raise ExportError("llava-hf export: this model's image processor is Idefics3's (longest edge, square), "
                          "which LLaVA's processors cannot express")
    out: dict = {"do_resize": p.resize != "none", "resample": {v: k for k, v in RESAMPLE_CODES.items()}[p.resample]}
    if p.resize == "shortest_edge":
        out["size"] = {"shortest_edge": p.edge}
    else:
        out["size"] = {"height": p.height or v.image_size, "width": p.width or v.image_size}
    out["do_center_crop"] = p.crop_height is not None
    if p.crop_height is not None:
        out["crop_size"] = {"height": p.crop_height, "width": p.crop_width}
    kind = ("LlavaImageProcessor" if p.pad_to_square else
            "CLIPImageProcessor" if p.resize == "shortest_edge" or p.crop_height is not None else "SiglipImageProcessor")
    if kind == "LlavaImageProcessor":
        out["do_pad"] = True
    return {"image_processor_type": kind, "processor_class": "LlavaProcessor", **out,
            "do_rescale": p.rescale_factor is not None, "rescale_factor": p.rescale_factor or 1 / 255,
            "do_normalize": p.normalize, "image_mean": list(v.image_mean), "image_std": list(v.image_std),
            "do_convert_rgb": True}


def _rope(c: dict) -> tuple[float, Optional[dict]]:
    """(theta, scaling) from either transformers 4.x keys (rope_theta, rope_scaling) or 5.x rope_parameters."""
    params = c.get("rope_parameters") or {}
    theta = float(c.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = c.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            return theta, None
        if kind not in ("linear", "llama3"):
            raise CheckpointError(f"rope scaling {kind!r} is not supported; supported: default, linear, llama3")
    return theta, scaling


def text_config_from_hf(c: dict, tie: Optional[bool] = None) -> TextConfig:
    """An HF decoder config (llama, qwen2) -> TextConfig."""
    kind = c.get("model_type", "llama")
    if kind not in TEXT_DEFAULTS:
        raise CheckpointError(f"language model_type {kind!r} is not supported; supported: {sorted(TEXT_DEFAULTS)}")
    c = {**TEXT_DEFAULTS[kind], **{k: v for k, v in c.items() if v is not None}}
    if c["hidden_act"] != "silu":
        raise CheckpointError(f"language hidden_act {c['hidden_act']!r} is not supported; vlkit's MLP is SwiGLU (silu)")
    if kind == "llama" and (c["attention_bias"] or c["mlp_bias"]):
        raise CheckpointError("llama with attention_bias or mlp_bias is not supported (vlkit has no o_proj/MLP bias)")
    if kind == "qwen2" and c["use_sliding_window"]:
        raise CheckpointError("qwen2 with use_sliding_window=true is not supported (vlkit attends to all positions)")
    theta, scaling = _rope(c)
    heads = int(c["num_attention_heads"])
    head_dim = c.get("head_dim")
    if head_dim is not None and int(head_dim) == int(c["hidden_size"]) // heads:
        head_dim = None
    return TextConfig(vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
                      intermediate_size=int(c["intermediate_size"]), num_layers=int(c["num_hidden_layers"]),
                      num_heads=heads, num_kv_heads=int(c.get("num_key_value_heads") or heads),
                      head_dim=None if head_dim is None else int(head_dim), rope_theta=theta,
                      rms_norm_eps=float(c["rms_norm_eps"]), max_position_embeddings=int(c["max_position_embeddings"]),
                      tie_word_embeddings=bool(c["tie_word_embeddings"] if tie is None else tie),
                      attention_bias=kind == "qwen2", rope_scaling=scaling)


def text_config_to_hf(t: TextConfig, **token_ids: Any) -> dict:
    qwen = t.attention_bias  # vlkit's q/k/v bias without an o_proj bias is exactly Qwen2's layout
    out = {"model_type": "qwen2" if qwen else "llama",
           "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
           "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
           "num_hidden_layers": t.num_layers, "num_attention_heads": t.num_heads,
           "num_key_value_heads": t.num_kv_heads, "head_dim": t.dim_per_head, "hidden_act": "silu",
           "max_position_embeddings": t.max_position_embeddings, "rms_norm_eps": t.rms_norm_eps,
           "rope_theta": t.rope_theta, "tie_word_embeddings": t.tie_word_embeddings, **token_ids}
    if t.rope_scaling:
        out["rope_scaling"] = dict(t.rope_scaling)
    if qwen:
        out["use_sliding_window"] = False
    else:
        out.update(attention_bias=False, mlp_bias=False)
    return out


# ---------------------------------------------------------------------------------------------------------
# weights: prefix rules + strict loading


def rename(state: dict, rules: Sequence[tuple[str, Optional[str]]]) -> dict:
    """Apply the longest matching (hf_prefix -> vlkit_prefix) rule to each key; a None target drops the key.
    Keys no rule matches are kept as they are (and then reported as unexpected)."""
    ordered = sorted(rules, key=lambda r: -len(r[0]))
    out = {}
    for key, value in state.items():
        for src, dst in ordered:
            if key.startswith(src):
                if dst is not None:
                    out[dst + key[len(src):]] = value
                break
        else:
            out[key] = value
    return out


def drop_unused_vision(state: dict, model_vision: nn.Module, prefix: str = "vision.") -> dict:
    """The HF tower has all layers and post_layernorm; vlkit builds only those feeding the selected feature."""
    n_used = len(model_vision.encoder.layers)
    layer = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    out = {}
    for key, value in state.items():
        m = layer.match(key)
        if m and int(m.group(1)) >= n_used:
            continue
        if key.startswith(prefix + "post_layernorm.") and model_vision.post_layernorm is None:
            continue
        if key.startswith(prefix + "head."):  # SigLIP's attention-pooling head: not used by VLMs
            continue
        out[key] = value
    return out


def load_strict(module: nn.Module, state: dict, source: str, optional: Sequence[str] = ()) -> None:
    """Load all of `module`'s tensors from `state`; a CheckpointError names missing, unexpected and mis-shaped
    tensors (by vlkit name)."""
    from vlkit.models.vlm import check_state

    own = module.state_dict()
    check_state(own, state, source, optional)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)  # copy_ converts bf16/fp16 checkpoints to the model's dtype


VISION_RULES = [("vision_model.", "vision."), ("", "vision."), ("text_model.", None), ("logit_scale", None),
                ("logit_bias", None), ("visual_projection.", None), ("text_projection.", None)]
TEXT_RULES = [("model.", "language."), ("lm_head.", "language.lm_head.")]
LLAVA_RULES = [("vision_tower.vision_model.", "vision."), ("vision_tower.", "vision."),
               ("model.vision_tower.vision_model.", "vision."), ("model.vision_tower.", "vision."),
               ("multi_modal_projector.", "connector."), ("model.multi_modal_projector.", "connector."),
               ("language_model.model.", "language."), ("model.language_model.", "language."),
               ("language_model.lm_head.", "language.lm_head."), ("lm_head.", "language.lm_head.")]
IDEFICS3_RULES = [("model.vision_model.", "vision."), ("model.connector.modality_projection.", "connector."),
                  ("model.text_model.", "language."), ("lm_head.", "language.lm_head.")]


def _prefixed(module: nn.Module, prefix: str) -> nn.Module:
    holder = nn.Module()
    setattr(holder, prefix.rstrip("."), module)
    return holder


# ---------------------------------------------------------------------------------------------------------
# component loaders


def _vision_section(c: dict) -> dict:
    if c.get("model_type") in ("siglip", "clip"):  # whole contrastive model: take its vision tower
        sub = c.get("vision_config") or {}
        return {"model_type": c["model_type"] + "_vision_model", **sub}
    return c


def vision_config_from_dir(path: str | Path, feature_layer: int = -1, post_norm: Optional[bool] = None) -> VisionConfig:
    return vision_config_from_hf(_vision_section(read_config(path)), feature_layer, post_norm, read_image_processor(path))


def load_vision_encoder(path: str | Path, feature_layer: int = -1, post_norm: Optional[bool] = None):
    """A SigLIP / CLIP (vision) checkpoint -> vlkit VisionEncoder: features are transformers' hidden_states
    [feature_layer]; for the last layer post_norm=None gives its last_hidden_state (see vision_config_from_hf)."""
    from vlkit.models.vision import VisionEncoder

    cfg = vision_config_from_dir(path, feature_layer, post_norm)
    cfg.validate()
    encoder = VisionEncoder(cfg)
    state = drop_unused_vision(rename(load_safetensors(path), VISION_RULES), encoder)
    load_strict(_prefixed(encoder, "vision."), state, str(path))
    return encoder.eval()


def load_language_model(path: str | Path):
    """A Llama / Qwen2 (incl. SmolLM2) causal-LM checkpoint -> vlkit LanguageModel."""
    from vlkit.models.language import LanguageModel

    cfg = text_config_from_hf(read_config(path))
    cfg.validate()
    lm = LanguageModel(cfg)
    state = rename(load_safetensors(path), TEXT_RULES)
    optional = ["language.lm_head.weight"] if cfg.tie_word_embeddings else []
    load_strict(_prefixed(lm, "language."), state, str(path), optional)
    return lm.eval()


# ---------------------------------------------------------------------------------------------------------
# whole VLMs


@dataclass
class HFChatSpec:
    """How an HF VLM's prompts look: its image token and how one image expands in the text."""

    image_token: str
    expand: Callable[[int], str]  # number of image embeddings -> the text that replaces one image token


def llava_model_config(c: dict, preprocessor: Optional[dict] = None) -> ModelConfig:
    vision = dict(c.get("vision_config") or {})
    if vision.get("model_type", "clip_vision_model") == "clip_vision_model":  # diffs against LlavaConfig's tower
        vision = {**LLAVA_VISION_DEFAULT, **vision}
    layer = c.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"llava vision_feature_layer={layer!r}: only a single layer is supported")
    strategy = c.get("vision_feature_select_strategy", "default")
    clip = vision["model_type"] == "clip_vision_model"
    # vlkit drops exactly the class token: "default" (drop the first token) only makes sense with one
    if (strategy == "default") != clip:
        raise CheckpointError(f"llava vision_feature_select_strategy={strategy!r} with a {vision['model_type']} "
                              f"tower is not supported (supported: 'default' with CLIP, 'full' with SigLIP)")
    if c.get("projector_hidden_act", "gelu") != "gelu" or not c.get("multimodal_projector_bias", True):
        raise CheckpointError("llava projector must be Linear-GELU-Linear with biases "
                              f"(got projector_hidden_act={c.get('projector_hidden_act')!r})")
    text = c.get("text_config") or {}
    tie = bool(c.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    image_token = c.get("image_token_index", c.get("image_token_id", 32000))
    # LLaVA reads hidden_states[layer], which never include post_layernorm
    return ModelConfig(vision=vision_config_from_hf(vision, layer, False, preprocessor),
                       connector=ConnectorConfig(type="mlp"), text=text_config_from_hf(text, tie),
                       image_token_id=int(image_token), prompt_format="llava")


def idefics3_model_config(c: dict, preprocessor: Optional[dict] = None) -> ModelConfig:
    vision = {"model_type": "idefics3_vision", **(c.get("vision_config") or {})}
    text = c.get("text_config") or {}
    tie = bool(c.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    # pixel shuffle (scale_factor) + one bias-free Linear == spatial_merge without LayerNorm, linear projection
    connector = ConnectorConfig(type="spatial_merge", merge_size=int(c.get("scale_factor", 2)), norm=False,
                                merge_proj="linear")
    pre = dict(preprocessor or {})
    return ModelConfig(vision=vision_config_from_hf(vision, -1, True, pre), connector=connector,
                       text=text_config_from_hf(text, tie), image_token_id=int(c.get("image_token_id", 128257)),
                       prompt_format="idefics3")


def _llava_spec(image_token: str, tok: Any) -> HFChatSpec:
    return HFChatSpec(image_token=image_token, expand=lambda n: image_token * n)


def _idefics3_spec(image_token: str, tok: Any) -> HFChatSpec:
    # Idefics3Processor without image splitting: <fake_token_around_image><global-img> N x <image> <fake...>
    fake, glob = "<fake_token_around_image>", "<global-img>"
    has_glob = tok.token_to_id(glob) is not None
    return HFChatSpec(image_token=image_token,
                      expand=lambda n: fake + (glob if has_glob else "") + image_token * n + fake)


# ModelConfig.prompt_format -> how one image token of the chat template expands (image token, tokenizer -> spec)
PROMPT_FORMATS: dict[str, Callable[[str, Any], HFChatSpec]] = {"llava": _llava_spec, "idefics3": _idefics3_spec}


@dataclass
class VLMFormat:
    model_config: Callable[[dict, Optional[dict]], ModelConfig]
    rules: list


@dataclass
class ComponentFormat:
    kind: str  # "vision" | "language"


# HF model_type -> what it is; `detect_format` and the loaders look names up here (no name sniffing)
VLM_FORMATS: dict[str, VLMFormat] = {
    "llava": VLMFormat(llava_model_config, LLAVA_RULES),
    "idefics3": VLMFormat(idefics3_model_config, IDEFICS3_RULES),
    "smolvlm": VLMFormat(idefics3_model_config, IDEFICS3_RULES),
}
COMPONENT_FORMATS: dict[str, ComponentFormat] = {
    "siglip": ComponentFormat("vision"), "siglip_vision_model": ComponentFormat("vision"),
    "clip": ComponentFormat("vision"), "clip_vision_model": ComponentFormat("vision"),
    "llama": ComponentFormat("language"), "qwen2": ComponentFormat("language"),
}
ARCHITECTURES = {"LlavaForConditionalGeneration": "llava", "Idefics3ForConditionalGeneration": "idefics3",
                 "SmolVLMForConditionalGeneration": "smolvlm", "LlamaForCausalLM": "llama",
                 "Qwen2ForCausalLM": "qwen2", "SiglipModel": "siglip", "SiglipVisionModel": "siglip_vision_model",
                 "CLIPModel": "clip", "CLIPVisionModel": "clip_vision_model"}


def _model_type(c: dict, path: Path) -> str:
    kind = c.get("model_type")
    if kind is None:
        archs = c.get("architectures") or []
        kind = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if kind not in VLM_FORMATS and kind not in COMPONENT_FORMATS:
        raise CheckpointError(f"{path}: Hugging Face model_type {kind!r} (architectures {c.get('architectures')}) "
                              f"is not supported; supported: {sorted(VLM_FORMATS) + sorted(COMPONENT_FORMATS)}")
    return kind


def detect_format(path: str | Path) -> str:
    """'vlkit' for a vlkit checkpoint, else the HF model_type ('llava', 'idefics3', 'siglip', 'llama', ...).
    An unsupported HF model raises CheckpointError naming its model_type."""
    path = Path(path)
    c = read_config(path)
    if "model_type" not in c and "architectures" not in c and {"vision", "text", "connector"} <= set(c):
        return "vlkit"
    return _model_type(c, path)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """A whole HF VLM directory (llava, idefics3, smolvlm) -> VisionLanguageModel (eval mode), in `dtype`
    (None: the dtype of the checkpoint's weights)."""
    from vlkit.models.vlm import VisionLanguageModel, checkpoint_dtype, load_state

    path = Path(path)
    c = read_config(path)
    kind = _model_type(c, path)
    if kind not in VLM_FORMATS:
        raise CheckpointError(f"{path} is a {COMPONENT_FORMATS[kind].kind} model ({kind}), not a whole VLM; compose "
                              f"one with `vlkit build --vision DIR --lm DIR` (vlkit.models.hf.build_from_backbones)")
    fmt = VLM_FORMATS[kind]
    cfg = fmt.model_config(c, read_image_processor(path))
    model = VisionLanguageModel(cfg)
    state = drop_unused_vision(rename(load_safetensors(path), fmt.rules), model.vision)
    model = model.to(dtype or checkpoint_dtype(state))
    load_state(model, state, str(path))
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------------
# tokenizer + chat template of HF models


def _token_str(value: Any) -> Optional[str]:
    return value.get("content") if isinstance(value, dict) else value


def read_chat_template(path: Path) -> Optional[str]:
    """chat_template.jinja, chat_template.json (processor) or tokenizer_config.json's `chat_template`."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        p = path / name
        if p.is_file():
            tpl = read_json(p).get("chat_template")
            if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
                tpl = next((t["template"] for t in tpl if t.get("name") == "default"), tpl[0]["template"] if tpl else None)
            if tpl:
                return tpl
    return None


def _generation_tag():
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        """transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant text for its
        assistant-token masks): renders its body. vlkit finds the assistant text by rendering prefixes."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return GenerationTag


def render_template(template: str, messages: list[dict], add_generation_prompt: bool, **special: Any) -> str:
    """Render an HF chat template the way transformers does (sandboxed jinja2, trim/lstrip blocks, the
    loop-control and `generation` extensions)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise UserError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", _generation_tag()])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **special)
    except jinja2.TemplateError as exc:
        raise CheckpointError(f"the model's chat template cannot be rendered: {exc}") from None


TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # kept as the model shipped them


def _tokenizer_class():
    from vlkit.tokenizer import Tokenizer, text_encoder

    class HFTokenizer(Tokenizer):
        """A real model's tokenizer, used as is: no vlkit special tokens are added (the model's embedding table
        has no rows for them); the image token and the stop tokens are the model's own. `save_pretrained` writes
        it back as the model shipped it (tokenizer.json, tokenizer_config.json, chat template, eos ids)."""

        def __init__(self, hf_tokenizer, chat_template: str, image_token_id: int, bos_token: Optional[str],
                     eos_token: Optional[str], stop_ids: Sequence[int], pad_id: int, files: Optional[dict] = None):
            self.hf = hf_tokenizer  # encodes what the template writes (its special tokens are matched)
            self.text_hf = text_encoder(hf_tokenizer)  # encodes user text (special tokens split)
            self.chat_template = chat_template
            token = hf_tokenizer.id_to_token(image_token_id)
            if token is None:
                raise CheckpointError(f"the config's image token id {image_token_id} is not in the tokenizer "
                                      f"({len(self)} tokens)")
            self.image_token, self.image_pad_id = token, image_token_id
            self.bos_token, self.eos_token = bos_token, eos_token
            self._stop_ids = [int(i) for i in stop_ids]
            if not self._stop_ids:
                raise CheckpointError("the model names no eos token (config.json / generation_config.json / "
                                      "tokenizer_config.json): generation could not stop")
            self.im_end_id = self._stop_ids[0]
            self.pad_id = pad_id
            self.files = dict(files or {})
            self.im_start_id = self.vision_start_id = self.vision_end_id = self.gen_start_id = None

        @property
        def stop_ids(self) -> list[int]:
            return list(self._stop_ids)

        def decode(self, ids: list[int], skip_special: bool = False) -> str:
            return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

        def save_pretrained(self, directory: str | Path) -> None:
            directory = Path(directory)
            self.hf.save(str(directory / "tokenizer.json"))
            config = dict(self.files.get("tokenizer_config.json") or {"tokenizer_class": "PreTrainedTokenizerFast"})
            config.update(chat_template=self.chat_template, bos_token=self.bos_token, eos_token=self.eos_token,
                          pad_token=self.hf.id_to_token(self.pad_id))
            (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
            if "special_tokens_map.json" in self.files:
                (directory / "special_tokens_map.json").write_text(
                    json.dumps(self.files["special_tokens_map.json"], indent=2) + "\n")
            (directory / "chat_template.jinja").write_text(self.chat_template)
            (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": self.stop_ids}) + "\n")

    return HFTokenizer


def load_hf_tokenizer(path: Path, c: dict, image_token_id: int):
    """The tokenizer of an HF model directory (or of a vlkit checkpoint that keeps an imported model's own
    tokenizer); `c` is its config.json (eos ids), `image_token_id` the config's image token."""
    from vlkit.tokenizer import read_tokenizer_json

    tj = path / "tokenizer.json"
    if not tj.is_file():
        raise CheckpointError(f"{path} has no tokenizer.json (vlkit reads fast tokenizers only)")
    raw = read_tokenizer_json(tj)
    files = {name: read_json(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}
    tc = files.get("tokenizer_config.json", {})
    template = read_chat_template(path)
    if template is None:
        raise CheckpointError(f"{path} has no chat template (chat_template.jinja, chat_template.json or "
                              f"tokenizer_config.json `chat_template`)")
    bos, eos = _token_str(tc.get("bos_token")), _token_str(tc.get("eos_token"))
    gen = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    text = c.get("text_config") or c
    stops: list[int] = []
    for src in (gen.get("eos_token_id"), text.get("eos_token_id"), c.get("eos_token_id")):
        for i in (src if isinstance(src, list) else [src]):
            if i is not None and int(i) not in stops:
                stops.append(int(i))
    if eos and raw.token_to_id(eos) is not None and raw.token_to_id(eos) not in stops:
        stops.append(raw.token_to_id(eos))
    pad = _token_str(tc.get("pad_token"))
    pad_id = raw.token_to_id(pad) if pad and raw.token_to_id(pad) is not None else (stops[0] if stops else 0)
    return _tokenizer_class()(raw, template, image_token_id, bos, eos, stops, pad_id, files)


def chat_tools(path: Path, c: dict, cfg: ModelConfig):
    """(tokenizer, processor) of a model in an HF prompt format (cfg.prompt_format): the model's own tokenizer
    and chat template; each image token of the template expands per the format."""
    tok = load_hf_tokenizer(path, c, cfg.image_token_id)
    return tok, HFChatProcessor(tok, PROMPT_FORMATS[cfg.prompt_format](tok.image_token, tok.hf))


Piece = tuple[str, bool]  # a piece of a rendered prompt: (text, True if a user wrote it, False if the template)
_TEXT_MARK = "\x00{}\x00"  # stands for the k-th text part while the template renders
_TEXT_MARK_RE = re.compile("\x00(\\d+)\x00")


def _joined(pieces: Sequence[Piece]) -> str:
    return "".join(text for text, _ in pieces)


class HFChatProcessor:
    """ChatProcessor's interface for HF models: renders the model's own chat template, expands each image
    token per the model's processor, tokenizes like transformers (BOS added unless the template wrote it).

    User text is text: the template renders a marker in place of each text part, so the pieces it writes are
    told apart from the users' text; image tokens are expanded in the template's pieces only, and user text
    never becomes a special token."""

    def __init__(self, tokenizer: Any, spec: HFChatSpec):
        self.tok = tokenizer
        self.spec = spec
        self._protected = tokenizer.special_ids() | {tokenizer.image_pad_id}  # never from user text

    def messages(self, turns: Sequence[tuple[str, str]], texts: list[str]) -> list[dict]:
        """HF messages whose text parts are markers; the texts are appended to `texts` in marker order."""
        out = []
        for role, text in turns:
            parts: list[dict] = []
            for k, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
                if k > 0:
                    parts.append({"type": "image"})
                    piece = piece[1:] if piece.startswith("\n") else piece  # vlkit writes "<image>\n"
                if piece:
                    parts.append({"type": "text", "text": _TEXT_MARK.format(len(texts))})
                    texts.append(piece)
            out.append({"role": role, "content": parts})
        return out

    def render(self, turns: Sequence[tuple[str, str]], add_generation_prompt: bool) -> list[Piece]:
        texts: list[str] = []
        rendered = render_template(self.tok.chat_template, self.messages(turns, texts), add_generation_prompt,
                                   bos_token=self.tok.bos_token or "", eos_token=self.tok.eos_token or "")
        parts = _TEXT_MARK_RE.split(rendered)
        order = [int(k) for k in parts[1::2]]
        if order != sorted(set(order)) or any(k >= len(texts) for k in order):
            raise CheckpointError("the model's chat template repeats or reorders message text; vlkit cannot tell "
                                  "the users' text from the template's")
        pieces = [(parts[0], False)]
        for k, template_text in zip(order, parts[2::2]):
            pieces += [(texts[k], True), (template_text, False)]
        return pieces

    def expand(self, pieces: Sequence[Piece], tokens_per_image: Sequence[int], exact: bool = True) -> list[Piece]:
        """Each image token the template wrote -> the model's text for that image's embeddings."""
        from vlkit.chat import ChatFormatError

        out, n = [], 0
        for text, from_user in pieces:
            if not from_user:
                chunks = text.split(self.spec.image_token)
                text = chunks[0]
                for chunk in chunks[1:]:
                    image = self.spec.expand(tokens_per_image[n]) if n < len(tokens_per_image) else ""
                    text += image + chunk
                    n += 1
            out.append((text, from_user))
        if (exact and n != len(tokens_per_image)) or n > len(tokens_per_image):
            raise ChatFormatError(f"the prompt has {n} image(s) but {len(tokens_per_image)} were given")
        return out

    def _encode(self, pieces: Sequence[Piece]) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets. The whole prompt is encoded at once, as transformers does, unless a special
        token would then come from user text; then each piece is encoded on its own, user text with special
        tokens split into plain characters (BOS, if any, before the first piece). A tokenizer whose vocabulary
        still spells a special token from that text (a word-level one) refuses it."""
        from vlkit.chat import ChatFormatError

        full = _joined(pieces)
        add = not (self.tok.bos_token and full.startswith(self.tok.bos_token))
        enc = self.tok.hf.encode(full, add_special_tokens=add)
        user, at = [], 0
        for text, from_user in pieces:
            if from_user:
                user.append((at, at + len(text)))
            at += len(text)
        if not any(i in self._protected and start < b and end > a
                   for i, (start, end) in zip(enc.ids, enc.offsets) for a, b in user):
            return list(enc.ids), list(enc.offsets)
        ids, offsets, at = [], [], 0
        for k, (text, from_user) in enumerate(pieces):
            part = (self.tok.text_hf if from_user else self.tok.hf).encode(text, add_special_tokens=add and k == 0)
            if from_user and set(part.ids) & self._protected:
                raise ChatFormatError(f"the text {text[:40]!r} encodes to a special token of this model's tokenizer")
            ids += part.ids
            offsets += [(start + at, end + at) for start, end in part.offsets]
            at += len(text)
        return ids, offsets

    def encode(self, turns: Sequence[tuple[str, str]], tokens_per_image: Sequence[int],
               add_generation_prompt: bool = False):
        """-> vlkit.chat.Encoded; labels cover the assistant turns' text as the template renders it."""
        from vlkit.chat import IGNORE, Encoded

        pieces = self.expand(self.render(turns, add_generation_prompt), tokens_per_image)
        full = _joined(pieces)
        spans = []
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before = _joined(self.expand(self.render(turns[:i], True), tokens_per_image, exact=False))
            upto = _joined(self.expand(self.render(turns[: i + 1], False), tokens_per_image, exact=False))
            if full.startswith(upto) and upto.startswith(before):
                spans.append((len(before), len(upto)))
        ids, offsets = self._encode(pieces)
        labels = [IGNORE] * len(ids)
        for j, (tid, (start, end)) in enumerate(zip(ids, offsets)):
            if end > start and any(a <= start < b for a, b in spans):
                labels[j] = tid
        return Encoded(ids, labels, len(tokens_per_image), [])

    def encode_prompt(self, prompt: str, num_images: int, tokens_per_image: Sequence[int],
                      system: Optional[str] = None) -> list[int]:
        from vlkit.chat import ensure_placeholders

        turns = ([("system", system)] if system else []) + [("user", prompt)]
        return self.encode(ensure_placeholders(turns, num_images), tokens_per_image, True).input_ids

    def encode_sample(self, sample: dict, tokens_per_image: Sequence[int]):
        from vlkit.chat import ensure_placeholders, normalize_messages

        turns, _ = normalize_messages(sample["conversations"])
        return self.encode(ensure_placeholders(turns, len(tokens_per_image)), tokens_per_image)


def load_pipeline(path: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """A whole HF VLM directory -> vlkit Pipeline using the model's tokenizer, image token, chat template and
    image processor (dtype None: the checkpoint's)."""
    from vlkit.pipeline import Pipeline

    path = Path(path)
    c = read_config(path)
    model = load_model(path, device, dtype)
    tok, processor = chat_tools(path, c, model.cfg)
    return Pipeline(model, tok, path=path, processor=processor)


# ---------------------------------------------------------------------------------------------------------
# export


CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def export(pipe: Any, out_dir: str | Path, format: str = "llava-hf") -> Path:
    """Write `pipe` in another format; `llava-hf` loads in transformers' LlavaForConditionalGeneration and
    AutoProcessor (hence vLLM). Written atomically."""
    if format not in EXPORTERS:
        raise ExportError(f"export format {format!r} is unknown; choose one of {sorted(EXPORTERS)}")
    from vlkit.io import write_dir_atomically

    return write_dir_atomically(Path(out_dir), lambda tmp: EXPORTERS[format](pipe, tmp))


def export_llava(pipe: Any, out: Path) -> None:
    from safetensors.torch import save_file

    model, tok = pipe.model, pipe.tokenizer
    cfg: ModelConfig = model.cfg
    v, t = cfg.vision, cfg.text
    if cfg.connector.type != "mlp":
        raise ExportError(f"llava-hf export needs connector.type='mlp' (LLaVA's projector), got {cfg.connector.type!r}")
    if cfg.vision_target != "none":
        raise ExportError("llava-hf export needs vision_target='none': LLaVA cannot generate visual codes")
    if v.class_token != v.pre_norm:
        raise ExportError("llava-hf export needs a CLIP tower (class_token and pre_norm) or a SigLIP tower (neither); "
                          f"got class_token={v.class_token}, pre_norm={v.pre_norm}")
    if model.vision.post_layernorm is not None:
        raise ExportError("llava-hf export: this model's image features go through post_layernorm (vision.post_norm="
                          "true with the last layer), but LLaVA reads hidden_states, which never do; train with "
                          "vision.post_norm=false or vision.feature_layer=-2")
    if cfg.prompt_format not in (None, "llava"):
        raise ExportError(f"llava-hf export: this model's prompts use the {cfg.prompt_format!r} image layout, "
                          f"which LlavaProcessor cannot write")
    processor_config = image_processor_to_hf(v)
    n_vocab = t.vocab_size
    ids = dict(bos_token_id=tok.hf.token_to_id(tok.bos_token) if getattr(tok, "bos_token", None) else None,
               eos_token_id=tok.stop_ids[0], pad_token_id=tok.pad_id)
    bad = {k: i for k, i in {**ids, "image_token_index": cfg.image_token_id}.items() if i is not None and i >= n_vocab}
    if bad or len(tok) > n_vocab:
        raise ExportError(f"llava-hf export: the tokenizer ({len(tok)} tokens; ids {bad}) does not fit the "
                          f"model's embedding table ({n_vocab} rows)")
    clip = v.class_token
    n_layers = len(model.vision.encoder.layers)
    grid = v.image_size // v.patch_size
    n_tokens = model.tokens_per_image(v.image_size, v.image_size)
    vision_config = {"model_type": "clip_vision_model" if clip else "siglip_vision_model",
                     "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                     "num_hidden_layers": n_layers, "num_attention_heads": v.num_heads, "num_channels": v.num_channels,
                     "image_size": grid * v.patch_size, "patch_size": v.patch_size,
                     "hidden_act": VLKIT_ACT[v.hidden_act], "layer_norm_eps": v.layer_norm_eps}
    if not clip:
        vision_config["vision_use_head"] = False
    config = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
              "vision_config": vision_config, "text_config": text_config_to_hf(t, **ids),
              "image_token_index": cfg.image_token_id, "image_seq_length": n_tokens,
              # vlkit keeps only the layers it uses, so the selected layer is the tower's last hidden state
              "vision_feature_layer": -1, "vision_feature_select_strategy": "default" if clip else "full",
              "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
              "tie_word_embeddings": t.tie_word_embeddings, "torch_dtype": "float32", **ids}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        prefix, rest = key.split(".", 1)
        if prefix == "vision":
            name = "vision_tower.vision_model." + rest
        elif prefix == "connector":
            name = "multi_modal_projector." + rest
        elif rest.startswith("lm_head."):
            if t.tie_word_embeddings:
                continue
            name = "language_model." + rest
        else:
            name = "language_model.model." + rest
        state[name] = value.detach().to("cpu", torch.float32).contiguous().clone()
    # transformers' towers always have post_layernorm; LLaVA never applies it, so identity weights are exact
    state["vision_tower.vision_model.post_layernorm.weight"] = torch.ones(v.hidden_size)
    state["vision_tower.vision_model.post_layernorm.bias"] = torch.zeros(v.hidden_size)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    if cfg.prompt_format is None:  # vlkit's tokenizer and ChatML prompts
        from vlkit.tokenizer import IM_END, PAD

        tok.save(out / "tokenizer.json")
        tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": IM_END,
                      "pad_token": PAD, "unk_token": None, "model_max_length": t.max_position_embeddings,
                      "clean_up_tokenization_spaces": False, "padding_side": "left", "chat_template": CHATML_TEMPLATE,
                      "processor_class": "LlavaProcessor"}
        (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": IM_END, "pad_token": PAD}, indent=2) + "\n")
        (out / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    else:  # an imported model's own tokenizer and chat template, as it shipped them
        tok.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({**ids, "eos_token_id": tok.stop_ids,
                                                            "max_new_tokens": 256}, indent=2) + "\n")
    # both layouts: transformers 4 reads preprocessor_config.json, transformers 5 processor_config.json's section
    (out / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaProcessor", "image_processor": processor_config, "patch_size": v.patch_size,
        "image_token": tok.hf.id_to_token(cfg.image_token_id),
        "vision_feature_select_strategy": "default" if clip else "full",
        "num_additional_image_tokens": 1 if clip else 0}, indent=2) + "\n")


EXPORTERS: dict[str, Callable[[Any, Path], None]] = {"llava-hf": export_llava}


# ---------------------------------------------------------------------------------------------------------
# build a new VLM from real backbones


def build_from_backbones(vision_dir: str | Path, lm_dir: str | Path, connector: str = "mlp",
                         out: str | Path = "runs/built", feature_layer: int = -2, post_norm: bool = False,
                         connector_options: Optional[dict] = None, seed: int = 0) -> Path:
    """Compose a VLM from an HF vision tower (SigLIP/CLIP) and an HF LM (Llama/Qwen2): the connector is newly
    initialized, the tokenizer is the LM's plus vlkit's special tokens (new embedding rows start at the mean
    of the old ones), saved as a vlkit checkpoint ready for the `align` stage. The default feature layer -2 without
    post_layernorm is LLaVA-1.5's choice (and keeps the model exportable to llava-hf)."""
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline
    from vlkit.tokenizer import Tokenizer

    vision_dir, lm_dir = Path(vision_dir), Path(lm_dir)
    vc = _vision_section(read_config(vision_dir))
    if COMPONENT_FORMATS.get(_model_type(vc, vision_dir), ComponentFormat("")).kind != "vision":
        raise CheckpointError(f"--vision {vision_dir} is not a vision encoder (model_type {vc.get('model_type')!r})")
    lc = read_config(lm_dir)
    if COMPONENT_FORMATS.get(_model_type(lc, lm_dir), ComponentFormat("")).kind != "language":
        raise CheckpointError(f"--lm {lm_dir} is not a decoder LM (model_type {lc.get('model_type')!r})")
    vision = vision_config_from_hf(vc, feature_layer, post_norm, read_image_processor(vision_dir))
    text = text_config_from_hf(lc)
    tok = Tokenizer.from_file(lm_dir / "tokenizer.json")  # adds vlkit's special tokens the LM lacks
    old_vocab = text.vocab_size
    text.vocab_size = max(old_vocab, len(tok))
    opts = {"num_heads": text.num_heads, **(connector_options or {})}
    cfg = ModelConfig(vision=vision, connector=ConnectorConfig(type=connector, **opts), text=text,
                      image_token_id=tok.image_pad_id)
    torch.manual_seed(seed)
    model = VisionLanguageModel(cfg)

    vstate = drop_unused_vision(rename(load_safetensors(vision_dir), VISION_RULES), model.vision)
    load_strict(_prefixed(model.vision, "vision."), vstate, str(vision_dir))
    lstate = rename(load_safetensors(lm_dir), TEXT_RULES)
    for key in ("language.embed_tokens.weight", "language.lm_head.weight"):
        w = lstate.get(key)
        if w is not None and w.shape[0] == old_vocab and text.vocab_size > old_vocab:
            extra = w.float().mean(0, keepdim=True).expand(text.vocab_size - old_vocab, -1).to(w.dtype)
            lstate[key] = torch.cat([w, extra], 0)
    optional = ["language.lm_head.weight"] if text.tie_word_embeddings else []
    load_strict(_prefixed(model.language, "language."), lstate, str(lm_dir), optional)
    return Pipeline(model.eval(), tok).save_pretrained(out)
