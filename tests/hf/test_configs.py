"""HF configs -> vlkit configs: both transformers generations, the HF defaults for omitted fields, unsupported
variants named; text configs translate back for export."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

from tests.hf.hf_fixtures import make_llava  # noqa: E402
from vlkit.config import TextConfig  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hf import configs, load_model  # noqa: E402


def test_config_translation_reads_both_transformers_generations():
    v4 = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
          "intermediate_size": 128, "vocab_size": 50, "rope_theta": 500000.0,
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}}
    v5 = dict(v4, rope_theta=None, rope_scaling=None,
              rope_parameters={"rope_theta": 500000.0, **v4["rope_scaling"]})
    a, b = configs.text_config_from_hf(v4), configs.text_config_from_hf(v5)
    assert a == b and a.rope_theta == 500000.0 and a.rope_scaling["rope_type"] == "llama3"
    assert a.num_kv_heads == 4 and a.tie_word_embeddings is False  # HF defaults fill omitted fields


def test_unsupported_llava_variants_are_named(tmp_path):
    _, path = make_llava(tmp_path / "llava")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(cfg, vision_feature_select_strategy="full")))
    with pytest.raises(CheckpointError, match="vision_feature_select_strategy='full' with a clip_vision_model"):
        load_model(path)
    (path / "config.json").write_text(json.dumps(dict(cfg, vision_feature_layer=[-2, -5])))
    with pytest.raises(CheckpointError, match="vision_feature_layer"):
        load_model(path)


@pytest.mark.parametrize("bias", [False, True], ids=["llama", "qwen2"])
def test_text_config_translates_back_and_forth(bias):
    t = TextConfig(vocab_size=120, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=6, num_kv_heads=2,
                   rope_theta=5e5, tie_word_embeddings=bias, attention_bias=bias,
                   rope_scaling={"rope_type": "linear", "factor": 2.0})
    hf = configs.text_config_to_hf(t, eos_token_id=3)
    assert hf["model_type"] == ("qwen2" if bias else "llama") and hf["eos_token_id"] == 3
    assert configs.text_config_from_hf(hf) == t


def test_unsupported_vision_tower_is_named():
    with pytest.raises(CheckpointError, match="vision model_type 'dinov2' is not supported"):
        configs.vision_config_from_hf({"model_type": "dinov2"})
