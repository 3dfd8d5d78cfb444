"""The one validator of config dataclasses (vlkit.config.base): every config declares its fields' ranges, and the
ranges read as they are checked."""
import dataclasses
import typing

import pytest

from vlkit import config as C

CONFIGS = [C.VisionConfig, C.ConnectorConfig, C.TextConfig, C.VQConfig, C.ModelConfig, C.DataConfig,
           C.StageConfig, C.TrainConfig, C.TokenizerConfig, C.TargetSpec, C.GenerationConfig, C.ImageGenerationConfig,
           C.SamplingParams, C.SynthConfig]
UNBOUNDED = {"VisionConfig.feature_layer",  # negative indexes count from the last layer; checked in validate()
             "VisionConfig.image_mean"}     # any finite value


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range(cls):
    """A new numeric field without a range fails here, instead of accepting a negative value silently."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) or (tp,)
        if any(a in (int, float, tuple) for a in args) and f"{cls.__name__}.{f.name}" not in UNBOUNDED:
            assert "range" in f.metadata, f"{cls.__name__}.{f.name} has no declared range"
    assert cls() is not None  # the defaults are valid


def test_ranges_read_as_they_are_checked():
    r = C.Range(0, 1, hi_open=True)
    assert str(r) == "in [0, 1)" and 0 in r and 0.999 in r and 1 not in r and -0.1 not in r
    assert str(C.Range(0, lo_open=True)) == "> 0" and 0 not in C.Range(0, lo_open=True)
    assert str(C.Range(hi=5)) == "<= 5" and 5 in C.Range(hi=5) and 6 not in C.Range(hi=5)
    assert str(C.Range(-(2 ** 63), 2 ** 63 - 1)) == "in [-9223372036854775808, 9223372036854775807]"  # ints in full


def test_frozen_configs_are_normalized_too():
    cfg = C.SynthConfig(size=96.0)
    assert cfg.size == 96 and isinstance(cfg.size, int)


def test_save_json_round_trips(tmp_path):
    cfg = C.tiny_model_config("resampler")
    C.save_json(cfg, tmp_path / "config.json")
    assert C.model_config_from_dict(C.load_yaml(tmp_path / "config.json")) == cfg  # JSON is YAML


def test_overrides_reach_nested_keys_and_list_entries():
    data = {"stages": [{"lr": 1.0}], "train": None}
    C.apply_overrides(data, ["stages.0.lr=0.002", "train.seed=3"])
    assert data == {"stages": [{"lr": 0.002}], "train": {"seed": 3}}
    with pytest.raises(C.ConfigError, match="must look like key.sub=value"):
        C.parse_override("lr")


def test_typed_tuples_are_checked_entry_by_entry():
    from vlkit.config import GenerationConfig, SynthConfig

    assert GenerationConfig(stop_token_ids=[3, 4.0]).stop_token_ids == (3, 4)  # a list from JSON becomes a tuple
    with pytest.raises(C.ConfigError, match=r"^stop_token_ids=\(2, -1\) must be >= 0$"):
        GenerationConfig(stop_token_ids=(2, -1))
    assert SynthConfig(heldout_pairs=[["red", "star"]]).heldout_pairs == (("red", "star"),)
    with pytest.raises(C.ConfigError, match=r"synth.heldout_pairs=\['red'\] must have 2 entries"):
        SynthConfig(heldout_pairs=[["red"]])
