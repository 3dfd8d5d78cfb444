"""Safe image decoding and preprocessing.

Decoding checks the pixel count from the header before any pixel is decoded (decompression bombs), and every
failure is an `ImageError` naming the problem. `ImageProcessor` is the one place where pixels become the tower's
input tensors (vlkit's own models and Hugging Face checkpoints alike, see vlkit.config.ImageProcessorConfig).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
from PIL import Image

from vlkit.errors import UserError

MAX_PIXELS = 64 * 1024 * 1024  # 64 Mpx: larger headers are refused before decoding
MAX_BYTES = 32 * 1024 * 1024
ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}
ALLOWED_MIME = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp", "image/tiff"}

ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]

if TYPE_CHECKING:
    import torch

    from vlkit.config import ImageProcessorConfig, VisionConfig


class ImageError(UserError):
    """An image a user supplied cannot be used; the message says why."""


def decode_bytes(data: bytes, max_pixels: int = MAX_PIXELS, what: str = "image") -> Image.Image:
    if not data:
        raise ImageError(f"{what} is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{what} is {len(data)} bytes; the limit is {MAX_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            w, h = img.size
            if fmt not in ALLOWED_FORMATS:
                raise ImageError(f"{what} has unsupported format {fmt}; allowed: {sorted(ALLOWED_FORMATS)}")
            if w * h > max_pixels:
                raise ImageError(f"{what} is {w}x{h} = {w * h} pixels; the limit is {max_pixels} (decompression bomb?)")
            img.load()
            img = to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{what} exceeds the pixel limit (decompression bomb)") from None
    except Exception as exc:  # PIL raises many types for corrupt/truncated data
        raise ImageError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); is it corrupt or truncated?") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (as transformers' convert_to_rgb does)."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def decode_base64(text: str, max_pixels: int = MAX_PIXELS, what: str = "image") -> Image.Image:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{what} is not valid base64") from None
    return decode_bytes(data, max_pixels, what)


def load_image(src: ImageLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Path, bytes, PIL image or HxWx3 uint8 array -> RGB PIL image."""
    if isinstance(src, Image.Image):
        return to_rgb(src)
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] != 3:
            raise ImageError(f"array image must be HxWx3, got shape {src.shape}")
        return Image.fromarray(src.astype(np.uint8), "RGB")
    if isinstance(src, (bytes, bytearray)):
        return decode_bytes(bytes(src), max_pixels)
    path = Path(src)
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    return decode_bytes(path.read_bytes(), max_pixels, what=f"image {path}")


