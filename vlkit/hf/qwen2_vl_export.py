"""`qwen2-vl` export: a vlkit model with a Qwen2-VL tower (vlkit.hf.qwen2_vl) written as transformers'
Qwen2VLForConditionalGeneration or, with RMSNorm/SwiGLU blocks, Qwen2_5_VLForConditionalGeneration (hence vLLM).
Importing this module registers the format with vlkit.hf.export.EXPORTERS."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.config import ModelConfig
from vlkit.hf.configs import VLKIT_ACT, text_config_to_hf
from vlkit.hf.export import EXPORTERS, ExportError
from vlkit.hf.image_processors import RESAMPLE_CODES
from vlkit.hf.qwen2_vl import VIDEO_FPS, VISION_NORM_EPS, state_to_hf
from vlkit.hf.tokenizer import GENERATION_CONFIG_FILE
from vlkit.io import CONFIG_FILE, WEIGHTS_FILE, write_json

SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
VLKIT_ACT_QWEN = {**VLKIT_ACT, "silu": "silu"}


def family(cfg: ModelConfig) -> str:
    """qwen2_vl (LayerNorm, fc MLP) or qwen2_5_vl (RMSNorm, SwiGLU); ExportError for other mixes."""
    v, c = cfg.vision, cfg.connector
    blocks = (v.norm, v.mlp, c.norm_type)
    if blocks == ("layernorm", "fc", "layernorm"):
        return "qwen2_vl"
    if blocks == ("rmsnorm", "swiglu", "rmsnorm"):
        return "qwen2_5_vl"
    raise ExportError(f"qwen2-vl export: vision.norm={v.norm!r}, vision.mlp={v.mlp!r} with connector.norm_type="
                      f"{c.norm_type!r} is neither Qwen2-VL's (layernorm, fc, layernorm) nor Qwen2.5-VL's "
                      f"(rmsnorm, swiglu, rmsnorm)")


def check_qwen2_vl(model: Any) -> str:
    """The HF family of `model`; ExportError naming the first property Qwen2-VL cannot express."""
    cfg: ModelConfig = model.cfg
    v, c, t, p = cfg.vision, cfg.connector, cfg.text, cfg.vision.processor
    problems = [
        (c.type != "spatial_merge" or not c.norm or c.merge_proj != "mlp",
         f"connector must be spatial_merge with norm and an mlp projection (Qwen2-VL's PatchMerger), got {c.type!r}"),
        (cfg.vision_target != "none", "vision_target must be 'none': Qwen2-VL cannot generate visual codes"),
        (v.position != "rope2d" or v.temporal_patch_size < 2 or v.stem != "patch",
         f"the tower needs position=rope2d, stem=patch and temporal_patch_size >= 2 (got {v.position!r}, "
         f"{v.stem!r}, {v.temporal_patch_size})"),
        (v.class_token or v.pre_norm or model.vision.post_layernorm is not None
         or len(model.vision.encoder.layers) != v.num_layers,
         "the tower must feed its last layer without class token, pre_norm or post_norm"),
        (v.layer_norm_eps != VISION_NORM_EPS, f"vision.layer_norm_eps must be {VISION_NORM_EPS}"),
        (v.hidden_act not in VLKIT_ACT_QWEN, f"vision.hidden_act={v.hidden_act!r} has no HF name"),
        (not p.native or p.merge_size != c.merge_size,
         "the image processor must be native (vision.processor.max_pixels > 0) with merge_size = connector.merge_size"),
        (t.rope != "mrope" or not t.attention_bias or t.rope_scaling is not None
         or t.dim_per_head * t.num_heads != t.hidden_size,
         "the LM must be Qwen2's layout (q/k/v biases, head_dim = hidden / heads) with text.rope=mrope, no scaling"),
        (cfg.video_token_id is None, "the model needs a video_token_id (<|video_pad|>)"),
        (cfg.prompt_format != "qwen2_vl", f"the model's prompts must be Qwen2-VL's (prompt_format 'qwen2_vl'), got "
                                          f"{cfg.prompt_format!r}: its tokenizer and chat template go with it"),
    ]
    for bad, message in problems:
        if bad:
            raise ExportError(f"qwen2-vl export: {message}")
    kind = family(cfg)
    if kind == "qwen2_vl" and (v.window_size or v.intermediate_size % v.hidden_size or t.mrope_time_step != 1.0):
        raise ExportError("qwen2-vl export: a Qwen2-VL tower has no window attention, an MLP of a whole multiple of "
                          "its width (mlp_ratio) and text.mrope_time_step 1")
    if kind == "qwen2_5_vl":
        unit = v.patch_size * c.merge_size
        tps = t.mrope_time_step * VIDEO_FPS / v.temporal_patch_size
        if v.window_size % unit or tps != int(tps):
            raise ExportError(f"qwen2-vl export: Qwen2.5-VL needs window_size a multiple of {unit} and an integer "
                              f"tokens_per_second (text.mrope_time_step * {VIDEO_FPS:g} / temporal_patch_size = {tps})")
    return kind


def vision_config(model: Any, kind: str) -> dict:
    cfg: ModelConfig = model.cfg
    v, out = cfg.vision, cfg.text.hidden_size
    common = {"model_type": f"{kind}_vision", "depth": v.num_layers, "num_heads": v.num_heads,
              "in_channels": v.num_channels, "patch_size": v.patch_size, "spatial_merge_size": cfg.connector.merge_size,
              "temporal_patch_size": v.temporal_patch_size, "hidden_act": VLKIT_ACT_QWEN[v.hidden_act],
              "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta}}
    if kind == "qwen2_vl":
        return {**common, "embed_dim": v.hidden_size, "hidden_size": out, "mlp_ratio": v.intermediate_size // v.hidden_size}
    unit = v.patch_size * cfg.connector.merge_size
    windows = bool(v.window_size)  # no windows: every layer attends to the whole image
    return {**common, "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size, "out_hidden_size": out,
            "window_size": v.window_size if windows else unit,
            "fullatt_block_indexes": list(v.full_attention_layers) if windows else list(range(v.num_layers)),
            "tokens_per_second": int(cfg.text.mrope_time_step * VIDEO_FPS / v.temporal_patch_size)}


def qwen2_vl_config(model: Any, kind: str, tok: Any) -> dict:
    cfg: ModelConfig = model.cfg
    t = cfg.text
    ids = {name: tok.hf.token_to_id(token) for name, token in zip(
        ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"), SPECIAL_TOKENS)}
    if ids["image_token_id"] != cfg.image_token_id or ids["video_token_id"] != cfg.video_token_id or None in ids.values():
        raise ExportError(f"qwen2-vl export: the tokenizer's {SPECIAL_TOKENS} ids {ids} do not match the model's "
                          f"image/video tokens ({cfg.image_token_id}, {cfg.video_token_id})")
    text = text_config_to_hf(t, bos_token_id=None, eos_token_id=tok.stop_ids[0], pad_token_id=tok.pad_id)
    text.pop("rope_theta")
    text.update(model_type=f"{kind}_text", rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                                            "mrope_section": list(t.mrope_sections)})
    text.pop("architectures")
    arch = "Qwen2VLForConditionalGeneration" if kind == "qwen2_vl" else "Qwen2_5_VLForConditionalGeneration"
    return {"architectures": [arch], "model_type": kind, "text_config": text, "vision_config": vision_config(model, kind),
            "tie_word_embeddings": t.tie_word_embeddings, "dtype": "float32", **ids}


def processor_config(model: Any, kind: str) -> dict:
    v = model.cfg.vision
    p = v.processor
    processor_class = "Qwen2VLProcessor" if kind == "qwen2_vl" else "Qwen2_5_VLProcessor"
    return {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class,
            "min_pixels": p.min_pixels, "max_pixels": p.max_pixels,
            "size": {"shortest_edge": p.min_pixels, "longest_edge": p.max_pixels}, "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size, "merge_size": p.merge_size, "do_resize": True,
            "resample": {name: code for code, name in RESAMPLE_CODES.items()}[p.resample],
            "do_rescale": p.rescale_factor is not None, "rescale_factor": p.rescale_factor or 1 / 255,
            "do_normalize": p.normalize, "image_mean": list(v.image_mean), "image_std": list(v.image_std),
            "do_convert_rgb": True}


def export_qwen2_vl(pipe: Any, out: Path) -> None:
    from safetensors.torch import save_file

    model, tok = pipe.model, pipe.tokenizer
    kind = check_qwen2_vl(model)
    write_json(out / CONFIG_FILE, qwen2_vl_config(model, kind, tok))
    state = dict(model.state_dict())
    if model.cfg.text.tie_word_embeddings:
        state.pop("language.lm_head.weight", None)
    save_file(state_to_hf(state), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    tok.save_pretrained(out)
    write_json(out / GENERATION_CONFIG_FILE, {"eos_token_id": tok.stop_ids, "pad_token_id": tok.pad_id})
    processor = processor_config(model, kind)
    write_json(out / "preprocessor_config.json", processor)  # transformers 4; 5 reads processor_config.json
    write_json(out / "processor_config.json", {"processor_class": processor["processor_class"],
                                               "image_processor": processor})


EXPORTERS["qwen2-vl"] = export_qwen2_vl
