import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vlkit.config import tiny_model_config
from vlkit.models.vlm import VisionLanguageModel
from vlkit.tokenizer import Tokenizer

CORPUS = [
    "What color is the circle? red", "What shape is it? square", "How many objects are there? 3",
    "Where is the blue star? <ref>the blue star</ref><box>(120,45),(300,999)</box>",
    "Describe the image. A green triangle left of a yellow hexagon.", "yes no 0 1 2 3 4 5 6 7 8 9",
]

CONNECTORS = ["linear", "mlp", "resampler", "spatial_merge"]


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer.train(CORPUS * 10, vocab_size=320)


@pytest.fixture
def make_model(tokenizer):
    def make(connector="mlp", seed=0, **overrides):
        torch.manual_seed(seed)
        cfg = tiny_model_config(connector, vocab_size=len(tokenizer), **overrides)
        cfg.image_token_id = tokenizer.image_pad_id
        return VisionLanguageModel(cfg).eval()

    return make


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks are scripts, not a package; they import their sibling arms.py)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
    return mod
