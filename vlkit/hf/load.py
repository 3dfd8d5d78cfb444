"""Reading a Hugging Face model directory into vlkit parts.

Supported (keyed by HF `model_type`, or read off `architectures`): vision encoders siglip / clip (whole or
vision-only), decoder LMs llama (incl. SmolLM2) / qwen2, whole VLMs llava (LLaVA-1.5, llava-hf layout) and
idefics3 / smolvlm, qwen2_vl / qwen2_5_vl (vlkit.hf.qwen2_vl). Everything is read from config.json /
*.safetensors / tokenizer.json directly, so loading needs neither transformers nor a network.

Importing this module registers two formats with `vlkit.models.bundle.load_bundle`: "hf" (a whole HF VLM
directory) and "vlkit-hf-chat" (a vlkit checkpoint that keeps an imported model's tokenizer and chat template).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from vlkit.config import ModelConfig, VisionConfig
from vlkit.errors import CheckpointError
from vlkit.hf.configs import (idefics3_model_config, llava_model_config, text_config_from_hf, vision_config_from_hf,
                              vision_section)
from vlkit.hf.image_processors import read_image_processor
from vlkit.hf.qwen2_vl import qwen2_vl_model_config, state_from_hf
from vlkit.hf.tokenizer import chat_tools
from vlkit.hf.weights import (IDEFICS3_RULES, LLAVA_RULES, TEXT_RULES, VISION_RULES, drop_unused_vision,
                              load_safetensors, load_strict, prefixed, rename)
from vlkit.io import read_config
from vlkit.models.bundle import (CHECKPOINT_FORMATS, Bundle, CheckpointFormat, check_vocab, is_vlkit_config,
                                 load_vlkit_parts)
from vlkit.models.language import LanguageModel
from vlkit.models.vision import VisionEncoder
from vlkit.models.vlm import VisionLanguageModel, checkpoint_dtype, load_state


@dataclass
class VLMFormat:
    """A whole HF VLM: its config translation and its parameter names (prefix rules, or a function)."""

    model_config: Callable[[dict, Optional[dict]], ModelConfig]
    rules: list
    convert: Optional[Callable[[dict], dict]] = None  # HF state -> vlkit names, where prefix rules do not suffice

    def state(self, hf_state: dict) -> dict:
        return self.convert(hf_state) if self.convert is not None else rename(hf_state, self.rules)


@dataclass
class ComponentFormat:
    """A vision tower or a decoder LM, the parts `vlkit build` composes."""

    kind: str  # "vision" | "language"


# HF model_type -> what it is; `detect_format` and the loaders look names up here (no name sniffing)
VLM_FORMATS: dict[str, VLMFormat] = {
    "llava": VLMFormat(llava_model_config, LLAVA_RULES),
    "idefics3": VLMFormat(idefics3_model_config, IDEFICS3_RULES),
    "smolvlm": VLMFormat(idefics3_model_config, IDEFICS3_RULES),
    "qwen2_vl": VLMFormat(qwen2_vl_model_config, [], state_from_hf),
    "qwen2_5_vl": VLMFormat(qwen2_vl_model_config, [], state_from_hf),
}
COMPONENT_FORMATS: dict[str, ComponentFormat] = {
    "siglip": ComponentFormat("vision"), "siglip_vision_model": ComponentFormat("vision"),
    "clip": ComponentFormat("vision"), "clip_vision_model": ComponentFormat("vision"),
    "llama": ComponentFormat("language"), "qwen2": ComponentFormat("language"),
}
ARCHITECTURES = {"LlavaForConditionalGeneration": "llava", "Idefics3ForConditionalGeneration": "idefics3",
                 "SmolVLMForConditionalGeneration": "smolvlm", "LlamaForCausalLM": "llama",
                 "Qwen2ForCausalLM": "qwen2", "SiglipModel": "siglip", "SiglipVisionModel": "siglip_vision_model",
                 "CLIPModel": "clip", "CLIPVisionModel": "clip_vision_model",
                 "Qwen2VLForConditionalGeneration": "qwen2_vl", "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl"}


def model_type(c: dict, path: Path) -> str:
    """The supported HF model_type of config.json `c` (or the one its `architectures` name); else CheckpointError."""
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
    if is_vlkit_config(c):
        return "vlkit"
    return model_type(c, path)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """A whole HF VLM directory (llava, idefics3, smolvlm) -> VisionLanguageModel (eval mode), in `dtype`
    (None: the dtype of the checkpoint's weights)."""
    path = Path(path)
    c = read_config(path)
    kind = model_type(c, path)
    if kind not in VLM_FORMATS:
        raise CheckpointError(f"{path} is a {COMPONENT_FORMATS[kind].kind} model ({kind}), not a whole VLM; compose "
                              f"one with `vlkit build --vision DIR --lm DIR` (vlkit.hf.build_from_backbones)")
    fmt = VLM_FORMATS[kind]
    cfg = fmt.model_config(c, read_image_processor(path))
    model = VisionLanguageModel(cfg)
    state = drop_unused_vision(fmt.state(load_safetensors(path)), model.vision)
    model = model.to(dtype or checkpoint_dtype(state))
    load_state(model, state, str(path))
    return model.to(device).eval()


def vision_config_from_dir(path: str | Path, feature_layer: int = -1, post_norm: Optional[bool] = None) -> VisionConfig:
    c = vision_section(read_config(path))
    return vision_config_from_hf(c, feature_layer, post_norm, read_image_processor(path))


def load_vision_encoder(path: str | Path, feature_layer: int = -1, post_norm: Optional[bool] = None):
    """A SigLIP / CLIP (vision) checkpoint -> vlkit VisionEncoder: features are transformers' hidden_states
    [feature_layer]; for the last layer post_norm=None gives its last_hidden_state (see vision_config_from_hf)."""
    cfg = vision_config_from_dir(path, feature_layer, post_norm)
    cfg.validate()
    encoder = VisionEncoder(cfg)
    state = drop_unused_vision(rename(load_safetensors(path), VISION_RULES), encoder)
    load_strict(prefixed(encoder, "vision."), state, str(path))
    return encoder.eval()


def load_language_model(path: str | Path):
    """A Llama / Qwen2 (incl. SmolLM2) causal-LM checkpoint -> vlkit LanguageModel."""
    cfg = text_config_from_hf(read_config(path))
    cfg.validate()
    lm = LanguageModel(cfg)
    state = rename(load_safetensors(path), TEXT_RULES)
    optional = ["language.lm_head.weight"] if cfg.tie_word_embeddings else []
    load_strict(prefixed(lm, "language."), state, str(path), optional)
    return lm.eval()


# ---------------------------------------------------------------------------------------------------------
# Bundles: the formats `load_bundle` reads with this module


def load_hf(path: Path, config: dict, device: Any, dtype: Optional[torch.dtype]) -> Bundle:
    """A whole HF VLM directory -> Bundle with the model's own tokenizer, image token, chat template and image
    processor (dtype None: the checkpoint's)."""
    model = load_model(path, device, dtype)
    tokenizer, processor = chat_tools(path, config, model.cfg)
    return Bundle(model, tokenizer, path=path, processor=processor)


def load_vlkit_hf_chat(path: Path, config: dict, device: Any, dtype: Optional[torch.dtype]) -> Bundle:
    """A vlkit checkpoint fine-tuned from an HF VLM (ModelConfig.prompt_format): its own tokenizer and template."""
    model, vq = load_vlkit_parts(path, device, dtype)
    tokenizer, processor = chat_tools(path, {}, model.cfg)
    return check_vocab(Bundle(model, tokenizer, path=path, vq=vq, processor=processor))


CHECKPOINT_FORMATS["hf"] = CheckpointFormat(claims=lambda c: not is_vlkit_config(c), load=load_hf)
CHECKPOINT_FORMATS["vlkit-hf-chat"] = CheckpointFormat(
    claims=lambda c: is_vlkit_config(c) and c.get("prompt_format") is not None, load=load_vlkit_hf_chat)
