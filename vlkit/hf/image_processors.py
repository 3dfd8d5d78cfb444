"""Hugging Face image processors -> vlkit's ImageProcessorConfig: the settings of preprocessor_config.json, or of
processor_config.json's `image_processor` section (transformers 5), read into the one vlkit image processor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlkit.config import ConfigError, ImageProcessorConfig
from vlkit.errors import CheckpointError
from vlkit.io import read_json

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# PIL's filter codes, as transformers writes `resample`
RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_COMMON = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True)
_CLIP = dict(_COMMON, default_to_square=False, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
             do_center_crop=True,
             resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_pad=False)
_SIGLIP = dict(_COMMON, size={"height": 224, "width": 224}, do_center_crop=False, resample=3,
               image_mean=[0.5] * 3, image_std=[0.5] * 3)
_IDEFICS3 = dict(_COMMON, size={"longest_edge": 4 * 364}, max_image_size={"longest_edge": 364}, resample=1,
                 image_mean=[0.5] * 3, image_std=[0.5] * 3, do_image_splitting=True, do_pad=True)

_QWEN2_VL = dict(_COMMON, resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), patch_size=14,
                 temporal_patch_size=2, merge_size=2, size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})


@dataclass
class ImageProcessorFormat:
    defaults: dict  # the transformers class's defaults, for keys a config leaves out
    translate: Callable[[dict, str], ImageProcessorConfig]


def _size(value: Any, key: str, source: str, square: bool = True) -> dict:
    if isinstance(value, int):  # old configs: one int, a square or (CLIP) the shortest edge
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: image processor `{key}`={value!r} must be a mapping")
    return value


def _resample(value: Any, source: str) -> str:
    if value not in RESAMPLE_CODES:
        raise CheckpointError(f"{source}: image processor resample={value!r} is not supported; supported: "
                              f"{sorted(RESAMPLE_CODES)} (PIL filter codes)")
    return RESAMPLE_CODES[value]


def _resize(size: dict, edge: str, source: str) -> dict:
    """An HF processor's `size` -> ImageProcessorConfig resize fields: one `edge` key (shortest_edge for CLIP /
    SigLIP / LLaVA, longest_edge for Idefics3) keeps the aspect ratio; {height, width} is exact."""
    if edge in size and (edge == "longest_edge" or set(size) == {edge}):
        return dict(resize=edge, edge=int(size[edge]))
    if {"height", "width"} <= set(size):
        return dict(resize="exact", height=int(size["height"]), width=int(size["width"]))
    raise CheckpointError(f"{source}: image processor size={size} is not supported; supported: "
                          f"{{{edge}}} or {{height, width}}")


def _generic_processor(p: dict, source: str) -> ImageProcessorConfig:
    """CLIP / SigLIP / LLaVA image processors: transformers' PilBackend steps."""
    out = dict(pad_to_square=bool(p.get("do_pad", False)), resample=_resample(p["resample"], source))
    if not p["do_resize"]:
        out["resize"] = "none"
    else:
        out.update(_resize(_size(p["size"], "size", source, square=p.get("default_to_square", True)),
                           "shortest_edge", source))
    if p.get("do_center_crop"):
        crop = _size(p["crop_size"], "crop_size", source)
        out.update(crop_height=int(crop["height"]), crop_width=int(crop["width"]))
    return ImageProcessorConfig(**out, rescale_factor=float(p["rescale_factor"]) if p["do_rescale"] else None,
                                normalize=bool(p["do_normalize"]))


def _idefics3_processor(p: dict, source: str) -> ImageProcessorConfig:
    """Idefics3 / SmolVLM: resize the longest edge to size.longest_edge, then (no image splitting) to a square of
    max_image_size.longest_edge."""
    out: dict = dict(resample=_resample(p["resample"], source), image_splitting=bool(p["do_image_splitting"]),
                     square=int(_size(p["max_image_size"], "max_image_size", source)["longest_edge"]))
    if p["do_resize"]:
        out.update(_resize(_size(p["size"], "size", source), "longest_edge", source))
    else:
        out["resize"] = "none"
    return ImageProcessorConfig(**out, rescale_factor=float(p["rescale_factor"]) if p["do_rescale"] else None,
                                normalize=bool(p["do_normalize"]))


