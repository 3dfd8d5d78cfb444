"""`vlkit inspect`: image-token scale and image dependence, and the blind gap, of a checkpoint."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.errors import UserError
from vlkit.eval.diagnose import image_token_stats
from vlkit.pipeline import Pipeline


def _images(n=6):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_stats_tell_an_image_blind_connector_from_a_seeing_one(make_model, tokenizer, monkeypatch):
    pipe = Pipeline(make_model("spatial_merge"), tokenizer)
    seeing = image_token_stats(pipe, _images())
    assert seeing["image_dependent_energy"] > 0.01 and seeing["cross_image_cosine"] < 1.0
    assert seeing["norm_ratio"] == pytest.approx(seeing["image_token_norm"] / seeing["text_embedding_norm"], rel=0.01)
    const = torch.randn(16, pipe.config.text.hidden_size)
    monkeypatch.setattr(pipe.model, "encode_images", lambda images: [const.clone() for _ in images])
    blind = image_token_stats(pipe, _images())
    assert blind["image_dependent_energy"] == pytest.approx(0.0, abs=1e-6)
    assert blind["cross_image_cosine"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="at least 2"):
        image_token_stats(pipe, _images(1))


def test_inspect_cli_prints_stats_and_the_blind_gap(make_model, tokenizer, tmp_path, capsys):
    from vlkit.apps.cli import main
    from vlkit.data.synth import generate_dataset

    ckpt = Pipeline(make_model("spatial_merge"), tokenizer).save_pretrained(tmp_path / "ckpt")
    data = generate_dataset(tmp_path / "data", n=6, tasks=["vqa"], split="test", progress=False)
    assert main(["inspect", str(ckpt), "--data", str(data), "--n", "4", "--blind-limit", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and set(report["blind"]) == {"vqa"}
    assert report["blind"]["vqa"]["with_images"] is not None
