"""`vlkit build`: a new VLM composed of a Hugging Face vision tower and a Hugging Face LM, saved as a vlkit
checkpoint ready for the `align` stage."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from vlkit.config import ConnectorConfig, ModelConfig
from vlkit.errors import CheckpointError
from vlkit.hf.configs import text_config_from_hf, vision_config_from_hf, vision_section
from vlkit.hf.image_processors import read_image_processor
from vlkit.hf.load import COMPONENT_FORMATS, ComponentFormat, model_type
from vlkit.hf.weights import (TEXT_RULES, VISION_RULES, drop_unused_vision, load_safetensors, load_strict, prefixed,
                              rename)
from vlkit.io import read_config
from vlkit.models.bundle import TOKENIZER_FILE, Bundle
from vlkit.models.vlm import VisionLanguageModel
from vlkit.tokenizer import Tokenizer


def build_from_backbones(vision_dir: str | Path, lm_dir: str | Path, connector: str = "mlp",
                         out: str | Path = "runs/built", feature_layer: int = -2, post_norm: bool = False,
                         connector_options: Optional[dict] = None, seed: int = 0) -> Path:
    """Compose a VLM from an HF vision tower (SigLIP/CLIP) and an HF LM (Llama/Qwen2): the connector is newly
    initialized, the tokenizer is the LM's plus vlkit's special tokens (new embedding rows start at the mean
    of the old ones), saved as a vlkit checkpoint ready for the `align` stage. The default feature layer -2 without
    post_layernorm is LLaVA-1.5's choice (and keeps the model exportable to llava-hf)."""
    vision_dir, lm_dir = Path(vision_dir), Path(lm_dir)
    vc = vision_section(read_config(vision_dir))
    if COMPONENT_FORMATS.get(model_type(vc, vision_dir), ComponentFormat("")).kind != "vision":
        raise CheckpointError(f"--vision {vision_dir} is not a vision encoder (model_type {vc.get('model_type')!r})")
    lc = read_config(lm_dir)
    if COMPONENT_FORMATS.get(model_type(lc, lm_dir), ComponentFormat("")).kind != "language":
        raise CheckpointError(f"--lm {lm_dir} is not a decoder LM (model_type {lc.get('model_type')!r})")
    vision = vision_config_from_hf(vc, feature_layer, post_norm, read_image_processor(vision_dir))
    text = text_config_from_hf(lc)
    tok = Tokenizer.from_file(lm_dir / TOKENIZER_FILE)  # adds vlkit's special tokens the LM lacks
    old_vocab = text.vocab_size
    text.vocab_size = max(old_vocab, len(tok))
    opts = {"num_heads": text.num_heads, **(connector_options or {})}
    cfg = ModelConfig(vision=vision, connector=ConnectorConfig(type=connector, **opts), text=text,
                      image_token_id=tok.image_pad_id)
    torch.manual_seed(seed)
    model = VisionLanguageModel(cfg)

    vstate = drop_unused_vision(rename(load_safetensors(vision_dir), VISION_RULES), model.vision)
    load_strict(prefixed(model.vision, "vision."), vstate, str(vision_dir))
    lstate = rename(load_safetensors(lm_dir), TEXT_RULES)
    for key in ("language.embed_tokens.weight", "language.lm_head.weight"):
        w = lstate.get(key)
        if w is not None and w.shape[0] == old_vocab and text.vocab_size > old_vocab:
            extra = w.float().mean(0, keepdim=True).expand(text.vocab_size - old_vocab, -1).to(w.dtype)
            lstate[key] = torch.cat([w, extra], 0)
    optional = ["language.lm_head.weight"] if text.tie_word_embeddings else []
    load_strict(prefixed(model.language, "language."), lstate, str(lm_dir), optional)
    return Bundle(model.eval(), tok).save_pretrained(out)
