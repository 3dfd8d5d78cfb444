"""SynthConfig (vlkit.config.synth): the synthetic world's settings, checked like every config."""
import pytest

from vlkit.config import DEFAULT_HELDOUT_PAIRS, ConfigError, SynthConfig


def test_defaults_and_split():
    cfg = SynthConfig()
    assert cfg.train and cfg.heldout_pairs == DEFAULT_HELDOUT_PAIRS and cfg.size == 64
    assert not SynthConfig(split="test").train


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 16}, "synth.size=16 must be >= 32"),
    ({"split": "val"}, "synth.split='val' is not allowed; choose one of ['train', 'test']"),
    ({"max_iou": 1.0}, "synth.max_iou=1.0 must be in [0, 1)"),
    ({"question_first": 2}, "synth.question_first=2.0 must be in [0, 1]"),
    ({"heldout_boost": -0.1}, "synth.heldout_boost=-0.1 must be in [0, 1]"),
])
def test_bad_values_name_the_key(kwargs, message):
    with pytest.raises(ConfigError) as err:
        SynthConfig(**kwargs)
    assert str(err.value) == message


def test_it_stays_hashable_and_frozen():
    cfg = SynthConfig(heldout_pairs=(("red", "star"),))
    assert hash(cfg) == hash(SynthConfig(heldout_pairs=(("red", "star"),)))
    with pytest.raises(AttributeError):
        cfg.size = 128
