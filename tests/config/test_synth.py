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
    ({"aspect": "portrait"}, "synth.aspect='portrait' is not allowed; choose one of ['square', 'wide', 'tall', 'mixed']"),
    ({"aspect_ratio": 0.5}, "synth.aspect_ratio=0.5 must be in [1, 16]"),
    ({"aspect": "tall", "aspect_ratio": 5}, "synth.aspect_ratio=5 with size=64 makes the short side 13 px; it must "
                                            "be >= 16 (lower aspect_ratio or raise size)"),
    ({"video_frames": 1}, "synth.video_frames=1 must be in [4, 64]"),
])
def test_bad_values_name_the_key(kwargs, message):
    with pytest.raises(ConfigError) as err:
        SynthConfig(**kwargs)
    assert str(err.value) == message


def test_wide_and_tall_canvas_sides():
    assert SynthConfig(size=256, aspect="wide").short_side == 96  # 256 x 96, the example
    assert SynthConfig(size=64, aspect="square", aspect_ratio=16).aspect == "square"  # square ignores the ratio


def test_it_stays_hashable_and_frozen():
    cfg = SynthConfig(heldout_pairs=(("red", "star"),))
    assert hash(cfg) == hash(SynthConfig(heldout_pairs=(("red", "star"),)))
    with pytest.raises(AttributeError):
        cfg.size = 128