def _qwen2_vl_processor(p: dict, source: str) -> ImageProcessorConfig:
    """Qwen2-VL / Qwen2.5-VL: smart_resize within [min_pixels, max_pixels] (transformers 5: size's shortest_edge /
    longest_edge; the Hub's 4.x files: min_pixels / max_pixels), sides multiples of patch_size * merge_size."""
    if not p["do_resize"]:
        raise CheckpointError(f"{source}: do_resize=false is not supported (vlkit sizes Qwen2-VL images by smart_resize)")
    size = _size(p["size"], "size", source)
    lo, hi = p.get("min_pixels") or size.get("shortest_edge"), p.get("max_pixels") or size.get("longest_edge")
    if not lo or not hi:
        raise CheckpointError(f"{source}: size={size} needs shortest_edge and longest_edge (min and max pixels)")
    return ImageProcessorConfig(resample=_resample(p["resample"], source), min_pixels=int(lo), max_pixels=int(hi),
                                merge_size=int(p["merge_size"]), normalize=bool(p["do_normalize"]),
                                rescale_factor=float(p["rescale_factor"]) if p["do_rescale"] else None)


# transformers' image_processor_type -> how vlkit reproduces it (the registry is the list of what is supported)
IMAGE_PROCESSORS: dict[str, ImageProcessorFormat] = {
    "CLIPImageProcessor": ImageProcessorFormat(_CLIP, _generic_processor),
    "LlavaImageProcessor": ImageProcessorFormat(_CLIP, _generic_processor),
    "SiglipImageProcessor": ImageProcessorFormat(_SIGLIP, _generic_processor),
    "Idefics3ImageProcessor": ImageProcessorFormat(_IDEFICS3, _idefics3_processor),
    "SmolVLMImageProcessor": ImageProcessorFormat(_IDEFICS3, _idefics3_processor),
    "Qwen2VLImageProcessor": ImageProcessorFormat(_QWEN2_VL, _qwen2_vl_processor),
}


def read_image_processor(path: str | Path) -> dict:
    """The checkpoint's image-processor settings: transformers 5 writes them as `image_processor` in
    processor_config.json, transformers 4 as preprocessor_config.json; {} when there are none."""
    path = Path(path)
    if (path / "processor_config.json").is_file():
        section = read_json(path / "processor_config.json").get("image_processor")
        if isinstance(section, dict):
            return section
    p = path / "preprocessor_config.json"
    return read_json(p) if p.is_file() else {}


def image_processor_from_hf(pre: dict, tower_size: int, clip: bool, source: str = "the image processor"):
    """HF image-processor settings -> (ImageProcessorConfig, mean, std). Without settings: a resize to the
    tower's image size with the tower's usual mean/std (CLIP's or 0.5)."""
    if not pre:
        mean, std = (CLIP_MEAN, CLIP_STD) if clip else ((0.5,) * 3, (0.5,) * 3)
        return ImageProcessorConfig(height=tower_size, width=tower_size), mean, std
    kind = pre.get("image_processor_type") or ("CLIPImageProcessor" if clip else "SiglipImageProcessor")
    kind = kind[:-4] if kind.endswith("Fast") else kind  # the fast (torchvision) classes share the settings
    kind = kind[:-3] if kind.endswith("Pil") else kind  # transformers 5's PIL backends likewise
    if kind not in IMAGE_PROCESSORS:
        raise CheckpointError(f"{source}: image_processor_type {kind!r} is not supported; supported: "
                              f"{sorted(IMAGE_PROCESSORS)}")
    fmt = IMAGE_PROCESSORS[kind]
    p = {**fmt.defaults, **{k: v for k, v in pre.items() if v is not None}}
    try:
        cfg = fmt.translate(p, source)
        cfg.validate()
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} ({kind}) cannot be used: {exc}") from None
    return cfg, _per_channel(p["image_mean"]), _per_channel(p["image_std"])


def _per_channel(value: Any) -> tuple[float, ...]:
    """One number for all three channels, or one per channel."""
    return tuple(float(x) for x in ([value] * 3 if isinstance(value, (int, float)) else value))

