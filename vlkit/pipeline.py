"""Pipeline: the user facade, what `vlkit.load` returns.

A Pipeline is a `vlkit.infer.chat.ChatBundle`: a `vlkit.models.bundle.Bundle` (model, tokenizer, processor,
visual tokenizer; saved and loaded whole) that chats (`chat`, `chat_batch`, `chat_stream`), draws
(`generate_image`) and segments (`segment`); here it also exports to other formats (vlkit.hf). `load` reads any
checkpoint format that vlkit.hf and vlkit.models.bundle register (a vlkit checkpoint or a Hugging Face model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from vlkit.hf import export
from vlkit.chat import IMAGE_PROMPT
from vlkit.infer.chat import ChatBundle
from vlkit.models.bundle import load_bundle

__all__ = ["IMAGE_PROMPT", "Pipeline", "load"]


class Pipeline(ChatBundle):
    def export(self, out_dir: str | Path, format: str = "llava-hf") -> Path:
        """Write the model in another format (`llava-hf`: loadable by transformers' LlavaForConditionalGeneration)."""
        return export(self, out_dir, format=format)


def load(path: str | Path, device: str | torch.device = "cpu", dtype: Optional[str | torch.dtype] = None) -> Pipeline:
    """Load a vlkit checkpoint directory or a Hugging Face model directory. The model is in `dtype`; None or
    "auto": the dtype its weights were saved in (a bf16 checkpoint stays bf16)."""
    return Pipeline.of(load_bundle(path, device=device, dtype=dtype))
