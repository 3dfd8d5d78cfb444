"""qwen2-vl export: an imported Qwen2-VL / Qwen2.5-VL, exported, loads in transformers' from_pretrained with the
same logits (TOL) and 20 greedy tokens on images and a video, and vlkit.load reads it back; what Qwen2-VL cannot
express is refused by name."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import make_qwen2_vl  # noqa: E402
from tests.hf.test_qwen2_vl import _items, check_parity  # noqa: E402
from vlkit.hf import ExportError  # noqa: E402


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_export_loads_in_transformers_with_identical_logits_and_greedy(tmp_path, family):
    from transformers import AutoModelForImageTextToText

    _, path = make_qwen2_vl(tmp_path / "m", family, seed=1)
    pipe = vlkit.load(path)
    out = pipe.export(tmp_path / "out", format="qwen2-vl")
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    ref = AutoModelForImageTextToText.from_pretrained(str(out)).eval()
    model = pipe.model
    for shapes in ([(48, 112)], [(64, 64), (112, 48)], [(4, 48, 64)]):
        check_parity(ref, model, _items(shapes, seed=len(shapes)))
    back = vlkit.load(out)  # and vlkit reads its export: same config, same weights, same prompts
    assert back.model.cfg == model.cfg
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), model.state_dict().values()))
    pixels = pipe.image_tensor(torch.rand(3, 40, 90).mul(255).byte().permute(1, 2, 0).numpy())
    assert back.prompt_ids("what is it ?", [pixels]) == pipe.prompt_ids("what is it ?", [pixels])


def test_export_refuses_what_qwen2_vl_cannot_express(tmp_path):
    _, path = make_qwen2_vl(tmp_path / "m")
    pipe = vlkit.load(path)
    cfg = pipe.model.cfg
    cfg.vision.window_size = 32  # window attention in a Qwen2-VL (LayerNorm) tower
    with pytest.raises(ExportError, match="no window attention"):
        pipe.export(tmp_path / "a", format="qwen2-vl")
    cfg.vision.window_size = 0
    cfg.vision.norm = "rmsnorm"  # half a Qwen2.5-VL tower
    with pytest.raises(ExportError, match="vision.norm='rmsnorm'"):
        pipe.export(tmp_path / "b", format="qwen2-vl")
    cfg.vision.norm = "layernorm"
    cfg.text.rope = "default"
    with pytest.raises(ExportError, match="text.rope=mrope"):
        pipe.export(tmp_path / "c", format="qwen2-vl")
    cfg.text.rope = "mrope"
    with pytest.raises(ExportError, match="llava-hf export needs connector.type='mlp'"):
        pipe.export(tmp_path / "d", format="llava-hf")
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()
