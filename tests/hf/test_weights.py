"""Weights of HF checkpoints: strict loading names missing, unexpected and mis-shaped tensors by vlkit name;
safetensors files (single or sharded), never pickles; prefix rules."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

from tests.hf.hf_fixtures import make_llama, make_qwen2, make_siglip  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hf import load_language_model, load_vision_encoder  # noqa: E402
from vlkit.hf.weights import TEXT_RULES, VISION_RULES, load_safetensors, rename  # noqa: E402


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = make_llama(tmp_path / "lm")
    state = load_file(str(path / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['language.layers.1.mlp.up_proj.weight'\]"):
        load_language_model(path)


def test_mismatched_tensor_is_named(tmp_path):
    _, path = make_siglip(tmp_path / "v")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatches .*mlp\.fc1\.weight: file \(64, 32\) vs model \(48, 32\)"):
        load_vision_encoder(path)


def test_unexpected_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = make_qwen2(tmp_path / "lm")
    state = load_file(str(path / "model.safetensors"))
    state["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(32)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['language.layers.0.self_attn.o_proj.bias'\]"):
        load_language_model(path)


def test_missing_weights_file_is_named(tmp_path):
    _, path = make_llama(tmp_path / "lm")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors.*pytorch_model.bin"):
        load_language_model(path)


def test_sharded_checkpoint_reads_every_shard_of_the_index(tmp_path):
    from safetensors.torch import load_file, save_file

    ref, path = make_llama(tmp_path / "lm")
    state = load_file(str(path / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(path / file))
    (path / "model.safetensors").unlink()
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    got = load_safetensors(path)
    assert sorted(got) == names and all(torch.equal(got[k], state[k]) for k in names)
    ids = torch.randint(5, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    lm = load_language_model(path)
    with torch.no_grad():
        assert (lm.lm_head(lm(lm.embed_tokens(ids))) - ref(input_ids=ids).logits).abs().max() <= 1e-4
    (path / "model-00002-of-00002.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors is missing, corrupt or truncated"):
        load_safetensors(path)


def test_rename_takes_the_longest_matching_prefix_and_drops_none_targets():
    state = {"vision_model.encoder.layers.0.x": 1, "text_model.embeddings.y": 2, "logit_scale": 3, "patch.z": 4}
    assert rename(state, VISION_RULES) == {"vision.encoder.layers.0.x": 1, "vision.patch.z": 4}
    assert rename({"model.layers.0.w": 5, "lm_head.weight": 6, "other": 7}, TEXT_RULES) == {
        "language.layers.0.w": 5, "language.lm_head.weight": 6, "other": 7}
