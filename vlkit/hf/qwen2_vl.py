"""Qwen2-VL and Qwen2.5-VL checkpoints (transformers' Qwen2VLForConditionalGeneration /
Qwen2_5_VLForConditionalGeneration) <-> vlkit: config translation, parameter names (the tower's fused qkv is split
into vlkit's q/k/v and fused again on export) and the processor's pixel layout.

vlkit's tower is its ViT with options (docs/native_resolution.md): `temporal_patch_size` (Conv3d patch embedding),
`position: rope2d`, `norm: rmsnorm` + `mlp: swiglu` and `window_size` / `full_attention_layers` for 2.5; the patch
merger is the spatial_merge connector. A checkpoint option vlkit does not implement is refused, naming it.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch

from vlkit.config import ConnectorConfig, ModelConfig, TextConfig, VisionConfig
from vlkit.errors import CheckpointError
from vlkit.hf.configs import HF_ACT, text_config_from_hf
from vlkit.hf.image_processors import image_processor_from_hf

FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # HF model_type of the whole model
# the HF config classes' defaults (Qwen2-VL-7B / Qwen2.5-VL-7B), for keys a config.json leaves out
VISION_DEFAULTS = {
    "qwen2_vl": dict(depth=32, embed_dim=1280, hidden_size=3584, hidden_act="quick_gelu", mlp_ratio=4, num_heads=16,
                     in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    "qwen2_5_vl": dict(depth=32, hidden_size=3584, hidden_act="silu", intermediate_size=3420, num_heads=16,
                       in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=4,
                       window_size=112, out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]),
}
TEXT_DEFAULTS = dict(model_type="qwen2", vocab_size=152064, hidden_size=8192, intermediate_size=29568,
                     num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=32768,
                     rms_norm_eps=1e-5, rope_theta=1000000.0)
TOKEN_DEFAULTS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)
VIDEO_FPS = 2.0  # Qwen2-VL's video processor samples 2 frames per second (as vlkit's VideoConfig.fps)
VISION_NORM_EPS = 1e-6  # fixed in transformers' Qwen2-VL tower (blocks and merger)
VISION_ROPE_THETA = 10000.0


def _int(c: dict, key: str, where: str) -> int:
    value = c[key]
    if not isinstance(value, int):
        raise CheckpointError(f"{where}.{key}={value!r} is not supported: vlkit needs one integer")
    return value


def _vision_config(kind: str, v: dict, preprocessor: Optional[dict]) -> tuple[VisionConfig, int, int]:
    """The tower's VisionConfig, its spatial merge size and the merger's output size."""
    v = {**VISION_DEFAULTS[kind], **{k: x for k, x in v.items() if x is not None}}
    rope = v.get("rope_parameters") or {}
    if rope.get("rope_type", "axial") != "axial":
        raise CheckpointError(f"vision_config.rope_parameters.rope_type={rope['rope_type']!r} is not supported "
                              f"(vlkit's 2D RoPE is Qwen2-VL's axial one)")
    if v["hidden_act"] not in (*HF_ACT, "silu"):
        raise CheckpointError(f"vision_config.hidden_act={v['hidden_act']!r} is not supported; supported: "
                              f"{sorted((*HF_ACT, 'silu'))}")
    patch, merge = _int(v, "patch_size", "vision_config"), _int(v, "spatial_merge_size", "vision_config")
    tp = _int(v, "temporal_patch_size", "vision_config")
    proc, mean, std = image_processor_from_hf({"image_processor_type": "Qwen2VLImageProcessor", **(preprocessor or {})},
                                              patch * merge * 16, True)
    for key, want in (("patch_size", patch), ("temporal_patch_size", tp), ("merge_size", merge)):
        if (preprocessor or {}).get(key, want) != want:
            raise CheckpointError(f"the image processor's {key}={preprocessor[key]} differs from the model's {want}")
    common = dict(image_size=patch * merge * 16, patch_size=patch, num_channels=_int(v, "in_channels", "vision_config"),
                  num_layers=v["depth"], num_heads=v["num_heads"], layer_norm_eps=VISION_NORM_EPS,
                  hidden_act=HF_ACT.get(v["hidden_act"], v["hidden_act"]), post_norm=False, position="rope2d",
                  rope_theta=float(rope.get("rope_theta", VISION_ROPE_THETA)), temporal_patch_size=tp,
                  image_mean=tuple(mean), image_std=tuple(std), processor=proc)
    if kind == "qwen2_vl":
        out, width = v["hidden_size"], v["embed_dim"]
        vision = VisionConfig(hidden_size=width, intermediate_size=int(width * v["mlp_ratio"]), **common)
    else:
        out, width = v["out_hidden_size"], v["hidden_size"]
        unit = patch * merge  # transformers' windows are whole merge blocks: window_size // merge // patch of them
        if v["window_size"] < unit:
            raise CheckpointError(f"vision_config.window_size={v['window_size']} is smaller than one merged token "
                                  f"({unit} pixels): transformers cannot run it either")
        vision = VisionConfig(hidden_size=width, intermediate_size=v["intermediate_size"], norm="rmsnorm",
                              mlp="swiglu", window_size=v["window_size"] // unit * unit,
                              full_attention_layers=list(v["fullatt_block_indexes"]), **common)
    return vision, merge, out


def qwen2_vl_tower(c: dict, preprocessor: Optional[dict] = None,
                   feature_layer: int = -1) -> tuple[VisionConfig, ConnectorConfig]:
    """The vision tower of a Qwen2-VL / Qwen2.5-VL config.json (for `vlkit build`) and the spatial_merge connector
    settings that match its merger (a new connector is trained for the new LM)."""
    kind = c["model_type"]
    vision, merge, _ = _vision_config(kind, dict(c.get("vision_config") or {}), preprocessor)
    vision.feature_layer = feature_layer
    return vision, ConnectorConfig(type="spatial_merge", merge_size=merge,
                                   norm_type="rmsnorm" if kind == "qwen2_5_vl" else "layernorm")


def _text_config(kind: str, c: dict, v: dict) -> TextConfig:
    """The LM: Qwen2's layout with M-RoPE (transformers 5 nests it in text_config; 4.x wrote it at the top)."""
    text = dict(c.get("text_config") or {k: x for k, x in c.items() if k not in ("vision_config", "model_type")})
    text = {**TEXT_DEFAULTS, **{k: x for k, x in text.items() if x is not None}, "model_type": "qwen2"}
    rope = dict(text.pop("rope_parameters", None) or {})
    scaling = dict(text.pop("rope_scaling", None) or {})
    section = rope.pop("mrope_section", None) or scaling.pop("mrope_section", None) or [16, 24, 24]
    kind_of = scaling.get("rope_type", scaling.get("type", rope.get("rope_type", "default")))
    if kind_of not in ("default", "mrope"):
        raise CheckpointError(f"{kind} rope_type {kind_of!r} is not supported (vlkit implements M-RoPE without scaling)")
    text["rope_theta"] = rope.get("rope_theta", text["rope_theta"])
    tie = bool(c.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    t = text_config_from_hf(text, tie)
    t.rope, t.mrope_section = "mrope", [int(x) for x in section]
    if kind == "qwen2_5_vl":  # temporal ids per temporal patch: tokens_per_second x its seconds at the video fps
        vd = {**VISION_DEFAULTS[kind], **v}
        t.mrope_time_step = float(vd["tokens_per_second"] * vd["temporal_patch_size"] / VIDEO_FPS)
    return t


def qwen2_vl_model_config(c: dict, preprocessor: Optional[dict] = None) -> ModelConfig:
    """A Qwen2-VL / Qwen2.5-VL config.json (transformers 4 or 5 layout) -> ModelConfig."""
    kind = c["model_type"]
    v = dict(c.get("vision_config") or {})
    text = _text_config(kind, c, v)
    vision, merge, out = _vision_config(kind, v, preprocessor)
    if out != text.hidden_size:
        raise CheckpointError(f"the merger's output size ({out}) differs from the LM's hidden size ({text.hidden_size})")
    connector = ConnectorConfig(type="spatial_merge", merge_size=merge,
                                norm_type="rmsnorm" if kind == "qwen2_5_vl" else "layernorm")
    ids = {k: int(c.get(k, d)) for k, d in TOKEN_DEFAULTS.items()}
    cfg = ModelConfig(vision=vision, connector=connector, text=text, image_token_id=ids["image_token_id"],
                      video_token_id=ids["video_token_id"], prompt_format="qwen2_vl")
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------------
# parameter names: (HF, vlkit) patterns, `{}` standing for a layer index; the fused qkv is split / joined

NAMES = [("model.visual.patch_embed.proj.", "vision.embeddings.patch_embedding."),
         ("model.visual.blocks.{}.norm1.", "vision.encoder.layers.{}.layer_norm1."),
         ("model.visual.blocks.{}.norm2.", "vision.encoder.layers.{}.layer_norm2."),
         ("model.visual.blocks.{}.attn.proj.", "vision.encoder.layers.{}.self_attn.out_proj."),
         ("model.visual.blocks.{}.mlp.", "vision.encoder.layers.{}.mlp."),
         ("model.visual.merger.", "connector."),
         ("lm_head.", "language.lm_head."),  # before the LM's prefix: the first match wins
         ("model.language_model.", "language.")]
QKV = re.compile(r"model\.visual\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
SPLIT_QKV = re.compile(r"vision\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
# transformers 4.x checkpoints (the Hub's): visual.* and model.* (the LM)
LEGACY_PREFIXES = [("visual.", "model.visual."), ("model.", "model.language_model.")]


def _rename(key: str, src: int) -> Optional[str]:
    for pair in NAMES:
        pattern = re.escape(pair[src]).replace(r"\{\}", r"(\d+)")
        m = re.match(pattern, key)
        if m:
            return pair[1 - src].format(*m.groups()) + key[m.end():]
    return None


def state_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names -> vlkit names; the fused qkv becomes q_proj / k_proj / v_proj. Unknown keys are kept as they are
    (and then reported as unexpected)."""
    out = {}
    for key, value in state.items():
        if not key.startswith(("model.visual.", "model.language_model.", "lm_head.")):
            key = next((new + key[len(old):] for old, new in LEGACY_PREFIXES if key.startswith(old)), key)
        m = QKV.match(key)
        if m:
            for name, part in zip("qkv", value.chunk(3, 0)):
                out[f"vision.encoder.layers.{m.group(1)}.self_attn.{name}_proj.{m.group(2)}"] = part
            continue
        out[_rename(key, 0) or key] = value
    return out


def state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vlkit names -> HF names (transformers 5's layout), q/k/v fused into qkv; float32 copies on the CPU."""
    out: dict[str, Any] = {}
    fused: dict[tuple, dict] = {}
    for key, value in state.items():
        value = value.detach().to("cpu", torch.float32).contiguous().clone()
        m = SPLIT_QKV.match(key)
        if m:
            fused.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        name = _rename(key, 1)
        if name is None:
            raise CheckpointError(f"the parameter {key!r} has no place in a Qwen2-VL checkpoint")
        out[name] = value
    for (layer, kind), parts in fused.items():
        out[f"model.visual.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[x] for x in "qkv"])
    return out


# ---------------------------------------------------------------------------------------------------------
# transformers' pixel layout: flat patches, block-major


def to_hf_pixels(item: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """An image (C, H, W) or clip (T, C, H, W) -> transformers' `pixel_values` rows (t * gh * gw, C * tp * p * p):
    merge blocks contiguous, each patch flattened as (channel, frame, row, col); an image is repeated in time and
    a clip's last frame fills its last temporal patch, as Qwen2VLImageProcessor / Qwen2VLVideoProcessor do."""
    frames = item[None] if item.dim() == 3 else item
    frames = frames.expand(temporal_patch_size, -1, -1, -1) if item.dim() == 3 else frames
    pad = -frames.shape[0] % temporal_patch_size
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = frames.shape
    p, m, tp = patch_size, merge_size, temporal_patch_size
    x = frames.reshape(t // tp, tp, c, h // p // m, m, p, w // p // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, bh, bw, mh, mw, c, tp, p, p
    return x.reshape(-1, c * tp * p * p)


def grid_thw(item: torch.Tensor, patch_size: int, temporal_patch_size: int) -> list[int]:
    """transformers' image_grid_thw / video_grid_thw row of an image (C, H, W) or clip (T, C, H, W)."""
    t = 1 if item.dim() == 3 else -(-item.shape[0] // temporal_patch_size)
    return [t, item.shape[-2] // patch_size, item.shape[-1] // patch_size]
