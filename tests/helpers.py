"""Tiny models shared by test packages (the `tokenizer` and `make_model` fixtures are in conftest.py)."""
import torch

from vlkit.config import VQConfig, tiny_model_config
from vlkit.models.vlm import VisionLanguageModel
from vlkit.models.vq import VisualTokenizer
from vlkit.pipeline import Pipeline


def perturb(model, seed=1):
    """Add seeded noise to every weight, so that a freshly built model gives varied, non-degenerate outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def tiny_vq(depth=1, seed=0):
    torch.manual_seed(seed)
    cfg = VQConfig(codebook_size=16, code_dim=8, depth=depth, hidden_size=16, num_layers=1, downsample=16,
                   image_size=64)
    return VisualTokenizer(cfg).eval()


def vluas_pipe(tokenizer, depth=1, seed=0, **overrides):
    """A Pipeline whose model generates images (vision_target='codes') with a tiny visual tokenizer."""
    vq = tiny_vq(depth)
    torch.manual_seed(seed)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer) + vq.cfg.codebook_size,
                            vision_target="codes", vq=vq.cfg, text_vocab_size=len(tokenizer), **overrides)
    cfg.image_token_id = tokenizer.image_pad_id
    return Pipeline(VisionLanguageModel(cfg), tokenizer, vq=vq)
