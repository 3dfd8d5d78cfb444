"""Hugging Face model configs -> vlkit configs, field by field (and back for text configs, for export).

A config.json written by transformers 4 holds only non-default values, so the HF classes' defaults fill the
fields it leaves out; transformers 5's `rope_parameters` are read as well.
"""
from __future__ import annotations

from typing import Any, Optional

from vlkit.config import ConnectorConfig, ModelConfig, TextConfig, VisionConfig
from vlkit.errors import CheckpointError
from vlkit.hf.image_processors import image_processor_from_hf

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
VLKIT_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}  # for export


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
    """TextConfig -> the config of the HF decoder with the same layout (Qwen2 if it has q/k/v biases, else Llama)."""
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


def vision_section(c: dict) -> dict:
    if c.get("model_type") in ("siglip", "clip"):  # whole contrastive model: take its vision tower
        sub = c.get("vision_config") or {}
        return {"model_type": c["model_type"] + "_vision_model", **sub}
    return c


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