RESAMPLE = {"nearest": Image.NEAREST, "lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC, "box": Image.BOX, "hamming": Image.HAMMING}
MAX_SIDE = 4096  # Idefics3's longest_edge rule never goes beyond 4k
SIGNED = (0.5, 0.5, 0.5)  # mean = std = 0.5 maps [0, 1] to [-1, 1]: vlkit's own towers and the visual tokenizer


MAX_ASPECT = 200  # Qwen2-VL refuses images more elongated than this


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's native-resolution size for a height x width image: each side rounded to the nearest multiple of
    `factor` (Python's round, so halves go to the even multiple); if that area exceeds `max_pixels`, both sides
    are scaled by sqrt(area / max_pixels) and rounded down; if it is below `min_pixels`, scaled up by
    sqrt(min_pixels / area) and rounded up. Sides are at least `factor`. -> (new_height, new_width)."""
    if height < 1 or width < 1:
        raise ImageError(f"image size {height}x{width} is empty")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ImageError(f"image size {height}x{width} has an aspect ratio above {MAX_ASPECT}, which native "
                         f"resolution refuses (as Qwen2-VL does)")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return max(factor, h), max(factor, w)


class ImageProcessor:
    """RGB image -> the tower's input, step by step as transformers' slow (PIL) image processors do it (CLIP,
    SigLIP, LLaVA, Idefics3/SmolVLM without image splitting): pad to square, resize, resize to a square, centre
    crop (all on uint8 pixels, `pixels`), then rescale and normalize (`normalize`). `__call__` does both.
    With native resolution (cfg.max_pixels > 0) the one geometric step is `smart_resize`, with
    factor = patch_size * cfg.merge_size."""

    def __init__(self, cfg: "ImageProcessorConfig", image_size: int, mean: Sequence[float], std: Sequence[float],
                 patch_size: int = 0):
        if cfg.native and patch_size < 1:
            raise ValueError("a native-resolution image processor needs the tower's patch_size")
        self.cfg = cfg
        self.image_size = image_size
        self.patch_size = patch_size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def from_vision(cls, v: "VisionConfig") -> "ImageProcessor":
        return cls(v.processor, v.image_size, v.image_mean, v.image_std, v.patch_size)

    def native_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a native-resolution processor resizes a height x width image to."""
        c = self.cfg
        return smart_resize(height, width, self.patch_size * c.merge_size, c.min_pixels, c.max_pixels)

    @classmethod
    def default(cls, image_size: int = 0, mean: Sequence[float] = SIGNED,
                std: Sequence[float] = SIGNED) -> "ImageProcessor":
        """vlkit's own processor: a bicubic resize to `image_size` (0: for `normalize` only), rescale by 1/255,
        normalize with `mean` / `std`."""
        from vlkit.config import ImageProcessorConfig

        return cls(ImageProcessorConfig(), image_size, mean, std)

    def _resize(self, img: Image.Image, height: int, width: int) -> Image.Image:
        return img if img.size == (width, height) else img.resize((width, height), RESAMPLE[self.cfg.resample])

    def geometry(self, img: Image.Image) -> Image.Image:
        c = self.cfg
        if c.image_splitting:
            raise ImageError("this checkpoint's image processor splits images into tiles (do_image_splitting: true), "
                             "which vlkit does not implement: its prompts would get fewer image tokens than the "
                             "model was trained with. Set do_image_splitting to false in the checkpoint's "
                             "preprocessor_config.json / processor_config.json to use one image per picture")
        img = to_rgb(img)
        w, h = img.size
        if c.native:
            return self._resize(img, *self.native_size(h, w))
        if c.pad_to_square and w != h:
            side = max(w, h)
            fill = tuple(int(x * 255) for x in self.mean)
            square = Image.new("RGB", (side, side), fill)
            square.paste(img, ((side - w) // 2, (side - h) // 2))
            img, (w, h) = square, (side, side)
        if c.resize == "exact":
            img = self._resize(img, c.height or self.image_size, c.width or self.image_size)
        elif c.resize == "shortest_edge":
            short, long = min(w, h), max(w, h)
            new_short, new_long = c.edge, int(c.edge * long / short)
            img = self._resize(img, *((new_long, new_short) if w <= h else (new_short, new_long)))
        elif c.resize == "longest_edge":  # Idefics3: the other side follows the aspect ratio, rounded up to even
            if w >= h:
                nw, nh = c.edge, int(c.edge / (w / h))
                nh += nh % 2
            else:
                nh, nw = c.edge, int(c.edge * (w / h))
                nw += nw % 2
            if nw >= nh and nw > MAX_SIDE:
                nw, nh = MAX_SIDE, int(MAX_SIDE / (nw / nh))
            elif nh > nw and nh > MAX_SIDE:
                nh, nw = MAX_SIDE, int(MAX_SIDE * (nw / nh))
            img = self._resize(img, max(nh, 1), max(nw, 1))
        if c.square is not None:
            img = self._resize(img, c.square, c.square)
        if c.crop_height is not None:
            w, h = img.size
            top, left = (h - c.crop_height) // 2, (w - c.crop_width) // 2  # PIL pads outside the image with 0
            img = img.crop((left, top, left + c.crop_width, top + c.crop_height))
        return img

    def pixels(self, img: Image.Image) -> "torch.Tensor":
        """Geometry only: uint8 (3, H, W)."""
        import torch

        return torch.from_numpy(np.asarray(self.geometry(img), dtype=np.uint8).transpose(2, 0, 1).copy())

    def normalize(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 (..., 3, H, W) -> float32: rescale (in float64, as transformers) and normalize."""
        import torch

        x = pixels.cpu().numpy()
        x = (x.astype(np.float64) * self.cfg.rescale_factor if self.cfg.rescale_factor is not None else x)
        x = x.astype(np.float32)
        if self.cfg.normalize:
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __call__(self, img: Image.Image) -> "torch.Tensor":
        return self.normalize(self.pixels(img))


def normalize_pixels(pixels: "torch.Tensor", mean: Sequence[float] = SIGNED,
                     std: Sequence[float] = SIGNED) -> "torch.Tensor":
    """uint8 (..., 3, H, W) pixels -> float32 as vlkit's processor normalizes them (default: [-1, 1], the
    visual tokenizer's input)."""
    return ImageProcessor.default(0, mean, std).normalize(pixels)


def pixels_to_pil(pixels: "torch.Tensor", mean: Sequence[float] = SIGNED, std: Sequence[float] = SIGNED) -> list:
    """The inverse of `normalize_pixels`: float (B, 3, H, W) -> RGB PIL images (rounded, clamped to [0, 255])."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    x = ((pixels.detach().float().cpu() * s + m) * 255).round().clamp(0, 255).byte()
    return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in x.permute(0, 2, 3, 1).numpy()]


def to_tensor(img: Image.Image, size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float]):
    """Resize (bicubic) to `size` (int: square; (h, w)) and normalize -> float tensor 3xHxW (vlkit's own
    processor; the visual tokenizer's input)."""
    from vlkit.config import ImageProcessorConfig

    h, w = (size, size) if isinstance(size, int) else size
    return ImageProcessor(ImageProcessorConfig(height=h, width=w), h, mean, std)(img)
