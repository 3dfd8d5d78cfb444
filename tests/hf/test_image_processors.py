"""HF image processors, with the configs the Hub repositories ship (tests/fixtures/hf) in the transformers-4
and -5 layouts: vlkit's pixels equal transformers' PIL processors; unsupported settings are refused clearly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF parity tests need the dev extra (transformers)")

import vlkit  # noqa: E402
from tests.hf.hf_fixtures import image, make_idefics3, processor_config, template, write_processor  # noqa: E402
from vlkit.errors import CheckpointError  # noqa: E402
from vlkit.hf.image_processors import image_processor_from_hf, read_image_processor  # noqa: E402
from vlkit.images import ImageError, ImageProcessor  # noqa: E402


def transformers_pil_processor(directory: Path):
    """transformers' slow (PIL) image processor as AutoImageProcessor reads the directory."""
    return transformers.AutoImageProcessor.from_pretrained(str(directory), backend="pil")


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
    cfg, mean, std = image_processor_from_hf(read_image_processor(tmp_path), size, clip)
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
    cfg, mean, std = image_processor_from_hf(read_image_processor(tmp_path), 336, True)
    assert cfg.pad_to_square and mean == (0.2, 0.5, 0.9)
    img = image(140, 90)
    want = torch.as_tensor(np.asarray(ref(img, return_tensors="np")["pixel_values"]))[0]
    assert (ImageProcessor(cfg, 336, mean, std)(img) - want).abs().max() <= 1e-5


def test_t5_layout_wins_and_custom_mean_is_read(tmp_path):
    write_processor(tmp_path, processor_config("llava-1.5-7b-hf", image_mean=[0.1, 0.2, 0.3]), "t5")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor_config("llava-1.5-7b-hf")))
    _, mean, _ = image_processor_from_hf(read_image_processor(tmp_path), 336, True)
    assert mean == (0.1, 0.2, 0.3)


def test_unsupported_image_processors_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="image_processor_type 'Qwen3VLImageProcessor' is not supported"):
        image_processor_from_hf({"image_processor_type": "Qwen3VLImageProcessor"}, 336, False)
    with pytest.raises(CheckpointError, match="do_resize=false"):
        image_processor_from_hf({"image_processor_type": "Qwen2VLImageProcessor", "do_resize": False}, 336, True)
    with pytest.raises(CheckpointError, match="resample=7"):
        image_processor_from_hf(processor_config("llava-1.5-7b-hf", resample=7), 336, True)
    # Idefics3/SmolVLM image splitting (their shipped setting): loading works, every image is refused
    cfg, mean, std = image_processor_from_hf(processor_config("smolvlm-instruct"), 384, False)
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


def test_training_examples_use_the_checkpoints_image_processor(tokenizer):
    """Fine-tuning sees the pixels inference sees: LLaVA-1.5's CLIP processor resizes the shortest edge and
    centre-crops; squashing the image (vlkit's own processor) would train on other pixels."""
    from vlkit.chat import ChatProcessor
    from vlkit.data.collate import encode_samples

    cfg, mean, std = image_processor_from_hf(processor_config("llava-1.5-7b-hf"), 336, True)
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
