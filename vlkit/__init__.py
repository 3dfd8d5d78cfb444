"""vlkit: build, train, evaluate and serve vision-language models (vision as input and as target).

    import vlkit
    pipe = vlkit.load("runs/quickstart/final")
    pipe.chat("What color is the circle?", images=["x.png"])
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "export", "__version__"]


def load(path: Any, device: Any = "cpu", dtype: Any = None):
    """A vlkit checkpoint directory or a Hugging Face model directory -> Pipeline. dtype: a torch dtype or
    "float32" / "bfloat16" / "float16"; None or "auto": the dtype the checkpoint's weights are stored in."""
    from vlkit.pipeline import load as _load

    return _load(path, device=device, dtype=dtype)


def export(pipe: Any, out_dir: Any, format: str = "llava-hf"):
    """Write `pipe` in another format (`llava-hf`: loadable by transformers' LlavaForConditionalGeneration)."""
    from vlkit.hf import export as _export

    return _export(pipe, out_dir, format=format)
