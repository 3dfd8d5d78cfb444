"""Qwen2-VL and Qwen2.5-VL import: tiny random transformers models built from config give the same logits (TOL) and
the same 20 greedy tokens as vlkit on the same pixels and grids (square, wide, tall, two images, a short video);
the processor, the chat template and refusals of what vlkit does not implement."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import TOL, hf_greedy, image, make_qwen2_vl, template  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hf import load_model  # noqa: E402
from vlkit.hf.qwen2_vl import grid_thw, to_hf_pixels  # noqa: E402
from vlkit.infer.generate import GenerationConfig, generate  # noqa: E402

FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
# (H, W) of the images, or (T, H, W) of a clip; 48 x 112 cuts Qwen2.5-VL's 32-pixel windows at the border
CASES = {"square": [(64, 64)], "wide": [(48, 112)], "tall": [(112, 48)], "two-images": [(64, 64), (48, 112)],
         "video": [(3, 48, 64)], "image-and-video": [(48, 64), (4, 32, 48)]}
PATCH, MERGE, TP = 8, 2, 2


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request, tmp_path_factory):
    ref, path = make_qwen2_vl(tmp_path_factory.mktemp(request.param) / "m", request.param)
    return ref, path, vlkit.load(path)


def _items(shapes, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape[:-2], 3, *shape[-2:], generator=g) for shape in shapes]


def _prompt(model, items) -> list[int]:
    """<|im_start|> user ... <|vision_start|> N pads <|vision_end|> ... <|im_end|> <|im_start|> (ids of the tiny
    tokenizer: 5 image pad, 6 video pad), a different word between the items."""
    ids = [1, 40, 41]
    for k, item in enumerate(items):
        n = model.tokens_per_image(*item.shape[-2:]) if item.dim() == 3 else model.tokens_per_clip(*item.shape[:1],
                                                                                                     *item.shape[-2:])
        ids += [3] + [5 if item.dim() == 3 else 6] * n + [4, 42 + k]
    return ids + [2, 1, 50]


def _hf_inputs(ids: list[int], items) -> dict:
    x = torch.tensor([ids])
    kw: dict = {"mm_token_type_ids": (x == 5).int() + 2 * (x == 6).int()}
    for key, grid_key, want in (("pixel_values", "image_grid_thw", 3), ("pixel_values_videos", "video_grid_thw", 4)):
        chosen = [it for it in items if it.dim() == want]
        if chosen:
            kw[key] = torch.cat([to_hf_pixels(it, PATCH, MERGE, TP) for it in chosen])
            kw[grid_key] = torch.tensor([grid_thw(it, PATCH, TP) for it in chosen])
    return kw


def check_parity(ref, model, items) -> None:
    """vlkit's logits equal transformers' within TOL on the same pixels and grids, and 20 greedy tokens are equal."""
    ids = _prompt(model, items)
    kw = _hf_inputs(ids, items)
    x = torch.tensor([ids])
    with torch.no_grad():
        want = ref(input_ids=x, **kw).logits
        got = model(x, images=items, return_logits=True)["logits"]
    assert got.shape == want.shape
    assert (got - want).abs().max() <= TOL
    greedy = generate(model, [ids], [items], GenerationConfig(max_new_tokens=20), pad_id=0)[0]
    assert greedy == hf_greedy(ref, x, 20, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_transformers(qwen, case):
    ref, _, pipe = qwen
    check_parity(ref, pipe.model, _items(CASES[case]))


def test_window_attention_and_temporal_positions_matter(qwen):
    """The parity above could not pass with the windows or the video's temporal ids wrong: changing them
    changes the logits."""
    ref, _, pipe = qwen
    model = pipe.model
    items = _items([(48, 112), (4, 32, 48)])
    x = torch.tensor([_prompt(model, items)])
    with torch.no_grad():
        base = model(x, images=items, return_logits=True)["logits"]
        step, model.cfg.text.mrope_time_step = model.cfg.text.mrope_time_step, 7.0
        shifted = model(x, images=items, return_logits=True)["logits"]
        model.cfg.text.mrope_time_step = step
        assert (base - shifted).abs().max() > 1e-3
        if model.cfg.vision.window_size:
            size, model.cfg.vision.window_size = model.cfg.vision.window_size, 0
            full = model(x, images=items, return_logits=True)["logits"]
            model.cfg.vision.window_size = size
            assert (base - full).abs().max() > 1e-3


def test_processor_gives_transformers_pixels(qwen):
    """vlkit's processor (smart_resize, bicubic, OpenAI CLIP mean/std) = Qwen2VLImageProcessor's PIL backend, in
    transformers' flat block-major layout, with the same image_grid_thw."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _, path, pipe = qwen
    settings = json.loads((path / "preprocessor_config.json").read_text())
    hf = Qwen2VLImageProcessorPil(**{k: v for k, v in settings.items() if k not in ("image_processor_type",
                                                                                   "processor_class")})
    for w, h in [(100, 100), (300, 90), (70, 260)]:
        img = image(w, h, seed=w)
        want = hf(images=[img], return_tensors="pt")
        ours = pipe.image_tensor(img)
        assert grid_thw(ours, PATCH, TP) == want["image_grid_thw"][0].tolist()
        assert (to_hf_pixels(ours, PATCH, MERGE, TP) - want["pixel_values"]).abs().max() < 1e-4


