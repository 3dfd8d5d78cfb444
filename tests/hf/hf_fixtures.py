"""Tiny random Hugging Face models built from configs with transformers and saved to temp dirs (nothing is
downloaded), plus a tiny tokenizer.json written with `tokenizers`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = ["the", "a", "red", "blue", "green", "circle", "square", "what", "color", "is", "it", "?", "yes", "no",
         "left", "right", "image", "shows", "USER:", "ASSISTANT:", "User:", "Assistant:"]
LLAVA_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
                  "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
                  "{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
                  "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
SMOLVLM_TEMPLATE = ("<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
                    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
                    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
                    "{% if add_generation_prompt %}Assistant:{% endif %}")


def write_tokenizer(directory: Path, specials: list[str], bos: str | None = "<s>") -> dict[str, int]:
    """A word-level tokenizer.json (specials first, then WORDS, then filler words up to 96 ids); with `bos`,
    its post-processor adds BOS like Llama's tokenizer does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders

    vocab = {tok: i for i, tok in enumerate(specials + WORDS + [f"w{i}" for i in range(96 - len(specials) - len(WORDS))])}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    tok.save(str(directory / "tokenizer.json"))
    return vocab


def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Random weights with clear logit margins (default init gives near-uniform logits, where greedy ties are
    decided by rounding), LayerNorm/RMSNorm gains near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "layernorm" in name):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model.eval()


def vision_kwargs(layers: int = 3) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, image_size=32,
                patch_size=8)


def text_kwargs(vocab: int = 100, **kw) -> dict:
    return {**dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256), **kw}


