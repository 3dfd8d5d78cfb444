"""Hugging Face checkpoints end to end, with the files the Hub repositories ship (tests/fixtures/hf): their
verbatim chat templates, their image-processor configs in the transformers-4 and -5 layouts, and the round trip
HF LLaVA -> vlkit fine-tune (full and LoRA) -> vlkit.load -> chat -> export -> transformers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.models.hf_fixtures import make_idefics3, make_llava  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.images import ImageError, ImageProcessor  # noqa: E402
from vlkit.models import hf  # noqa: E402

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"
TOL = 1e-4


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


def transformers_pil_processor(directory: Path):
    """transformers' slow (PIL) image processor as AutoImageProcessor reads the directory."""
    return transformers.AutoImageProcessor.from_pretrained(str(directory), backend="pil")


# -- image processors --------------------------------------------------------------------------------------

CASES = {  # fixture -> (tower image size, CLIP tower, changes that make vlkit able to run it)
    "llava-1.5-7b-hf": (336, True, {}),
    "llava-siglip-so400m-384": (384, False, {}),
    "smolvlm-instruct": (384, False, {"do_image_splitting": False}),
    "idefics3-8b-llama3": (364, False, {"do_image_splitting": False}),
}


@pytest.mark.parametrize("layout", ["t4", "t5"])
@pytest.mark.parametrize("name", list(CASES))
def test_pixels_equal_transformers_pil_processor(tmp_path, name, layout):
    size, clip, changes = CASES[name]
    write_processor(tmp_path, processor_config(name, **changes), layout)
    ref = transformers_pil_processor(tmp_path)
    assert type(ref).__name__.endswith("Pil")
    cfg, mean, std = hf.image_processor_from_hf(hf.read_image_processor(tmp_path), size, clip)
    ours = ImageProcessor(cfg, size, mean, std)
    for w, h in [(50, 50), (140, 90), (90, 140), (401, 377)]:
        img = image(w, h, seed=w)
        want = torch.as_tensor(np.asarray(ref(img, return_tensors="np")["pixel_values"]))
        want = want.reshape(-1, *want.shape[-3:])[0]
        got = ours(img)
        assert got.shape == want.shape, (w, h)
        assert (got - want).abs().max() <= 1e-5, (name, w, h)


def test_llava_processor_pads_to_square_like_transformers(tmp_path):
    config = processor_config("llava-1.5-7b-hf", image_processor_type="LlavaImageProcessor", do_pad=True,
                              image_mean=[0.2, 0.5, 0.9])
    write_processor(tmp_path, config, "t5")
    ref = transformers_pil_processor(tmp_path)
    cfg, mean, std = hf.image_processor_from_hf(hf.read_image_processor(tmp_path), 336, True)
    assert cfg.pad_to_square and mean == (0.2, 0.5, 0.9)
    img = image(140, 90)
    want = torch.as_tensor(np.asarray(ref(img, return_tensors="np")["pixel_values"]))[0]
    assert (ImageProcessor(cfg, 336, mean, std)(img) - want).abs().max() <= 1e-5


def test_t5_layout_wins_and_custom_mean_is_read(tmp_path):
    write_processor(tmp_path, processor_config("llava-1.5-7b-hf", image_mean=[0.1, 0.2, 0.3]), "t5")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor_config("llava-1.5-7b-hf")))
    _, mean, _ = hf.image_processor_from_hf(hf.read_image_processor(tmp_path), 336, True)
    assert mean == (0.1, 0.2, 0.3)


def test_unsupported_image_processors_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="image_processor_type 'Qwen2VLImageProcessor' is not supported"):
        hf.image_processor_from_hf({"image_processor_type": "Qwen2VLImageProcessor"}, 336, False)
    with pytest.raises(CheckpointError, match="resample=7"):
        hf.image_processor_from_hf(processor_config("llava-1.5-7b-hf", resample=7), 336, True)
    # Idefics3/SmolVLM image splitting (their shipped setting): loading works, every image is refused
    cfg, mean, std = hf.image_processor_from_hf(processor_config("smolvlm-instruct"), 384, False)
    assert cfg.image_splitting
    with pytest.raises(ImageError, match="do_image_splitting"):
        ImageProcessor(cfg, 384, mean, std)(image(140, 90))


