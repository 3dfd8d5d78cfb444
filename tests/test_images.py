"""Image decoding limits and errors, and the one normalisation (vlkit's own processor)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.images import (SIGNED, ImageError, ImageProcessor, decode_base64, decode_bytes, load_image,
                          normalize_pixels, to_rgb, to_tensor)


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_decoding_refuses_what_it_cannot_use():
    with pytest.raises(ImageError, match="empty"):
        decode_bytes(b"")
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_bytes(b"\x89PNG not really")
    big = encoded(Image.new("L", (300, 300)))
    with pytest.raises(ImageError, match=r"300x300 = 90000 pixels; the limit is 1000"):
        decode_bytes(big, max_pixels=1000, what="upload")
    with pytest.raises(ImageError, match="unsupported format ICO"):
        decode_bytes(encoded(Image.new("RGB", (16, 16)), "ICO"))
    with pytest.raises(ImageError, match="not valid base64"):
        decode_base64("@@@")
    with pytest.raises(ImageError, match="HxWx3"):
        load_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="does not exist"):
        load_image("/nowhere/x.png")


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    got = np.asarray(decode_bytes(encoded(rgba)))
    assert got.tolist() == [[[255, 255, 255], [0, 0, 255]]]
    assert to_rgb(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_normalize_pixels_maps_bytes_to_minus_one_one():
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(3, 16, 16)
    x = normalize_pixels(pixels)
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.allclose(x, pixels.float() / 127.5 - 1, atol=1e-6)  # the visual tokenizer's scale
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    want = (pixels.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(normalize_pixels(pixels[None], mean, std)[0], want, atol=1e-5)  # batches too


def test_default_processor_resizes_then_normalizes_like_to_tensor():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    proc = ImageProcessor.default(16)
    pixels = proc.pixels(img)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 16, 16)
    assert torch.equal(proc(img), to_tensor(img, 16, SIGNED, SIGNED))
    assert torch.equal(proc(img), normalize_pixels(pixels))


# -- native resolution (Qwen2-VL's smart_resize) -----------------------------------------------------------
SIZES = [(64, 64), (96, 256), (256, 96), (33, 47), (1000, 30), (7, 900), (4000, 3000), (14, 14), (27, 41)]


@pytest.mark.parametrize("factor,min_pixels,max_pixels", [(28, 56 * 56, 28 * 28 * 1280), (16, 32 * 32, 64 * 64),
                                                          (8, 64, 128 * 96)])
def test_smart_resize_equals_transformers(factor, min_pixels, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    from vlkit.images import smart_resize

    for h, w in SIZES:
        assert smart_resize(h, w, factor, min_pixels, max_pixels) == reference(h, w, factor, min_pixels,
                                                                               max_pixels), (h, w)


def test_smart_resize_refuses_extreme_aspect_ratios():
    from vlkit.images import smart_resize

    with pytest.raises(ImageError, match="aspect ratio above 200"):
        smart_resize(2, 500, 8, 0, 64 * 64)


@pytest.mark.parametrize("size", [(64, 64), (256, 96), (96, 256)])  # PIL's (width, height): square, wide, tall
def test_native_processor_keeps_the_aspect_ratio_on_the_factor_grid(size):
    from vlkit.config import ImageProcessorConfig, VisionConfig

    v = VisionConfig(patch_size=8, processor=ImageProcessorConfig(min_pixels=32 * 32, max_pixels=256 * 128,
                                                                  merge_size=2))
    v.validate()
    proc = ImageProcessor.from_vision(v)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    x = proc(img)
    w, h = size
    assert x.shape == (3, h, w)  # these sizes are already multiples of 16 within the budget: kept as they are
    small = proc(img.resize((w // 3, h // 3)))
    assert small.shape[1] % 16 == 0 and small.shape[2] % 16 == 0
    assert small.shape[1] * small.shape[2] >= 32 * 32
    assert (small.shape[2] > small.shape[1]) == (w > h) and (small.shape[2] < small.shape[1]) == (w < h)


def test_native_processor_config_errors_name_the_field():
    from vlkit.config import ConfigError, ImageProcessorConfig

    with pytest.raises(ConfigError, match="min_pixels needs vision.processor.max_pixels"):
        ImageProcessorConfig(min_pixels=100).validate()
    with pytest.raises(ConfigError, match="min_pixels=200 > max_pixels=100"):
        ImageProcessorConfig(min_pixels=200, max_pixels=100).validate()
    with pytest.raises(ConfigError, match="native resolution"):
        ImageProcessorConfig(max_pixels=100, pad_to_square=True).validate()
    with pytest.raises(ValueError, match="patch_size"):
        ImageProcessor(ImageProcessorConfig(max_pixels=100), 64, (0.5,) * 3, (0.5,) * 3)
