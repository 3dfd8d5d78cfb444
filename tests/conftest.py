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
