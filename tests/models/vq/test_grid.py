"""The tokenizer's code grid against the LM's image-token grid (per connector)."""
import pytest

from vlkit.config import ConfigError, ConnectorConfig, ModelConfig, VisionConfig, VQConfig
from vlkit.models.vq import check_code_grid, lm_grid_downsample


def test_code_grid_matches_lm_grid():
    merge = ModelConfig(vision=VisionConfig(image_size=64, patch_size=8),
                        connector=ConnectorConfig(type="spatial_merge", merge_size=2), vq=VQConfig(downsample=8))
    assert lm_grid_downsample(merge) == 16
    with pytest.raises(ConfigError, match="needs vq.downsample=16"):
        check_code_grid(merge)
    merge.vq.downsample = 16
    check_code_grid(merge)
    plain = ModelConfig(connector=ConnectorConfig(type="mlp"), vq=VQConfig())
    assert lm_grid_downsample(plain) == 8
    check_code_grid(plain)


def test_each_connector_class_says_its_pixels_per_token():
    from vlkit.models.connectors import CONNECTORS

    vision = VisionConfig(image_size=64, patch_size=8)
    want = {"linear": 8, "mlp": 8, "spatial_merge": 16, "resampler": 16}  # 16 queries: a 4 x 4 grid of 16 px
    conn = {name: ConnectorConfig(type=name, merge_size=2, num_queries=16) for name in want}
    assert {name: CONNECTORS[name].pixels_per_token(conn[name], vision) for name in want} == want
    resampler = ModelConfig(vision=vision, connector=ConnectorConfig(type="resampler", num_queries=16),
                            vq=VQConfig(downsample=16, image_size=64))
    assert lm_grid_downsample(resampler) == 16
    check_code_grid(resampler)
    resampler.connector.num_queries = 9  # a 3 x 3 grid does not divide 64 px
    with pytest.raises(ConfigError, match="num_queries=9"):
        lm_grid_downsample(resampler)
