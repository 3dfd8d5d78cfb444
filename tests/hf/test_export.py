"""Export to llava-hf: transformers loads the directory with identical logits and prompts; vlkit loads it back;
what LLaVA cannot express is refused; the round trip HF LLaVA -> vlkit fine-tune (full and LoRA) -> vlkit.load
-> chat -> export -> transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import TOL, check_vlm_parity, image, perturb, template, tiny_llava, write_data  # noqa: E402
from vlkit.config import ModelConfig, TextConfig, VisionConfig  # noqa: E402
from vlkit.hf import ExportError  # noqa: E402


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
    check_vlm_parity(ref, pipe.model, ids, pixels, pixels[None])

    processor = AutoProcessor.from_pretrained(str(out))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(images=[image], text=prompt, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == ids
    assert (batch["pixel_values"][0] - pixels).abs().max() <= 1e-5


def test_export_refuses_what_llava_cannot_express(tmp_path):
    pipe = _vlkit_pipeline("siglip")
    pipe.model.cfg.connector.type = "resampler"
    with pytest.raises(ExportError, match="connector.type='mlp'"):
        vlkit.export(pipe, tmp_path / "x")
    from vlkit.config import tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline

    tiny = Pipeline(VisionLanguageModel(tiny_model_config()), pipe.tokenizer)  # post_norm on the last layer
    with pytest.raises(ExportError, match="post_layernorm"):
        vlkit.export(tiny, tmp_path / "x")
    with pytest.raises(ExportError, match="format 'gguf' is unknown"):
        vlkit.export(pipe, tmp_path / "x", format="gguf")
    native = _vlkit_pipeline("siglip")
    native.model.cfg.text.rope = "mrope"  # would load in transformers and give other logits: refused
    with pytest.raises(ExportError, match="text.rope='mrope'"):
        vlkit.export(native, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_vlkit_loads_its_own_chatml_export(tmp_path, tower):
    pipe = _vlkit_pipeline(tower)
    out = vlkit.export(pipe, tmp_path / "export", format="llava-hf")
    again = vlkit.load(out)  # the image token comes from image_token_index (<|image_pad|>), not '<image>'
    assert again.tokenizer.image_token == "<|image_pad|>"
    img = image(40, 40)
    ids = pipe.prompt_ids("what color is the circle ?", [pipe.image_tensor(img)])
    assert again.prompt_ids("what color is the circle ?", [again.image_tensor(img)]) == ids
    assert again.chat("what color is the circle ?", images=[img], max_new_tokens=5) == \
        pipe.chat("what color is the circle ?", images=[img], max_new_tokens=5)


@pytest.mark.parametrize("kind", ["sft", "lora"])
def test_fine_tuned_hf_llava_loads_chats_and_exports_to_transformers(tmp_path, kind):
    from transformers import LlavaForConditionalGeneration

    from vlkit.config import DataConfig, StageConfig, TrainConfig
    from vlkit.train.trainer import Recipe, train

    _, init = tiny_llava(tmp_path / "llava")
    data = write_data(tmp_path / "data")
    recipe = Recipe(model={}, tokenizer={}, init=str(init),
                    train=TrainConfig(out=str(tmp_path / "run"), precision="fp32", log_every=1),
                    stages=[StageConfig(name=kind, train=kind, steps=3, lr=1e-3, batch_size=4, warmup_steps=0,
                                        lora_r=4, data=DataConfig(train=[{"path": str(data)}], max_length=64))])
    final = train(recipe)
    before = vlkit.load(init)

    # the checkpoint keeps the model's tokenizer, template, image token and processor
    names = {p.name for p in final.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"} <= names
    pipe = vlkit.load(final)
    assert pipe.config.prompt_format == "llava" and pipe.config.image_token_id == 3
    assert len(pipe.tokenizer) == len(before.tokenizer) <= pipe.config.text.vocab_size == 100
    assert pipe.tokenizer.chat_template == template("llava-1.5-7b-hf")
    assert pipe.config.vision.processor == before.config.vision.processor
    changed = [k for k, v in pipe.model.state_dict().items() if not torch.equal(v, before.model.state_dict()[k])]
    assert changed and all(not k.startswith("vision.") for k in changed)  # trained; the tower frozen
    img = image(45, 38)
    assert pipe.prompt_ids("what color is it ?", [pipe.image_tensor(img)]) == \
        before.prompt_ids("what color is it ?", [before.image_tensor(img)])
    assert isinstance(pipe.chat("what color is it ?", images=[img], max_new_tokens=4), str)

    # export -> transformers builds it, with vlkit's logits
    out = vlkit.export(pipe, tmp_path / "export", format="llava-hf")
    ref = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    proc = transformers.AutoProcessor.from_pretrained(str(out), backend="pil")
    inputs = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image", "image": img}, {"type": "text", "text": "what color is it ?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    ids = pipe.prompt_ids("what color is it ?", [pipe.image_tensor(img)])
    assert inputs["input_ids"][0].tolist() == ids
    with torch.no_grad():
        want = ref(**inputs).logits
        got = pipe.model(torch.tensor([ids]), images=[pipe.image_tensor(img)], return_logits=True)["logits"]
    assert (got - want).abs().max() <= TOL
    # and vlkit loads its own export, with the same prompts and answers
    again = vlkit.load(out)
    assert again.prompt_ids("what color is it ?", [again.image_tensor(img)]) == ids
    assert again.chat("what color is it ?", images=[img], max_new_tokens=4) == \
        pipe.chat("what color is it ?", images=[img], max_new_tokens=4)
