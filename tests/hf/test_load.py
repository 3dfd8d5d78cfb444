"""HF import: SigLIP / CLIP vision towers, Llama / Qwen2 LMs and whole VLMs (LLaVA-1.5, Idefics3) match
transformers on the same inputs; unsupported checkpoints give CheckpointError naming the problem; vlkit.load
keeps the checkpoint's dtype."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import (TOL, check_vlm_parity, hf_greedy, image, make_clip, make_idefics3,  # noqa: E402
                                  make_llama, make_llava, make_qwen2, make_siglip, tiny_llava)
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hf import detect_format, load_language_model, load_model, load_vision_encoder  # noqa: E402
from vlkit.models.language import KVCache  # noqa: E402


def _batch_pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [make_siglip, make_clip], ids=["siglip", "clip"])
@pytest.mark.parametrize("layer", [-1, -2, 1])
def test_vision_features_match_transformers(tmp_path, make, layer):
    ref, path = make(tmp_path / "v")
    pixels = _batch_pixels()
    with torch.no_grad():
        out = ref(pixel_values=pixels, output_hidden_states=True)
        want = out.hidden_states[layer]
        if layer == -1:  # the default post_norm gives the tower's last_hidden_state
            want = out.last_hidden_state
        if make is make_clip:
            want = want[:, 1:]  # vlkit hands patch features only (the class token is dropped)
        enc = load_vision_encoder(path, feature_layer=layer)
        got = enc(pixels)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= TOL


def test_vision_without_post_norm_is_the_raw_hidden_state(tmp_path):
    ref, path = make_siglip(tmp_path / "v")
    pixels = _batch_pixels(1)
    with torch.no_grad():
        want = ref(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        got = load_vision_encoder(path, feature_layer=-1, post_norm=False)(pixels)
    assert (got - want).abs().max() <= TOL


def _vlkit_greedy(lm, ids: list[int], n: int) -> list[int]:
    """Greedy decoding with vlkit's KV cache: one prefill, then one token per step."""
    cache = KVCache(lm.cfg.num_layers)
    x = torch.tensor([ids])
    out = []
    with torch.no_grad():
        h = lm(lm.embed_tokens(x), cache=cache)
        for _ in range(n):
            tok = int(lm.lm_head(h[:, -1]).argmax(-1))
            out.append(tok)
            h = lm(lm.embed_tokens(torch.tensor([[tok]])), cache=cache)
    return out


LMS = {
    "llama": lambda p: make_llama(p),
    "llama-tied-llama3-rope": lambda p: make_llama(p, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "llama-linear-rope-mha": lambda p: make_llama(p, num_key_value_heads=4, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "qwen2": lambda p: make_qwen2(p),
}


@pytest.mark.parametrize("name", list(LMS))
def test_lm_logits_and_greedy_match_transformers(tmp_path, name):
    ref, path = LMS[name](tmp_path / name)
    lm = load_language_model(path)
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = lm.lm_head(lm(lm.embed_tokens(ids)))
    assert (got - want).abs().max() <= TOL
    prompt = ids[0].tolist()
    assert _vlkit_greedy(lm, prompt, 20) == hf_greedy(ref, ids[:1], 20)


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_llava_matches_transformers(tmp_path, tower):
    ref, path = make_llava(tmp_path / "llava", tower=tower)
    assert detect_format(path) == "llava"
    model = load_model(path)
    assert model.cfg.image_token_id == 3 and model.cfg.vision.feature_layer == -2
    n = model.tokens_per_image(32, 32)
    assert n == 16  # 4x4 patches; CLIP's class token dropped ("default"), SigLIP has none ("full")
    ids = [1, 30, 31] + [3] * n + [40, 41, 42, 9]
    check_vlm_parity(ref, model, ids, _pixels(), _pixels()[None])


def test_idefics3_matches_transformers(tmp_path):
    ref, path = make_idefics3(tmp_path / "id3")
    model = load_model(path)
    assert model.cfg.connector.type == "spatial_merge" and model.cfg.connector.norm is False
    n = model.tokens_per_image(32, 32)
    assert n == 4  # 4x4 patches, pixel shuffle 2x2
    ids = [1, 7, 4, 5] + [3] * n + [4, 40, 41, 9]
    check_vlm_parity(ref, model, ids, _pixels(1), _pixels(1)[None, None])


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="model_type 'mamba'.*not supported; supported: .*llava"):
        detect_format(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_act": "gelu"}))
    with pytest.raises(CheckpointError, match="hidden_act 'gelu'"):
        load_language_model(tmp_path)


def test_detect_format(tmp_path):
    _, lm = make_qwen2(tmp_path / "lm")
    assert detect_format(lm) == "qwen2"
    (tmp_path / "v").mkdir()
    from vlkit.config import save_json, tiny_model_config

    save_json(tiny_model_config(), tmp_path / "v" / "config.json")
    assert detect_format(tmp_path / "v") == "vlkit"


def test_load_keeps_the_checkpoint_dtype_unless_told(tmp_path):
    ref, path = tiny_llava(tmp_path / "llava")
    ref.to(torch.bfloat16).save_pretrained(str(path))
    pipe = vlkit.load(path)
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    assert next(vlkit.load(path, dtype="float32").model.parameters()).dtype == torch.float32
    assert pipe.chat("what color is it ?", images=[image(32, 32)], max_new_tokens=3) is not None
    with pytest.raises(vlkit.errors.UserError, match="dtype='float8'"):
        vlkit.load(path, dtype="float8")
