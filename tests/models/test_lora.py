"""LoRA (peft) on vlkit models: only adapters train, merged model == adapter model, merged model saves plainly."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="LoRA tests need the dev extra (peft)")

from vlkit.config import tiny_model_config  # noqa: E402
from vlkit.models.lora import LoraError, apply_lora, has_lora, lora_parameters, merge_lora  # noqa: E402
from vlkit.models.vlm import VisionLanguageModel  # noqa: E402


def _batch(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = model.tokens_per_image(64, 64)
    ids = torch.cat([torch.randint(20, 500, (2, 5), generator=g), torch.full((2, n), model.cfg.image_token_id),
                     torch.randint(20, 500, (2, 7), generator=g)], 1)
    images = [torch.randn(3, 64, 64, generator=g) for _ in range(2)]
    return ids, images


def _logits(model, ids, images):
    with torch.no_grad():
        return model(ids, images=images, return_logits=True)["logits"]


def test_only_adapters_train_and_merge_equals_adapter_model(tmp_path):
    torch.manual_seed(0)
    model = VisionLanguageModel(tiny_model_config()).eval()
    ids, images = _batch(model)
    base_logits = _logits(model, ids, images)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}

    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    assert isinstance(model, VisionLanguageModel) and has_lora(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(lora_parameters(model)) == 2 * 7 * 2  # 2 layers x (q,k,v,o,gate,up,down) x (A, B)
    assert not any("vision" in n for n in trainable)
    assert torch.allclose(_logits(model, ids, images), base_logits, atol=1e-6)  # B starts at zero

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    labels = ids.masked_fill(ids == model.cfg.image_token_id, -100)
    for _ in range(3):
        loss = model(ids, images=images, labels=labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    state = model.state_dict()
    for key, value in frozen.items():  # base weights untouched (peft renames them to *.base_layer.*)
        name = key if key in state else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(state[name], value), key
    adapted = _logits(model, ids, images)
    assert (adapted - base_logits).abs().max() > 1e-3  # training changed the adapter model

    merged = merge_lora(model)
    assert not has_lora(merged) and set(merged.state_dict()) == set(frozen)
    assert (_logits(merged, ids, images) - adapted).abs().max() <= 1e-4
    merged.save_pretrained(tmp_path)
    again = VisionLanguageModel.from_pretrained(tmp_path)
    assert torch.equal(_logits(again, ids, images), _logits(merged, ids, images))


def test_vision_adapters_and_extra_trainable():
    model = VisionLanguageModel(tiny_model_config())
    apply_lora(model, r=2, alpha=2, dropout=0.1, targets=("q_proj", "v_proj"), vision=True,
               vision_targets=("fc1",), trainable=("connector",))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("vision.encoder.layers.0.mlp.fc1.lora_A") for n in names)
    assert any(n.startswith("connector.") for n in names)
    assert not any("k_proj.lora" in n or "o_proj.lora" in n for n in names)


def test_bad_lora_settings_are_named():
    model = VisionLanguageModel(tiny_model_config())
    with pytest.raises(LoraError, match="r=0"):
        apply_lora(model, r=0)
    with pytest.raises(LoraError, match=r"targets=\['qkv'\]"):
        apply_lora(model, targets=("qkv",))
    with pytest.raises(LoraError, match="no LoRA adapters"):
        merge_lora(model)
    apply_lora(model, r=2)
    with pytest.raises(LoraError, match="already has LoRA"):
        apply_lora(model, r=2)
