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


def _rope2d_encoder(**kw):
    torch.manual_seed(0)
    enc = VisionEncoder(VisionConfig(position="rope2d", **kw))
    init_weights(enc, "fan_in")
    return enc.eval()


SIZES = [(32, 32), (16, 48), (48, 16), (64, 32)]


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_packed_images_get_what_each_gets_alone(stem):
    enc = _rope2d_encoder(stem=stem)
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, h, w, generator=g) for h, w in SIZES]
    packed = enc.forward_packed(images)
    for img, feats in zip(images, packed):
        alone = enc(img[None])[0]
        assert feats.shape == alone.shape == ((img.shape[1] // 8) * (img.shape[2] // 8), 64)
        torch.testing.assert_close(feats, alone, atol=1e-5, rtol=0)
    # the block-diagonal mask matters: without it the images would see each other
    rope = [enc.rotary(h // 8, w // 8) for h, w in SIZES]
    seq = torch.cat([enc.embeddings(im[None])[0] for im in images])[None]
    leaky = enc._layers(seq, (torch.cat([c for c, _ in rope]), torch.cat([s for _, s in rope])), (None, None))[0]
    assert not torch.allclose(leaky[:16], packed[0], atol=1e-3)


def test_rope2d_has_no_position_table_and_sees_patch_positions():
    enc = _rope2d_encoder()
    assert enc.embeddings.position_embedding is None
    assert not any("position_embedding" in k for k in enc.state_dict())
    img = torch.randn(1, 3, 16, 32)  # a 2 x 4 patch grid
    swapped = torch.cat([img[..., 16:], img[..., :16]], -1)  # the left and right halves trade places
    a, b = enc(img)[0], enc(swapped)[0]
    moved = torch.tensor([r * 4 + (c + 2) % 4 for r in range(2) for c in range(4)])
    enc.rotary = None  # position-blind: the same features, moved with their patches
    torch.testing.assert_close(enc(swapped)[0], enc(img)[0][moved], atol=1e-5, rtol=0)
    assert not torch.allclose(b, a[moved], atol=1e-3)  # with 2D RoPE each patch's place changes its features


def test_learned_positions_also_pack_exactly():
    torch.manual_seed(0)
    enc = VisionEncoder(VisionConfig(class_token=True, pre_norm=True)).eval()
    images = [torch.randn(3, h, w) for h, w in SIZES[:3]]
    for img, feats in zip(images, enc.forward_packed(images)):
        torch.testing.assert_close(feats, enc(img[None])[0], atol=1e-5, rtol=0)


def test_rope2d_config_errors():
    from vlkit.config import ConfigError

    with pytest.raises(ConfigError, match="divisible by 4"):
        VisionConfig(position="rope2d", hidden_size=24, num_heads=4).validate()
    with pytest.raises(ConfigError, match="class token"):
        VisionConfig(position="rope2d", class_token=True).validate()


QWEN25 = dict(temporal_patch_size=2, norm="rmsnorm", mlp="swiglu", hidden_act="silu", window_size=16,
              full_attention_layers=[1])


def test_temporal_patches_an_image_is_a_still_clip_and_clip_frames_are_separate():
    enc = _rope2d_encoder(temporal_patch_size=2)
    assert enc.embeddings.patch_embedding.weight.shape == (64, 3, 2, 8, 8)
    g = torch.Generator().manual_seed(2)
    img, clip = torch.randn(3, 32, 16, generator=g), torch.randn(3, 3, 32, 16, generator=g)
    still, moving = enc.forward_packed([img[None].expand(2, -1, -1, -1), clip])
    torch.testing.assert_close(still, enc(img[None])[0], atol=1e-5, rtol=0)
    assert moving.shape == (2 * 8, 64)  # 3 frames -> 2 temporal patches (the last frame repeated), 4 x 2 patches
    # each temporal patch is encoded alone: the second is the clip of frame 2 repeated
    torch.testing.assert_close(moving[8:], enc(clip[2][None])[0], atol=1e-5, rtol=0)


def test_window_attention_is_per_window_except_full_layers():
    enc = _rope2d_encoder(num_layers=1, **{**QWEN25, "full_attention_layers": []})
    img = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))  # 4 x 6 patches: 2 x 3 windows
    feats = enc(img)[0].view(4, 6, 64)
    # patches of the top-left window see only their window: changing the pixels of another window leaves them
    other = img.clone()
    other[..., 16:, 16:] += 1.0
    after = enc(other)[0].view(4, 6, 64)
    torch.testing.assert_close(after[:2, :2], feats[:2, :2], atol=1e-6, rtol=0)
    assert not torch.allclose(after[2:, 2:], feats[2:, 2:], atol=1e-3)
    enc.cfg.full_attention_layers = [0]  # a full-attention layer sees the whole image
    assert not torch.allclose(enc(other)[0].view(4, 6, 64)[:2, :2], enc(img)[0].view(4, 6, 64)[:2, :2], atol=1e-4)


def test_qwen_options_keep_packing_exact_and_defaults_unchanged():
    enc = _rope2d_encoder(**QWEN25)
    assert isinstance(enc.encoder.layers[0].layer_norm1, torch.nn.Module)
    assert {"gate_proj", "up_proj", "down_proj"} <= {n for n, _ in enc.encoder.layers[0].mlp.named_children()}
    g = torch.Generator().manual_seed(4)
    images = [torch.randn(3, h, w, generator=g) for h, w in SIZES]
    for img, feats in zip(images, enc.forward_packed(images)):
        torch.testing.assert_close(feats, enc(img[None])[0], atol=1e-5, rtol=0)
    plain = VisionConfig()
    assert (plain.temporal_patch_size, plain.norm, plain.mlp, plain.window_size) == (1, "layernorm", "fc", 0)


def test_qwen_option_errors():
    from vlkit.config import ConfigError

    with pytest.raises(ConfigError, match="temporal_patch_size=2 .* needs vision.position=rope2d"):
        VisionConfig(temporal_patch_size=2).validate()
    with pytest.raises(ConfigError, match="window_size=12 needs"):
        VisionConfig(position="rope2d", window_size=12).validate()
    with pytest.raises(ConfigError, match=r"full_attention_layers=\[5\]"):
        VisionConfig(position="rope2d", full_attention_layers=[5]).validate()
