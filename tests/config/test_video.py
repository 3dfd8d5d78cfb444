import pytest

from vlkit.config import ConfigError, from_dict
from vlkit.config.video import VideoConfig


def test_defaults_follow_qwen2_vl():
    cfg = VideoConfig()
    assert cfg.fps == 2.0 and cfg.temporal_patch_size == 1 and cfg.max_frames >= 1


@pytest.mark.parametrize("bad, key", [({"fps": 0}, "fps"), ({"max_frames": 0}, "max_frames"),
                                      ({"temporal_patch_size": 3}, "temporal_patch_size"),
                                      ({"max_total_pixels": -1}, "max_total_pixels"), ({"frames": 2}, "frames")])
def test_bad_values_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(VideoConfig, bad)


def test_int_fps_becomes_float():
    assert from_dict(VideoConfig, {"fps": 1}).fps == 1.0
