"""VisualTokenizer: gradients through the bottleneck, the API, bad inputs, persistence."""
import pytest
import torch

from vlkit.config import ConfigError, VQConfig
from vlkit.errors import CheckpointError, UserError
from vlkit.models.vq import TokenizerInputError, VisualTokenizer

from tests.models.vq.helpers import pixels, small_tokenizer


def test_tokenizer_encoder_gets_the_decoder_input_gradient():
    tok = small_tokenizer(commitment_weight=0.0)
    tok.train()
    x = pixels()
    z = tok.encode_features(x)
    z.retain_grad()
    q, _, _ = tok.quantize_features(z)
    q.retain_grad()
    tok.decoder(q).square().mean().backward()
    assert z.grad.abs().sum() > 0
    assert torch.allclose(z.grad, q.grad)


def test_shapes_and_embed_codes_sum_over_depth():
    tok = small_tokenizer(depth=3).eval()
    x = pixels()
    codes = tok.encode(x)
    assert codes.shape == (4, 4, 4, 3) and codes.dtype == torch.long
    emb = tok.embed_codes(codes)
    assert emb.shape == (4, 16, 8)
    flat = codes.reshape(4, 16, 3)
    manual = sum(tok.quantizer.codebook[flat[..., d]] for d in range(3))
    assert torch.allclose(emb, manual)
    assert torch.equal(tok.embed_codes(flat), emb)  # (B, N, D) accepted too
    rec = tok.decode_codes(codes)
    assert rec.shape == x.shape and rec.min() >= -1 and rec.max() <= 1
    assert torch.allclose(tok.decode_codes(flat), rec)


def test_forward_reports_losses_and_usage():
    tok = small_tokenizer(perceptual_weight=0.1)
    out = tok(pixels())
    for key in ("recon", "loss", "recon_loss", "commit_loss", "codes", "usage", "perplexity", "perceptual_loss"):
        assert key in out
    expected = out["recon_loss"] + 0.25 * out["commit_loss"] + 0.1 * out["perceptual_loss"]
    assert torch.allclose(out["loss"], expected)
    assert 0 < out["usage"] <= 1 and 1 <= out["perplexity"] <= 32
    out["loss"].backward()
    assert tok.encoder.stem.weight.grad is not None


def test_contrastive_hook():
    tok = small_tokenizer(contrastive_weight=1.0, contrastive_dim=16)
    text = torch.randn(4, 16)
    out = tok(pixels(), text_embeds=text)
    assert out["contrastive_loss"].item() > 0
    out["loss"].backward()
    assert tok.contrastive_proj.weight.grad.abs().sum() > 0
    with pytest.raises(TokenizerInputError, match="text_embeds"):
        tok(pixels(), text_embeds=torch.randn(4, 7))
    assert not hasattr(small_tokenizer(), "contrastive_proj")  # off by default: no extra weights


def test_encode_does_not_touch_the_codebook():
    tok = small_tokenizer().train()
    tok(pixels())  # init + one EMA step
    before = tok.quantizer.codebook.clone()
    tok.encode(pixels(seed=3))
    assert torch.equal(before, tok.quantizer.codebook)


def test_bf16_autocast_forward():
    tok = small_tokenizer()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok(pixels())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_bad_inputs_raise_user_errors():
    tok = small_tokenizer().eval()
    with pytest.raises(TokenizerInputError, match="B, 3, H, W"):
        tok.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TokenizerInputError, match="multiple of vq.downsample"):
        tok.encode(torch.zeros(2, 3, 30, 30))
    with pytest.raises(TokenizerInputError, match="out of range"):
        tok.decode_codes(torch.full((1, 4, 4, 1), 32))
    with pytest.raises(TokenizerInputError, match="square"):
        tok.decode_codes(torch.zeros(1, 5, 1, dtype=torch.long))
    with pytest.raises(TokenizerInputError, match="integers"):
        tok.decode_codes(torch.zeros(1, 16, 1))
    with pytest.raises(ConfigError, match="multiple of vq.downsample"):
        VisualTokenizer(VQConfig(image_size=60, downsample=8))
    with pytest.raises(ConfigError, match="ema_decay"):
        VisualTokenizer(VQConfig(ema_decay=1.5))
    assert issubclass(TokenizerInputError, UserError)


def test_non_power_of_two_downsample():
    tok = small_tokenizer(downsample=6, image_size=24).eval()
    x = pixels(2, 24)
    assert tok.encode(x).shape == (2, 4, 4, 1)
    assert tok.decode_codes(tok.encode(x)).shape == x.shape


def test_save_load_round_trip(tmp_path):
    tok = small_tokenizer(depth=2)
    tok.train()
    for _ in range(3):  # move the EMA codebook away from its init
        tok(pixels(8, seed=1))
    tok.eval()
    x = pixels(seed=2)
    codes, rec = tok.encode(x), tok.decode_codes(tok.encode(x))
    tok.save_pretrained(tmp_path / "vq")
    tok.save_pretrained(tmp_path / "vq")  # overwriting an existing dir works
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name != "vq"]  # no temp dirs left behind
    loaded = VisualTokenizer.from_pretrained(tmp_path / "vq")
    assert loaded.cfg == tok.cfg
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode_codes(codes), rec)


def test_missing_or_broken_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        VisualTokenizer.from_pretrained(tmp_path / "nope")
    small_tokenizer().save_pretrained(tmp_path / "vq")
    (tmp_path / "vq" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        VisualTokenizer.from_pretrained(tmp_path / "vq")
    small_tokenizer().save_pretrained(tmp_path / "vq2")
    (tmp_path / "vq2" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        VisualTokenizer.from_pretrained(tmp_path / "vq2")
    small_tokenizer().save_pretrained(tmp_path / "vq3")
    (tmp_path / "vq3" / "config.json").write_text('{"codebook_size": 64, "code_dim": 8, "hidden_size": 32, '
                                                  '"num_layers": 1, "image_size": 32}')
    with pytest.raises(CheckpointError, match="shape"):
        VisualTokenizer.from_pretrained(tmp_path / "vq3")