def test_idefics3_with_image_splitting_refuses_images_not_tokens(tmp_path):
    _, path = make_idefics3(tmp_path / "id3")
    (path / "chat_template.jinja").write_text(template("smolvlm-instruct"))
    write_processor(path, processor_config("smolvlm-instruct", size={"longest_edge": 128},
                                           max_image_size={"longest_edge": 32}), "t4")
    pipe = vlkit.load(path)
    assert pipe.chat("what is it ?", max_new_tokens=2) is not None  # text-only prompts still work
    with pytest.raises(ImageError, match="do_image_splitting"):
        pipe.chat("what is it ?", images=[image(50, 40)], max_new_tokens=2)


# -- verbatim chat templates -------------------------------------------------------------------------------


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


# -- load options ------------------------------------------------------------------------------------------


def test_load_keeps_the_checkpoint_dtype_unless_told(tmp_path):
    ref, path = tiny_llava(tmp_path / "llava")
    ref.to(torch.bfloat16).save_pretrained(str(path))
    pipe = vlkit.load(path)
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    assert next(vlkit.load(path, dtype="float32").model.parameters()).dtype == torch.float32
    assert pipe.chat("what color is it ?", images=[image(32, 32)], max_new_tokens=3) is not None
    with pytest.raises(vlkit.errors.UserError, match="dtype='float8'"):
        vlkit.load(path, dtype="float8")


def test_tokenizer_path_may_be_an_hf_tokenizer_folder(tmp_path):
    from vlkit.tokenizer import IMAGE_PAD, Tokenizer

    _, path = make_llava(tmp_path / "llava")
    tok = Tokenizer.from_file(path)  # the folder, as HF users name tokenizers
    assert tok.hf.token_to_id("circle") is not None and tok.token_id(IMAGE_PAD) >= 97
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        Tokenizer.from_file(tmp_path)


# -- round trip: HF LLaVA -> vlkit fine-tune -> load -> chat -> export -> transformers -----------------------


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


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_vlkit_loads_its_own_chatml_export(tmp_path, tower):
    from tests.models.test_hf_vlm import _vlkit_pipeline

    pipe = _vlkit_pipeline(tower)
    out = vlkit.export(pipe, tmp_path / "export", format="llava-hf")
    again = vlkit.load(out)  # the image token comes from image_token_index (<|image_pad|>), not '<image>'
    assert again.tokenizer.image_token == "<|image_pad|>"
    img = image(40, 40)
    ids = pipe.prompt_ids("what color is the circle ?", [pipe.image_tensor(img)])
    assert again.prompt_ids("what color is the circle ?", [again.image_tensor(img)]) == ids
    assert again.chat("what color is the circle ?", images=[img], max_new_tokens=5) == \
        pipe.chat("what color is the circle ?", images=[img], max_new_tokens=5)


def test_training_examples_use_the_checkpoints_image_processor(tokenizer):
    """Fine-tuning sees the pixels inference sees: LLaVA-1.5's CLIP processor resizes the shortest edge and
    centre-crops; squashing the image (vlkit's own processor) would train on other pixels."""
    from vlkit.chat import ChatProcessor
    from vlkit.data.collate import encode_samples

    cfg, mean, std = hf.image_processor_from_hf(processor_config("llava-1.5-7b-hf"), 336, True)
    clip = ImageProcessor(cfg, 336, mean, std)
    img = image(140, 90)
    sample = {"id": "s", "image_objects": [img], "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "noise"}]}
    sizes = []
    ex = encode_samples([sample], ChatProcessor(tokenizer), 336, lambda h, w: sizes.append((h, w)) or 4, 64,
                        strict=True, image_processor=clip)[0]
    assert torch.equal(ex.images[0], clip.pixels(img)) and sizes == [(336, 336)]
    squashed = encode_samples([sample], ChatProcessor(tokenizer), 336, lambda h, w: 4, 64, strict=True)[0]
    assert (ex.images[0].float() - squashed.images[0].float()).abs().mean() > 5  # the default would differ
