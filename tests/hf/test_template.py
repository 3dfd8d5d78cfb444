"""HF chat templates (the Hub's verbatim ones in tests/fixtures/hf, and the fixtures' own): vlkit.load of an HF
VLM prompts exactly like transformers (template, BOS, image-token expansion per PROMPT_FORMATS); training labels
cover the assistant text only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import FIXTURES, image, make_idefics3, make_llava, processor_config, template  # noqa: E402
from tests.hf.hf_fixtures import tiny_llava, write_processor  # noqa: E402


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(seed))


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


def hf_prompt_ids(path: Path, messages: list, image_tokens: int, chat_template: str) -> list[int]:
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, chat_template=chat_template)
    return tok(text.replace("<image>", "<image>" * image_tokens)).input_ids


@pytest.mark.parametrize("layout", ["t4", "t5"])
def test_llava_1_5_template_with_generation_tag_prompts_like_transformers(tmp_path, layout):
    ref, path = tiny_llava(tmp_path / "llava", layout=layout)
    assert "{% generation %}" in template("llava-1.5-7b-hf")
    pipe = vlkit.load(path)
    img = image(48, 40)
    ids = pipe.prompt_ids("what color is the circle ?", [pipe.image_tensor(img)])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    assert ids == hf_prompt_ids(path, messages, 16, template("llava-1.5-7b-hf"))
    # the whole transformers processor (its template, its image processor) gives the same ids and pixels
    proc = transformers.AutoProcessor.from_pretrained(str(path), backend="pil")
    inputs = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image", "image": img}, {"type": "text", "text": "what color is the circle ?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == ids
    assert (inputs["pixel_values"][0] - pipe.image_tensor(img)).abs().max() <= 1e-5
    answer = pipe.chat("what color is the circle ?", images=[img], max_new_tokens=6)
    with torch.no_grad():
        out = ref.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=4,
                           eos_token_id=2)[0, len(ids):].tolist()
    out = out[: out.index(2)] if 2 in out else out
    assert answer == proc.tokenizer.decode(out).strip()
    # training labels: the assistant text as the template writes it (inside {% generation %})
    enc = pipe.processor.encode([("user", "<image>\nwhat color ?"), ("assistant", "red circle")], [16])
    kept = [pipe.tokenizer.hf.id_to_token(i) for i, lab in zip(enc.input_ids, enc.labels) if lab != -100]
    assert kept == ["red", "circle"]


@pytest.mark.parametrize("name", ["smolvlm-instruct", "idefics3-8b-llama3"])
def test_smolvlm_and_idefics3_templates_prompt_like_transformers(tmp_path, name):
    _, path = make_idefics3(tmp_path / "id3")
    (path / "chat_template.jinja").unlink()
    (path / "chat_template.json").write_text((FIXTURES / f"{name}.chat_template.json").read_text())
    write_processor(path, processor_config(name, do_image_splitting=False, size={"longest_edge": 64},
                                           max_image_size={"longest_edge": 32}), "t5")
    pipe = vlkit.load(path)
    img = image(50, 30)
    ids = pipe.prompt_ids("what is it ?", [pipe.image_tensor(img)])
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, chat_template=template(name))
    layout = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    assert ids == tok(text.replace("<image>", layout), add_special_tokens=False).input_ids
    assert pipe.image_tensor(img).shape == (3, 32, 32)
