"""Hugging Face interop: read HF model directories into vlkit parts, export vlkit models (llava-hf, qwen2-vl), compose
new VLMs from HF backbones.

    configs.py           HF configs <-> vlkit configs (field by field, with the HF class defaults)
    image_processors.py  HF image-processor settings -> vlkit's ImageProcessorConfig
    weights.py           safetensors files, parameter-name rules, strict loading
    template.py          the model's Jinja chat template and HFChatProcessor (PROMPT_FORMATS)
    tokenizer.py         the model's own tokenizer (HFTokenizer) and chat_tools
    load.py              HF directories -> vlkit modules / Bundles (registers the HF checkpoint formats)
    export.py            vlkit -> llava-hf (EXPORTERS: the export formats)
    qwen2_vl.py          Qwen2-VL / Qwen2.5-VL: config, parameter names, transformers' pixel layout
    qwen2_vl_export.py   vlkit -> qwen2-vl (registers the format with EXPORTERS)
    build.py             `vlkit build`: vision tower + LM -> a new vlkit checkpoint

Importing `vlkit.hf` registers its checkpoint formats with `vlkit.models.bundle.load_bundle`.
"""
from vlkit.hf.build import build_from_backbones
from vlkit.hf import qwen2_vl_export  # noqa: F401  (registers the qwen2-vl export format)
from vlkit.hf.export import ExportError, export
from vlkit.hf.load import detect_format, load_language_model, load_model, load_vision_encoder
from vlkit.hf.template import PROMPT_FORMATS

__all__ = ["ExportError", "PROMPT_FORMATS", "build_from_backbones", "detect_format", "export", "load_language_model",
           "load_model", "load_vision_encoder"]
