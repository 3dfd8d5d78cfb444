"""Writing a vlkit model in another format: `llava-hf` loads in transformers' LlavaForConditionalGeneration and
AutoProcessor (hence vLLM), and `vlkit.load` reads it back."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from vlkit.config import ModelConfig, VisionConfig
from vlkit.errors import UserError
from vlkit.hf.configs import VLKIT_ACT, text_config_to_hf
from vlkit.hf.image_processors import RESAMPLE_CODES
from vlkit.hf.tokenizer import GENERATION_CONFIG_FILE
from vlkit.io import CONFIG_FILE, WEIGHTS_FILE, write_dir_atomically, write_json
from vlkit.tokenizer import IM_END, PAD


class ExportError(UserError):
    """A model cannot be written in the requested format; the message says which property prevents it."""


CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def export(pipe: Any, out_dir: str | Path, format: str = "llava-hf") -> Path:
    """Write `pipe` (a Bundle: model, tokenizer) in another format; `llava-hf` loads in transformers'
    LlavaForConditionalGeneration and AutoProcessor (hence vLLM). Written atomically."""
    if format not in EXPORTERS:
        raise ExportError(f"export format {format!r} is unknown; choose one of {sorted(EXPORTERS)}")
    return write_dir_atomically(Path(out_dir), lambda tmp: EXPORTERS[format](pipe, tmp))


def check_llava(model: Any) -> None:
    """ExportError naming the first property of the model that LLaVA cannot express."""
    cfg: ModelConfig = model.cfg
    v = cfg.vision
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
    if v.position != "learned" or v.processor.native or cfg.text.rope != "default":
        raise ExportError("llava-hf export: LLaVA has learned vision positions, one square image size and 1D RoPE; "
                          f"this model has vision.position={v.position!r}, native image sizes={v.processor.native}, "
                          f"text.rope={cfg.text.rope!r} (native-resolution models: docs/native_resolution.md)")


def llava_token_ids(cfg: ModelConfig, tok: Any) -> dict:
    """bos / eos / pad ids of the export; ExportError if one of them, or the image token, is past the table."""
    n_vocab = cfg.text.vocab_size
    ids = dict(bos_token_id=tok.hf.token_to_id(tok.bos_token) if getattr(tok, "bos_token", None) else None,
               eos_token_id=tok.stop_ids[0], pad_token_id=tok.pad_id)
    bad = {k: i for k, i in {**ids, "image_token_index": cfg.image_token_id}.items() if i is not None and i >= n_vocab}
    if bad or len(tok) > n_vocab:
        raise ExportError(f"llava-hf export: the tokenizer ({len(tok)} tokens; ids {bad}) does not fit the "
                          f"model's embedding table ({n_vocab} rows)")
    return ids


def llava_config(model: Any, ids: dict) -> dict:
    """The LlavaConfig of `model` (config.json)."""
    cfg: ModelConfig = model.cfg
    v, t = cfg.vision, cfg.text
    clip = v.class_token
    grid = v.image_size // v.patch_size
    vision_config = {"model_type": "clip_vision_model" if clip else "siglip_vision_model",
                     "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                     "num_hidden_layers": len(model.vision.encoder.layers), "num_attention_heads": v.num_heads,
                     "num_channels": v.num_channels, "image_size": grid * v.patch_size, "patch_size": v.patch_size,
                     "hidden_act": VLKIT_ACT[v.hidden_act], "layer_norm_eps": v.layer_norm_eps}
    if not clip:
        vision_config["vision_use_head"] = False
    return {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "vision_config": vision_config, "text_config": text_config_to_hf(t, **ids),
            "image_token_index": cfg.image_token_id,
            "image_seq_length": model.tokens_per_image(v.image_size, v.image_size),
            # vlkit keeps only the layers it uses, so the selected layer is the tower's last hidden state
            "vision_feature_layer": -1, "vision_feature_select_strategy": "default" if clip else "full",
            "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
            "tie_word_embeddings": t.tie_word_embeddings, "torch_dtype": "float32", **ids}


def llava_state(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights in the Hub's llava-hf names, float32."""
    v, t = model.cfg.vision, model.cfg.text
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
    return state


def write_llava_tokenizer(tok: Any, cfg: ModelConfig, out: Path) -> None:
    """vlkit's tokenizer with a ChatML template, or an imported model's own tokenizer files as it shipped them."""
    if cfg.prompt_format is not None:
        tok.save_pretrained(out)
        return
    tok.save(out / "tokenizer.json")
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": IM_END, "pad_token": PAD,
        "unk_token": None, "model_max_length": cfg.text.max_position_embeddings,
        "clean_up_tokenization_spaces": False, "padding_side": "left", "chat_template": CHATML_TEMPLATE,
        "processor_class": "LlavaProcessor"})
    write_json(out / "special_tokens_map.json", {"eos_token": IM_END, "pad_token": PAD})
    (out / "chat_template.jinja").write_text(CHATML_TEMPLATE)


def export_llava(pipe: Any, out: Path) -> None:
    from safetensors.torch import save_file

    model, tok = pipe.model, pipe.tokenizer
    cfg: ModelConfig = model.cfg
    check_llava(model)
    processor_config = image_processor_to_hf(cfg.vision)
    ids = llava_token_ids(cfg, tok)
    write_json(out / CONFIG_FILE, llava_config(model, ids))
    save_file(llava_state(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    write_llava_tokenizer(tok, cfg, out)
    write_json(out / GENERATION_CONFIG_FILE, {**ids, "eos_token_id": tok.stop_ids, "max_new_tokens": 256})
    # both layouts: transformers 4 reads preprocessor_config.json, transformers 5 processor_config.json's section
    clip = cfg.vision.class_token
    write_json(out / "preprocessor_config.json", processor_config)
    write_json(out / "processor_config.json", {
        "processor_class": "LlavaProcessor", "image_processor": processor_config, "patch_size": cfg.vision.patch_size,
        "image_token": tok.hf.id_to_token(cfg.image_token_id),
        "vision_feature_select_strategy": "default" if clip else "full",
        "num_additional_image_tokens": 1 if clip else 0})


EXPORTERS: dict[str, Callable[[Any, Path], None]] = {"llava-hf": export_llava}


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
    clip_like = p.resize == "shortest_edge" or p.crop_height is not None
    kind = ("LlavaImageProcessor" if p.pad_to_square else "CLIPImageProcessor" if clip_like else "SiglipImageProcessor")
    if kind == "LlavaImageProcessor":
        out["do_pad"] = True
    return {"image_processor_type": kind, "processor_class": "LlavaProcessor", **out,
            "do_rescale": p.rescale_factor is not None, "rescale_factor": p.rescale_factor or 1 / 255,
            "do_normalize": p.normalize, "image_mean": list(v.image_mean), "image_std": list(v.image_std),
            "do_convert_rgb": True}