def save_hf(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    return directory


def make_siglip(directory: Path, seed: int = 0):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    model = perturb(SiglipVisionModel(SiglipVisionConfig(**vision_kwargs())), seed)
    return model, save_hf(model, directory)


def make_clip(directory: Path, seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = perturb(CLIPVisionModel(CLIPVisionConfig(**vision_kwargs())), seed)
    return model, save_hf(model, directory)


def make_llama(directory: Path, seed: int = 0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = perturb(LlamaForCausalLM(LlamaConfig(**text_kwargs(**kw))), seed)
    save_hf(model, directory)
    write_tokenizer(directory, ["<unk>", "<s>", "</s>"])
    return model, directory


def make_qwen2(directory: Path, seed: int = 0, **kw):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = perturb(Qwen2ForCausalLM(Qwen2Config(**text_kwargs(tie_word_embeddings=True, **kw))), seed)
    save_hf(model, directory)
    write_tokenizer(directory, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None)
    return model, directory


def make_llava(directory: Path, seed: int = 0, tower: str = "clip"):
    """LLaVA-1.5 layout: CLIP tower, vision_feature_layer -2, strategy 'default'; tokenizer + template + eos."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, \
        SiglipVisionConfig

    specials = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
    vision = CLIPVisionConfig(**vision_kwargs()) if tower == "clip" else SiglipVisionConfig(**vision_kwargs())
    cfg = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**text_kwargs(bos_token_id=1, eos_token_id=2)),
                      image_token_index=3, vision_feature_layer=-2,
                      vision_feature_select_strategy="default" if tower == "clip" else "full", pad_token_id=4)
    torch.manual_seed(seed)
    model = perturb(LlavaForConditionalGeneration(cfg), seed)
    save_hf(model, directory)
    write_tokenizer(directory, specials)
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
         "chat_template": LLAVA_TEMPLATE}))
    return model, directory


def make_idefics3(directory: Path, seed: int = 0):
    """Idefics3/SmolVLM layout: SigLIP-like tower with post_layernorm, pixel shuffle (scale 2), bias-free proj."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                "<global-img>"]
    cfg = Idefics3Config(vision_config=vision_kwargs(),
                         text_config=LlamaConfig(**text_kwargs(eos_token_id=2, tie_word_embeddings=False)).to_dict(),
                         scale_factor=2, image_token_id=3, pad_token_id=0)
    torch.manual_seed(seed)
    model = perturb(Idefics3ForConditionalGeneration(cfg), seed)
    save_hf(model, directory)
    write_tokenizer(directory, specials, bos=None)
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>"}))
    (directory / "chat_template.jinja").write_text(SMOLVLM_TEMPLATE)
    return model, directory


def hf_greedy(model, input_ids: torch.Tensor, n: int, **inputs) -> list[int]:
    """transformers' greedy generation of exactly n tokens (no eos stop)."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, **inputs)
    return out[0, input_ids.shape[1]:].tolist()


FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"  # files the Hub repositories ship


def template(name: str) -> str:
    return json.loads((FIXTURES / f"{name}.chat_template.json").read_text())["chat_template"]


def processor_config(name: str, **changes) -> dict:
    return {**json.loads((FIXTURES / f"{name}.preprocessor_config.json").read_text()), **changes}


def write_processor(directory: Path, config: dict, layout: str, **processor: object) -> None:
    """transformers 4: preprocessor_config.json; transformers 5: processor_config.json's `image_processor`.
    `processor`: the processor's own keys (processor_config.json in both layouts)."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        (directory / name).unlink(missing_ok=True)
    top = {"processor_class": config.get("processor_class", "LlavaProcessor"), **processor}
    if layout == "t4":
        (directory / "preprocessor_config.json").write_text(json.dumps(config))
    else:
        top["image_processor"] = config
    if len(top) > 1:
        (directory / "processor_config.json").write_text(json.dumps(top))


def image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_llava(directory: Path, tower: str = "clip", layout: str = "t4"):
    """make_llava with the shipped LLaVA-1.5 chat template (chat_template.json) and its processor config scaled
    to the tiny tower (32 px)."""
    ref, path = make_llava(directory, tower=tower)
    tc = json.loads((path / "tokenizer_config.json").read_text())
    tc.pop("chat_template")
    (path / "tokenizer_config.json").write_text(json.dumps(tc))
    (path / "chat_template.json").write_text((FIXTURES / "llava-1.5-7b-hf.chat_template.json").read_text())
    if tower == "clip":
        config = processor_config("llava-1.5-7b-hf", size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        config = processor_config("llava-siglip-so400m-384", size={"height": 32, "width": 32})
    write_processor(path, config, layout, patch_size=8, image_token="<image>",
                    vision_feature_select_strategy="default" if tower == "clip" else "full",
                    num_additional_image_tokens=1 if tower == "clip" else 0)
    return ref, path


def write_data(directory: Path) -> Path:
    directory.mkdir(parents=True)
    colors = ["red", "blue", "green"]
    with open(directory / "data.jsonl", "w") as f:
        for i in range(12):
            color = colors[i % 3]
            rgb = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}[color]
            Image.new("RGB", (40 + i, 36), rgb).save(directory / f"{i}.png")
            f.write(json.dumps({"id": str(i), "images": [f"{i}.png"], "conversations": [
                {"from": "human", "value": "<image>\nwhat color is it ?"}, {"from": "gpt", "value": color}]}) + "\n")
    return directory


TOL = 1e-4  # logits of vlkit and transformers agree within this (fp32)


def check_vlm_parity(ref, model, ids: list[int], pixels: torch.Tensor, hf_pixels: torch.Tensor) -> None:
    """vlkit's VLM and transformers' `ref` give the same logits (TOL) and the same 20-token greedy answer."""
    from vlkit.infer.generate import GenerationConfig, generate

    x = torch.tensor([ids])
    with torch.no_grad():
        want = ref(input_ids=x, pixel_values=hf_pixels).logits
        got = model(x, images=[pixels], return_logits=True)["logits"]
    assert (got - want).abs().max() <= TOL
    greedy = generate(model, [ids], [[pixels]], GenerationConfig(max_new_tokens=20), pad_id=0)[0]
    assert greedy == hf_greedy(ref, x, 20, pixel_values=hf_pixels)


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]


def make_qwen2_vl(directory: Path, family: str = "qwen2_vl", seed: int = 0, max_pixels: int = 160 * 160):
    """A tiny Qwen2-VL (or Qwen2.5-VL: RMSNorm/SwiGLU blocks, windows of 2x2 merged tokens, layer 1 full) with
    patch 8, merge 2, 2 frames per temporal patch; tokenizer with Qwen's special tokens, the Hub's chat template
    and Qwen2VLImageProcessor settings scaled to the tiny tower."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    ids = {tok: i for i, tok in enumerate(QWEN_SPECIALS)}
    text = text_kwargs(eos_token_id=ids["<|im_end|>"], bos_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=8)
        cfg, cls = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens), Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=48, out_hidden_size=32, num_heads=4, patch_size=8,
                      window_size=32, fullatt_block_indexes=[1], tokens_per_second=2)
        cfg, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens), Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = perturb(cls(cfg), seed)
    save_hf(model, directory)
    write_tokenizer(directory, QWEN_SPECIALS, bos=None)
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    (directory / "chat_template.json").write_text((FIXTURES / "qwen2-vl-2b-instruct.chat_template.json").read_text())
    write_processor(directory, processor_config("qwen2-vl-2b-instruct", patch_size=8, min_pixels=32 * 32,
                                                max_pixels=max_pixels), "t4")
    return model, directory
