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
from vlkit.hf.qwen2_vl import FAMILIES as QWEN2_VL_FAMILIES
from vlkit.hf.qwen2_vl import qwen2_vl_tower
from vlkit.hf.qwen2_vl import state_from_hf as qwen2_vl_state
from vlkit.hf.weights import (TEXT_RULES, VISION_RULES, drop_unused_vision, load_safetensors, load_strict, prefixed,
                              rename)
from vlkit.io import read_config
from vlkit.models.bundle import TOKENIZER_FILE, Bundle
from vlkit.models.vlm import VisionLanguageModel
from vlkit.tokenizer import Tokenizer


def build_from_backbones(vision_dir: str | Path, lm_dir: str | Path, connector: str = "mlp",
                         out: str | Path = "runs/built", feature_layer: Optional[int] = None, post_norm: bool = False,
                         connector_options: Optional[dict] = None, seed: int = 0) -> Path:
    """Compose a VLM from an HF vision tower (SigLIP/CLIP, or the tower of a Qwen2-VL / Qwen2.5-VL checkpoint) and
    an HF LM (Llama/Qwen2): the connector is newly initialized, the tokenizer is the LM's plus vlkit's special
    tokens (new embedding rows start at the mean of the old ones), saved as a vlkit checkpoint ready for the
    `align` stage. feature_layer None: -2 without post_layernorm for SigLIP/CLIP (LLaVA-1.5's choice, which keeps
    the model exportable to llava-hf), -1 for a Qwen2-VL tower (what its merger reads); a Qwen2-VL tower keeps its
    native-resolution processor, and a spatial_merge connector gets its merger's merge size and norm."""
    vision_dir, lm_dir = Path(vision_dir), Path(lm_dir)
    vc = vision_section(read_config(vision_dir))
    vision_kind = model_type(vc, vision_dir)
    qwen = vision_kind in QWEN2_VL_FAMILIES
    if not qwen and COMPONENT_FORMATS.get(vision_kind, ComponentFormat("")).kind != "vision":
        raise CheckpointError(f"--vision {vision_dir} is not a vision encoder (model_type {vc.get('model_type')!r})")
    lc = read_config(lm_dir)
    if COMPONENT_FORMATS.get(model_type(lc, lm_dir), ComponentFormat("")).kind != "language":
        raise CheckpointError(f"--lm {lm_dir} is not a decoder LM (model_type {lc.get('model_type')!r})")
    merger = {}
    if qwen:
        vision, tower_connector = qwen2_vl_tower(vc, read_image_processor(vision_dir),
                                                 -1 if feature_layer is None else feature_layer)
        merger = dict(merge_size=tower_connector.merge_size, norm_type=tower_connector.norm_type)
    else:
        vision = vision_config_from_hf(vc, -2 if feature_layer is None else feature_layer, post_norm,
                                       read_image_processor(vision_dir))
    text = text_config_from_hf(lc)
    tok = Tokenizer.from_file(lm_dir / TOKENIZER_FILE)  # adds vlkit's special tokens the LM lacks
    old_vocab = text.vocab_size
    text.vocab_size = max(old_vocab, len(tok))
    opts = {"num_heads": text.num_heads, **merger, **(connector_options or {})}
    cfg = ModelConfig(vision=vision, connector=ConnectorConfig(type=connector, **opts), text=text,
                      image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id)  # None: clips as frames
    torch.manual_seed(seed)
    model = VisionLanguageModel(cfg)

    if qwen:  # the tower only: the merger maps to its own LM's width, a new connector is trained instead
        vstate = {k: v for k, v in qwen2_vl_state(load_safetensors(vision_dir)).items() if k.startswith("vision.")}
    else:
        vstate = rename(load_safetensors(vision_dir), VISION_RULES)
    vstate = drop_unused_vision(vstate, model.vision)
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