def test_chat_template_prompts_like_transformers(qwen):
    """pipe.prompt_ids renders the Hub's chat template (default system prompt, <|vision_start|><|image_pad|>
    <|vision_end|>) and repeats the pad as Qwen2VLProcessor does (grid_thw.prod() / merge_size**2)."""
    from transformers import AutoTokenizer

    ref, path, pipe = qwen
    pixels = pipe.image_tensor(image(120, 60))
    ids = pipe.prompt_ids("what color is the circle ?", [pixels])
    tok = AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    text = tok.apply_chat_template(messages, chat_template=template("qwen2-vl-2b-instruct"), add_generation_prompt=True,
                                   tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    n = grid_thw(pixels, PATCH, TP)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * (n[0] * n[1] * n[2] // MERGE ** 2))
    assert ids == tok(text).input_ids
    answer = pipe.chat("what color is the circle ?", images=[image(120, 60)], max_new_tokens=8)
    assert isinstance(answer, str)


def test_hub_layout_weights_and_flat_config_load(tmp_path):
    """transformers 4.x checkpoints (the Hub's): text settings at the top of config.json, `rope_scaling` of type
    mrope, weights named visual.* / model.*."""
    from safetensors.torch import load_file, save_file

    ref, path = make_qwen2_vl(tmp_path / "m")
    c = json.loads((path / "config.json").read_text())
    text = c.pop("text_config")
    rope = text.pop("rope_parameters")
    c.update(text, rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    c["model_type"] = "qwen2_vl"
    (path / "config.json").write_text(json.dumps(c))
    state = load_file(str(path / "model.safetensors"))
    legacy = {(k.replace("model.visual.", "visual.", 1) if k.startswith("model.visual.")
               else k.replace("model.language_model.", "model.", 1)): v for k, v in state.items()}
    save_file(legacy, str(path / "model.safetensors"))
    model = load_model(path)
    items = _items([(48, 64)])
    ids = _prompt(model, items)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids]), **_hf_inputs(ids, items)).logits
        got = model(torch.tensor([ids]), images=items, return_logits=True)["logits"]
    assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize("change, message", [
    (lambda c: c["text_config"].update(use_sliding_window=True), "use_sliding_window"),
    (lambda c: c["vision_config"].update(hidden_act="relu6"), "hidden_act='relu6'"),
    (lambda c: c["vision_config"].update(hidden_size=48), "merger's output size"),
    (lambda c: c["text_config"]["rope_parameters"].update(rope_type="yarn", factor=2.0), "rope_type 'yarn'"),
    (lambda c: c["vision_config"].update(patch_size=[8, 8]), "patch_size"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, change, message):
    _, path = make_qwen2_vl(tmp_path / "m")
    c = json.loads((path / "config.json").read_text())
    change(c)
    (path / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_processor_settings_must_agree_with_the_tower(tmp_path):
    _, path = make_qwen2_vl(tmp_path / "m")
    settings = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**settings, "patch_size": 14}))
    with pytest.raises(CheckpointError, match="patch_size=14 differs"):
        load_model(path)


def test_a_clip_through_the_chat_api_prompts_and_answers_like_transformers(qwen):
    """pipe.chat(prompt, videos=[frames]): the prompt ids are transformers' (the Hub template's video marker, the
    <|video_pad|> repeated video_grid_thw.prod() / merge_size**2 times, as Qwen2VLProcessor does) and the 20 greedy
    tokens are transformers' on the same clip pixels (our processor's, in transformers' layout)."""
    from transformers import AutoTokenizer

    ref, path, pipe = qwen
    frames = [image(72, 40, seed=k) for k in range(3)]  # an odd count: the last temporal patch repeats a frame
    question = "what color is the circle ?"
    ids, items = pipe.media_prompt(question, [], [[pipe.image_tensor(f) for f in frames]])
    [clip] = items
    assert clip.shape[:2] == (3, 3)
    tok = AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = tok.apply_chat_template(messages, chat_template=template("qwen2-vl-2b-instruct"), add_generation_prompt=True,
                                   tokenize=False)
    grid = grid_thw(clip, PATCH, TP)
    assert grid[0] == 2  # 3 frames -> 2 temporal patches
    text = text.replace("<|video_pad|>", "<|video_pad|>" * (grid[0] * grid[1] * grid[2] // MERGE ** 2))
    assert ids == tok(text).input_ids
    x = torch.tensor([ids])
    kw = {"pixel_values_videos": to_hf_pixels(clip, PATCH, MERGE, TP), "video_grid_thw": torch.tensor([grid]),
          "mm_token_type_ids": 2 * (x == pipe.config.video_token_id).int()}
    want = hf_greedy(ref, x, 20, **kw)
    stop = want.index(pipe.tokenizer.stop_ids[0]) if pipe.tokenizer.stop_ids[0] in want else len(want)
    answer = pipe.chat(question, videos=[frames], max_new_tokens=20)
    assert answer == pipe.tokenizer.decode(want[:stop]).strip()
    assert stop >= 10  # the comparison covers a long answer (neither side stopped early)
