"""Whole HF VLMs (LLaVA-1.5, Idefics3) in vlkit match transformers; vlkit.load of an HF dir prompts like
transformers; export -> transformers gives identical logits; build_from_backbones composes real backbones."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.models.hf_fixtures import hf_greedy, make_idefics3, make_llava, make_qwen2, make_siglip, perturb  # noqa: E402
from vlkit.config import ModelConfig, TextConfig, VisionConfig  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.infer.generate import GenerationConfig, generate  # noqa: E402
from vlkit.models import hf  # noqa: E402

TOL = 1e-4


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _vlkit_greedy(model, ids: list[int], images: list[torch.Tensor], n: int) -> list[int]:
    return generate(model, [ids], [images], GenerationConfig(max_new_tokens=n), pad_id=0)[0]


def _check_parity(ref, model, ids: list[int], pixels: torch.Tensor, hf_pixels: torch.Tensor):
    x = torch.tensor([ids])
    with torch.no_grad():
        want = ref(input_ids=x, pixel_values=hf_pixels).logits
        got = model(x, images=[pixels], return_logits=True)["logits"]
    assert (got - want).abs().max() <= TOL
    assert _vlkit_greedy(model, ids, [pixels], 20) == hf_greedy(ref, x, 20, pixel_values=hf_pixels)


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_llava_matches_transformers(tmp_path, tower):
    ref, path = make_llava(tmp_path / "llava", tower=tower)
    assert hf.detect_format(path) == "llava"
    model = hf.load_model(path)
    assert model.cfg.image_token_id == 3 and model.cfg.vision.feature_layer == -2
    n = model.tokens_per_image(32, 32)
    assert n == 16  # 4x4 patches; CLIP's class token dropped ("default"), SigLIP has none ("full")
    ids = [1, 30, 31] + [3] * n + [40, 41, 42, 9]
    _check_parity(ref, model, ids, _pixels(), _pixels()[None])


def test_idefics3_matches_transformers(tmp_path):
    ref, path = make_idefics3(tmp_path / "id3")
    model = hf.load_model(path)
    assert model.cfg.connector.type == "spatial_merge" and model.cfg.connector.norm is False
    n = model.tokens_per_image(32, 32)
    assert n == 4  # 4x4 patches, pixel shuffle 2x2
    ids = [1, 7, 4, 5] + [3] * n + [4, 40, 41, 9]
    _check_parity(ref, model, ids, _pixels(1), _pixels(1)[None, None])


def test_unsupported_llava_variants_are_named(tmp_path):
    _, path = make_llava(tmp_path / "llava")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(cfg, vision_feature_select_strategy="full")))
    with pytest.raises(CheckpointError, match="vision_feature_select_strategy='full' with a clip_vision_model"):
        hf.load_model(path)
    (path / "config.json").write_text(json.dumps(dict(cfg, vision_feature_layer=[-2, -5])))
    with pytest.raises(CheckpointError, match="vision_feature_layer"):
        hf.load_model(path)


def test_load_hf_llava_pipeline_prompts_and_generates_like_transformers(tmp_path):
    from transformers import AutoTokenizer

    ref, path = make_llava(tmp_path / "llava")
    pipe = vlkit.load(path)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    pixels = pipe.image_tensor(image)
    ids = pipe.prompt_ids("what color is the circle ?", [pixels])

    tok = AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want_ids = tok(text.replace("<image>", "<image>" * 16)).input_ids  # LlavaProcessor's expansion
    assert ids == want_ids and ids[0] == 1  # BOS from the tokenizer's post-processor, as in transformers

    answer = pipe.chat("what color is the circle ?", images=[image], max_new_tokens=12)
    ref.generation_config.eos_token_id = 2
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor([ids]), pixel_values=pixels[None], max_new_tokens=12,
                           do_sample=False, pad_token_id=4)[0, len(ids):].tolist()
    out = out[: out.index(2)] if 2 in out else out
    assert answer == tok.decode(out).strip()


def test_load_hf_idefics3_pipeline_uses_its_image_layout(tmp_path):
    _, path = make_idefics3(tmp_path / "id3")
    pipe = vlkit.load(path)
    ids = pipe.prompt_ids("what is it ?", [_pixels()])
    tok = pipe.tokenizer.hf
    assert [tok.id_to_token(i) for i in ids] == ("<|im_start|> User: <fake_token_around_image> <global-img> " + "<image> " * 4
                            + "<fake_token_around_image> what is it ? <end_of_utterance> Assistant:").split()
    assert pipe.generation_config().stop_token_ids[0] == tok.token_to_id("<end_of_utterance>") or \
        tok.token_to_id("<end_of_utterance>") in pipe.generation_config().stop_token_ids


def test_hf_processor_labels_cover_assistant_text_only(tmp_path):
    _, path = make_llava(tmp_path / "llava")
    pipe = vlkit.load(path)
    enc = pipe.processor.encode([("user", "<image>\nwhat color ?"), ("assistant", "red circle")], [16])
    tok = pipe.tokenizer.hf
    kept = [tok.id_to_token(i) for i, lab in zip(enc.input_ids, enc.labels) if lab != -100]
    assert kept == ["red", "circle", "</s>"]
    assert enc.input_ids.count(3) == 16


# -- export ----------------------------------------------------------------------------------------------


def _vlkit_pipeline(tower: str, seed: int = 0):
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline
    from vlkit.tokenizer import Tokenizer

    texts = ["what color is the circle ? red", "a blue square left of a green circle", "yes no 0 1 2 3"] * 20
    tok = Tokenizer.train(texts, vocab_size=200, min_frequency=1)
    clip = tower == "clip"
    vision = VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=3,
                          class_token=clip, pre_norm=clip, post_norm=not clip,
                          hidden_act="quick_gelu" if clip else "gelu_tanh", feature_layer=-2 if clip else -1)
    if not clip:
        vision.post_norm = False
    text = TextConfig(vocab_size=len(tok) + 8, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2,
                      tie_word_embeddings=clip, attention_bias=not clip)
    cfg = ModelConfig(vision=vision, text=text, image_token_id=tok.image_pad_id)
    torch.manual_seed(seed)
    return Pipeline(perturb(VisionLanguageModel(cfg), seed), tok)


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_export_llava_hf_loads_in_transformers_with_identical_logits(tmp_path, tower):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    pipe = _vlkit_pipeline(tower)
    out = vlkit.export(pipe, tmp_path / "export", format="llava-hf")
    ref, info = LlavaForConditionalGeneration.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref.eval()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3)).astype(np.uint8))
    pixels = pipe.image_tensor(image)
    ids = pipe.prompt_ids("what color is the circle ?", [pixels])
    _check_parity(ref, pipe.model, ids, pixels, pixels[None])

    processor = AutoProcessor.from_pretrained(str(out))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(images=[image], text=prompt, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == ids
    assert (batch["pixel_values"][0] - pixels).abs().max() <= 1e-5


def test_export_refuses_what_llava_cannot_express(tmp_path):
    pipe = _vlkit_pipeline("siglip")
    pipe.model.cfg.connector.type = "resampler"
    with pytest.raises(hf.ExportError, match="connector.type='mlp'"):
        vlkit.export(pipe, tmp_path / "x")
    from vlkit.config import tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline

    tiny = Pipeline(VisionLanguageModel(tiny_model_config()), pipe.tokenizer)  # post_norm on the last layer
    with pytest.raises(hf.ExportError, match="post_layernorm"):
        vlkit.export(tiny, tmp_path / "x")
    with pytest.raises(hf.ExportError, match="format 'gguf' is unknown"):
        vlkit.export(pipe, tmp_path / "x", format="gguf")
    assert not (tmp_path / "x").exists()


# -- build -----------------------------------------------------------------------------------------------


def test_build_from_backbones_then_export_matches_transformers(tmp_path):
    from transformers import LlavaForConditionalGeneration

    vis_ref, vis_dir = make_siglip(tmp_path / "siglip")
    lm_ref, lm_dir = make_qwen2(tmp_path / "qwen2")
    out = hf.build_from_backbones(vis_dir, lm_dir, connector="mlp", out=tmp_path / "built")
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
    _check_parity(ref, pipe.model, prompt, pixels, pixels[None])


def test_build_rejects_swapped_backbones(tmp_path):
    _, vis_dir = make_siglip(tmp_path / "siglip")
    _, lm_dir = make_qwen2(tmp_path / "qwen2")
    with pytest.raises(CheckpointError, match="--vision .* is not a vision encoder"):
        hf.build_from_backbones(lm_dir, vis_dir, out=tmp_path / "x")


def test_built_model_grows_into_vluas_and_draws(tmp_path):
    """VILA-U's starting point: a VLM composed from a pretrained LM, then the codebook added by a recipe."""
    from vlkit.config import VQConfig
    from vlkit.models.vq import VisualTokenizer, lm_grid_downsample
    from vlkit.train.trainer import Recipe, build_pipeline

    _, vis_dir = make_siglip(tmp_path / "siglip")
    _, lm_dir = make_qwen2(tmp_path / "qwen2")
    built = vlkit.load(hf.build_from_backbones(vis_dir, lm_dir, connector="mlp", out=tmp_path / "built"))
    cfg = built.config
    torch.manual_seed(0)
    VisualTokenizer(VQConfig(codebook_size=16, code_dim=8, hidden_size=16, num_layers=1,
                             downsample=lm_grid_downsample(cfg), image_size=cfg.vision.image_size)
                    ).save_pretrained(tmp_path / "vq")
    recipe = Recipe.from_dict({"init": str(tmp_path / "built"), "vq": str(tmp_path / "vq"),
                               "model": {"vision_target": "codes"}, "stages": [{"name": "x"}]})
    pipe = build_pipeline(recipe, corpus=None)
    assert pipe.model.code_offset == cfg.text.vocab_size and pipe.can_generate_images
    ids = torch.randint(5, 100, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = built.model(ids, return_logits=True)["logits"]
        got = pipe.model(ids, return_logits=True)["logits"]
    torch.testing.assert_close(got[..., :cfg.text.vocab_size], want, atol=1e-5, rtol=1e-5)  # (a wider matmul)
    assert pipe.generate_image("a red circle", seed=0).size == (cfg.vision.image_size,) * 2
