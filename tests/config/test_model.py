"""ModelConfig and its parts (vlkit.config.model): the names config keeps of higher registries, presets, legacy keys."""
import pytest

from vlkit import config as C
from vlkit.models.connectors import CONNECTORS
from vlkit.hf.template import PROMPT_FORMATS


def test_the_names_config_keeps_are_the_registries_keys():
    """config is the lowest layer, so it lists connector types and HF prompt formats by name; they must agree."""
    assert C.CONNECTOR_TYPES == tuple(sorted(CONNECTORS))
    assert C.PROMPT_FORMAT_NAMES == tuple(sorted(PROMPT_FORMATS))


def test_unknown_choices_name_the_key_and_the_choices():
    with pytest.raises(C.ConfigError, match=r"^model.connector.type='qformer' is not allowed; choose one of "
                                            r"\['linear', 'mlp', 'resampler', 'spatial_merge'\]$"):
        C.model_config_from_dict({"connector": {"type": "qformer"}})
    with pytest.raises(C.ConfigError, match=r"^model.prompt_format='chatml' is not allowed"):
        C.model_config_from_dict({"prompt_format": "chatml"})
    assert C.model_config_from_dict({"prompt_format": "llava"}).prompt_format == "llava"


def test_a_checkpoint_written_with_pad_token_id_still_loads():
    """Older checkpoints' config.json carry the unused pad_token_id; it is dropped, other unknown keys still fail."""
    data = C.to_dict(C.tiny_model_config())
    assert "pad_token_id" not in data
    assert C.model_config_from_dict({**data, "pad_token_id": 0}) == C.tiny_model_config()
    with pytest.raises(C.ConfigError, match=r"unknown key\(s\) \['pad_id'\]"):
        C.model_config_from_dict({**data, "pad_id": 0})


def test_presets_build_valid_configs():
    for name, make in C.PRESETS.items():
        cfg = make()
        cfg.validate()
        assert isinstance(cfg, C.ModelConfig), name
    assert C.tiny_model_config("spatial_merge", vocab_size=300).text.vocab_size == 300


def test_cross_field_rules_are_checked():
    with pytest.raises(C.ConfigError, match="must be divisible by vision.num_heads"):
        C.VisionConfig(hidden_size=60, num_heads=8).validate()
    with pytest.raises(C.ConfigError, match="needs a `vq` config"):
        C.model_config_from_dict({"vision_target": "codes"})


def test_native_resolution_rules():
    cfg = C.tiny_model_config("spatial_merge")
    cfg.vision.processor = C.ImageProcessorConfig(max_pixels=64 * 64, merge_size=1)
    with pytest.raises(C.ConfigError, match="merge_size=1 must equal connector.merge_size=2"):
        cfg.validate()
    cfg.vision.processor.merge_size = 2
    cfg.validate()
    cfg.dense_prediction = True
    with pytest.raises(C.ConfigError, match="does not yet combine"):
        cfg.validate()
    with pytest.raises(C.ConfigError, match=r"mrope_section=\[4, 4, 4\] must be 3 non-negative integers summing"):
        C.TextConfig(rope="mrope", mrope_section=[4, 4, 4]).validate()
    assert C.TextConfig(rope="mrope").mrope_sections == [2, 3, 3]  # head dim 16: Qwen2-VL's 1/4, 3/8, 3/8
    assert C.TextConfig(hidden_size=1536, num_heads=12, rope="mrope").mrope_sections == [16, 24, 24]
