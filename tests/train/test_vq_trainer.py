"""Tokenizer trainer: outputs on disk, data dirs and recipes, learning, residual depth helps."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.config import ConfigError, VQConfig
from vlkit.models.vq import VisualTokenizer
from vlkit.data.synth.world import sample_scene
from vlkit.train.vq_trainer import (VisualTokenizerDataError, load_images, train_visual_tokenizer,
                                    train_visual_tokenizer_from_recipe)

TINY = dict(codebook_size=32, code_dim=8, hidden_size=32, num_layers=1, downsample=8, image_size=32,
            ema_decay=0.9, dead_code_threshold=0.05)


def scenes(n: int, size: int = 32, seed: int = 0) -> list:
    """`n` images of the synthetic world (1-3 shapes each)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, size=size, n_objects=int(rng.integers(1, 4))).image for _ in range(n)]


def make_data_dir(root, n=12):
    (root / "images").mkdir(parents=True)
    with open(root / "data.jsonl", "w") as f:
        for i, img in enumerate(scenes(n, 32, seed=5)):
            img.save(root / "images" / f"{i:03d}.png")
            f.write(json.dumps({"id": str(i), "images": [f"images/{i:03d}.png"],
                                "conversations": [{"from": "human", "value": "<image>\nhi"},
                                                  {"from": "gpt", "value": "ok"}]}) + "\n")
    return root


def test_train_writes_tokenizer_png_and_metrics(tmp_path):
    images = scenes(16, 32, seed=0)
    m = train_visual_tokenizer(VQConfig(**TINY), images, steps=4, batch_size=4, lr=1e-3, out_dir=tmp_path / "vq",
                               progress=False, eval_images=8)
    for key in ("psnr", "codebook_usage", "perplexity", "seconds"):
        assert key in m
    assert 0 < m["codebook_usage"] <= 1
    files = {p.name for p in (tmp_path / "vq").iterdir()}
    assert {"config.json", "model.safetensors", "recon.png", "metrics.json"} <= files
    png = Image.open(tmp_path / "vq" / "recon.png")
    assert png.size == (8 * 32, 2 * 32)  # originals on top, reconstructions below
    saved = json.loads((tmp_path / "vq" / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(m["psnr"]) and saved["history"]
    tok = VisualTokenizer.from_pretrained(tmp_path / "vq")
    x = load_images(images[:8], 32)
    assert tok.encode(x).shape == (8, 4, 4, 1)


def test_data_dir_and_recipe(tmp_path):
    data = make_data_dir(tmp_path / "data")
    assert load_images(data, 32).shape == (12, 3, 32, 32)
    recipe = tmp_path / "vq.yaml"
    recipe.write_text(f"vq: {json.dumps(TINY)}\ndata: {data}\nsteps: 3\nbatch_size: 4\nlr: 1e-3\n"
                      f"out: {tmp_path / 'run'}\nprogress: false\n")
    m = train_visual_tokenizer_from_recipe(recipe, overrides=["steps=2"])
    assert m["steps"] == 2 and m["train_images"] == 12
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_bad_inputs_are_user_errors(tmp_path):
    cfg = VQConfig(**TINY)
    with pytest.raises(VisualTokenizerDataError, match="does not exist"):
        train_visual_tokenizer(cfg, tmp_path / "missing", steps=1, out_dir=tmp_path / "o", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisualTokenizerDataError, match="no data.jsonl"):
        train_visual_tokenizer(cfg, tmp_path / "empty", steps=1, out_dir=tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="precision"):
        train_visual_tokenizer(cfg, scenes(2, 32), steps=1, precision="fp8", out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="steps"):
        train_visual_tokenizer(cfg, scenes(2, 32), steps=0, out_dir=tmp_path / "o")
    bad = tmp_path / "bad.yaml"
    bad.write_text("vq: {codebook_size: 8}\ndata: x\nstepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        train_visual_tokenizer_from_recipe(bad)


def test_training_learns_and_depth_two_beats_depth_one(tmp_path):
    """Same data, seed and steps: training beats the untrained tokenizer, and residual depth 2 (shared codebook)
    reconstructs better than depth 1. The images are mosaics of random flat colors on the code grid, so a
    16-code depth-1 codebook cannot hold them while depth 2 has 16 x 16 combinations."""
    from vlkit.train.vq_trainer import evaluate_visual_tokenizer

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(64, 3, 4, 4, generator=g) * 2 - 1, scale_factor=4)
    cfg = dict(codebook_size=16, code_dim=8, hidden_size=32, num_layers=1, downsample=4, image_size=16,
               ema_decay=0.9, dead_code_threshold=0.05)
    torch.manual_seed(0)
    before = VisualTokenizer(VQConfig(**cfg))
    before.train()
    before(images[:32])  # data init of the codebook, as the first training step does
    psnr_before = evaluate_visual_tokenizer(before, images)["psnr"]
    runs = {}
    for depth in (1, 2):
        runs[depth] = train_visual_tokenizer(VQConfig(**{**cfg, "depth": depth}), images, steps=100, batch_size=16,
                                             lr=3e-3, out_dir=tmp_path / f"d{depth}", progress=False, warmup_steps=10)
    assert runs[1]["psnr"] > psnr_before + 3
    assert runs[2]["psnr"] > runs[1]["psnr"] + 0.3
