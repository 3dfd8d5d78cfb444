"""`vlkit build`: a VLM composed of an HF vision tower and an HF LM keeps their weights (matches transformers),
exports to llava-hf, and grows into VLUAS."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import make_qwen2, make_siglip  # noqa: E402
from tests.hf.hf_fixtures import TOL, check_vlm_parity  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hf import build_from_backbones  # noqa: E402


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_build_from_backbones_then_export_matches_transformers(tmp_path):
    from transformers import LlavaForConditionalGeneration

    vis_ref, vis_dir = make_siglip(tmp_path / "siglip")
    lm_ref, lm_dir = make_qwen2(tmp_path / "qwen2")
    out = build_from_backbones(vis_dir, lm_dir, connector="mlp", out=tmp_path / "built")
    pipe = vlkit.load(out)
    cfg, tok = pipe.config, pipe.tokenizer
    assert cfg.image_token_id == tok.image_pad_id and cfg.text.vocab_size == len(tok) > 100
    assert tok.im_start_id == 1 and tok.im_end_id == 2  # the LM's own tokens are reused, missing ones added
    pixels = _pixels(2)
    ids = torch.randint(5, 100, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_feats = vis_ref(pixel_values=pixels[None], output_hidden_states=True).hidden_states[-2]
        assert (pipe.model.vision(pixels[None]) - want_feats).abs().max() <= TOL
        want = lm_ref(input_ids=ids).logits
        got = pipe.model(ids, return_logits=True)["logits"]
    assert (got[..., :100] - want).abs().max() <= TOL
    new_rows = pipe.model.language.embed_tokens.weight[100:]
    assert torch.allclose(new_rows, lm_ref.model.embed_tokens.weight.mean(0).expand_as(new_rows), atol=1e-6)

    exported = vlkit.export(pipe, tmp_path / "export")
    ref = LlavaForConditionalGeneration.from_pretrained(str(exported)).eval()
    prompt = pipe.prompt_ids("what is it ?", [pixels])
    check_vlm_parity(ref, pipe.model, prompt, pixels, pixels[None])


def test_build_rejects_swapped_backbones(tmp_path):
    _, vis_dir = make_siglip(tmp_path / "siglip")
    _, lm_dir = make_qwen2(tmp_path / "qwen2")
    with pytest.raises(CheckpointError, match="--vision .* is not a vision encoder"):
        build_from_backbones(lm_dir, vis_dir, out=tmp_path / "x")


def test_built_model_grows_into_vluas_and_draws(tmp_path):
    """VILA-U's starting point: a VLM composed from a pretrained LM, then the codebook added by a recipe."""
    from vlkit.config import VQConfig
    from vlkit.models.vq import VisualTokenizer, lm_grid_downsample
    from vlkit.pipeline import Pipeline
    from vlkit.train.trainer import Recipe, build_pipeline

    _, vis_dir = make_siglip(tmp_path / "siglip")
    _, lm_dir = make_qwen2(tmp_path / "qwen2")
    built = vlkit.load(build_from_backbones(vis_dir, lm_dir, connector="mlp", out=tmp_path / "built"))
    cfg = built.config
    torch.manual_seed(0)
    VisualTokenizer(VQConfig(codebook_size=16, code_dim=8, hidden_size=16, num_layers=1,
                             downsample=lm_grid_downsample(cfg), image_size=cfg.vision.image_size)
                    ).save_pretrained(tmp_path / "vq")
    recipe = Recipe.from_dict({"init": str(tmp_path / "built"), "vq": str(tmp_path / "vq"),
                               "model": {"vision_target": "codes"}, "stages": [{"name": "x"}]})
    pipe = Pipeline.of(build_pipeline(recipe, corpus=None))  # the trainer's Bundle, as vlkit.load would give it
    assert pipe.model.code_offset == cfg.text.vocab_size and pipe.can_generate_images
    ids = torch.randint(5, 100, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = built.model(ids, return_logits=True)["logits"]
        got = pipe.model(ids, return_logits=True)["logits"]
    torch.testing.assert_close(got[..., :cfg.text.vocab_size], want, atol=1e-5, rtol=1e-5)  # (a wider matmul)
    assert pipe.generate_image("a red circle", seed=0).size == (cfg.vision.image_size,) * 2


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_build_with_a_qwen2_vl_tower(tmp_path, family):
    """`vlkit build --vision <Qwen2-VL dir>` takes its tower (all blocks, its native-resolution processor; the
    features equal the imported model's, which match transformers) and a new spatial_merge connector with the
    merger's merge size and norm; the model chats on a wide image."""
    import numpy as np

    from tests.hf.hf_fixtures import make_qwen2_vl
    from vlkit.hf import load_model

    _, qdir = make_qwen2_vl(tmp_path / "q", family)
    _, lm_dir = make_qwen2(tmp_path / "qwen2", hidden_size=48)
    out = build_from_backbones(qdir, lm_dir, connector="spatial_merge", out=tmp_path / "built")
    pipe = vlkit.load(out)
    cfg = pipe.config
    assert cfg.vision.processor.native and cfg.vision.temporal_patch_size == 2 and cfg.vision.feature_layer == -1
    assert cfg.connector.merge_size == 2 and cfg.connector.norm_type == ("rmsnorm" if family == "qwen2_5_vl" else
                                                                         "layernorm")
    imported = load_model(qdir)
    items = [torch.randn(3, 48, 112, generator=torch.Generator().manual_seed(5)), torch.randn(4, 3, 32, 48)]
    with torch.no_grad():
        for a, b in zip(pipe.model.vision.forward_packed(items), imported.vision.forward_packed(items)):
            assert torch.equal(a, b)
    pixels = pipe.image_tensor(np.zeros((60, 150, 3), np.uint8))
    assert pipe.model.tokens_per_image(*pixels.shape[-2:]) == (pixels.shape[1] // 16) * (pixels.shape[2] // 16)
    assert isinstance(pipe.chat("what is it ?", images=[np.zeros((60, 150, 3), np.uint8)], max_new_tokens=4), str)
