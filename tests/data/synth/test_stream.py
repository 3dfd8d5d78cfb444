"""The synthetic training stream (a recipe's `synth:` source): its keys reach the generators."""
import pytest

from vlkit.config import ConfigError
from vlkit.data.sources import DataError
from vlkit.data.synth.stream import synth_stream


def test_canvas_keys_reach_the_samples():
    sample = synth_stream({"tasks": ["doc"], "size": 256, "aspect": "tall"}, 0)
    assert all(sample(g)["image_objects"][0].size == (96, 256) for g in range(4))
    square = synth_stream({"tasks": ["doc"], "size": 256}, 0)
    assert square(0)["image_objects"][0].size == (256, 256)


def test_bad_keys_and_values_are_named():
    with pytest.raises(DataError, match="unknown key"):
        synth_stream({"aspects": "wide"}, 0)
    with pytest.raises(ConfigError, match="synth.video_frames=0"):
        synth_stream({"video_frames": 0}, 0)
