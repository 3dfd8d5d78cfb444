import pytest
import torch

from vlkit.config import VisionConfig
from vlkit.models.vision import VisionEncoder, init_weights


def test_position_embeddings_interpolate_to_other_resolutions():
    torch.manual_seed(0)
    enc = VisionEncoder(VisionConfig())
    init_weights(enc)
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 64, 64)
    assert enc(torch.randn(1, 3, 96, 48)).shape == (1, 72, 64)
    # at the native grid, interpolation is the identity
    pos = enc.embeddings.positions(8, 8)
    assert torch.equal(pos, enc.embeddings.position_embedding.weight)


def test_feature_layer_and_class_token():
    cfg = VisionConfig(num_layers=3, feature_layer=-2, class_token=True, pre_norm=True)
    enc = VisionEncoder(cfg)
    assert len(enc.encoder.layers) == 2 and enc.post_layernorm is None
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 64, 64)  # class token dropped
    names = {n for n, _ in enc.named_parameters()}
    assert "embeddings.class_embedding" in names and "pre_layrnorm.weight" in names
    assert "encoder.layers.0.self_attn.q_proj.weight" in names


def test_conv_stem_gives_the_patch_grid_and_needs_a_power_of_two_patch():
    from vlkit.config import ConfigError, VisionConfig
    from vlkit.models.vision import ConvStem, VisionEncoder

    cfg = VisionConfig(image_size=64, patch_size=8, hidden_size=32, intermediate_size=64, num_heads=2, stem="conv")
    enc = VisionEncoder(cfg)
    assert isinstance(enc.embeddings.patch_embedding, ConvStem)
    x = torch.randn(2, 3, 64, 48)
    assert enc(x).shape == (2, 8 * 6, 32)  # the same grid as the patchify conv, any size
    with pytest.raises(ConfigError, match="power-of-two"):
        VisionConfig(patch_size=6, image_size=48, stem="conv").validate()


def test_fan_in_init_keeps_activations_order_one_in_narrow_models():
    from vlkit.config import tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    stds = {}
    for scheme in ("normal", "fan_in"):
        model = VisionLanguageModel(tiny_model_config("spatial_merge", init=scheme))
        w = model.language.layers[0].self_attn.q_proj.weight
        stds[scheme] = float(w.std())
        assert float(model.language.embed_tokens.weight.std()) == pytest.approx(
            0.02 if scheme == "normal" else model.cfg.text.hidden_size ** -0.5, rel=0.1)
    assert stds["normal"] == pytest.approx(0.02, rel=0.1)
    assert stds["fan_in"] == pytest.approx(64 ** -0.5, rel=0.1)
