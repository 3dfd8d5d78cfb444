"""Dense prediction with NTP-M (Youtu-VL): per image token, the LM head's scores of the candidate class-name
tokens; the per-class probability maps are upsampled bilinearly to the image and the highest class wins.

Edge-aware refinement (`refine=True`, the default). One label per image token cannot follow a boundary that cuts
through a patch. `refine_probs` therefore smooths the upsampled probabilities with a joint bilateral filter
guided by the image: a pixel averages the class probabilities of nearby pixels (about one patch) that have a
similar colour. This is the mean-field step of a dense CRF with only its appearance kernel (as in DeepLab's CRF
post-processing). Pixels on the object side of a boundary then take the object's label from the object's interior,
and pixels on the background side take the background's. It only mixes the candidates' probabilities, so the
mask still holds requested classes only.

`segment` (a model, its prompt processor and tokenizer, an image) is what `Pipeline.segment` runs; `save_mask` writes the mask PNG and a colour overlay for the CLI.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlkit.chat import class_token_ids
from vlkit.errors import UserError
from vlkit.images import ImageLike, ImageProcessor, load_image
from vlkit.tokenizer import Tokenizer

BACKGROUND = "background"
SEGMENT_PROMPT = "Segment the image. Classes: {}."  # the synthetic world's segmentation instruction

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], dtype=np.uint8)


def candidate_names(classes: Sequence[str]) -> list[str]:
    """The names scored per patch: `classes`, with "background" put first when the caller left it out."""
    if isinstance(classes, str) or not classes:
        raise UserError("segment needs a non-empty list of class names, e.g. classes=['circle', 'square']")
    names = [str(c).strip() for c in classes]
    if len(set(names)) != len(names):
        raise UserError(f"class names must be distinct, got {names}")
    return names if BACKGROUND in names else [BACKGROUND] + names


@torch.no_grad()
def segment(model, processor, tokenizer: Tokenizer, image: ImageLike, classes: Sequence[str],
            refine: bool = True) -> np.ndarray:
    """-> uint8 mask (H, W) at the image's size. `model`: a VisionLanguageModel trained with NTP-M;
    `processor`: its prompt encoder (a ChatProcessor or an HF model's); `tokenizer`: the class names' tokens.
    Values index `classes` when it contains "background"; otherwise 0 is background and k is classes[k - 1].
    Only the requested classes can be predicted. `refine`: edge-aware refinement of the upsampled
    probabilities, guided by the image (see the module doc)."""
    names = candidate_names(classes)
    img = load_image(image)
    device = next(model.parameters()).device
    pixels = ImageProcessor.from_vision(model.cfg.vision)(img).to(device)
    prompt = SEGMENT_PROMPT.format(", ".join(n for n in names if n != BACKGROUND))
    ids = processor.encode_prompt(prompt, 1, [model.tokens_per_image(pixels.shape[1], pixels.shape[2])])
    scores = model.patch_scores(torch.tensor([ids], device=device), [pixels], class_token_ids(tokenizer, names))
    return scores_to_mask(scores, (img.height, img.width), img if refine else None)


def scores_to_mask(scores: torch.Tensor, size: tuple[int, int], guide: Image.Image | None = None) -> np.ndarray:
    """Per-patch class logits (N, C) on a square grid -> uint8 mask of `size` (H, W): bilinear upsampling of the
    class probabilities, `refine_probs` guided by the image `guide` when given, then argmax."""
    n, c = scores.shape
    g = math.isqrt(n)
    if g * g != n:
        raise UserError(f"{n} image tokens do not form a square grid")
    probs = scores.float().sigmoid().T.reshape(1, c, g, g).cpu()
    if guide is None:
        up = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[0]
    else:
        # refine at a working resolution of at most REFINE_SIDE px, then upsample the refined probabilities
        scale = min(1.0, REFINE_SIDE / max(size))
        work = (max(g, round(size[0] * scale)), max(g, round(size[1] * scale)))
        up = F.interpolate(probs, size=work, mode="bilinear", align_corners=False)[0]
        rgb = guide.convert("RGB").resize((work[1], work[0]), Image.BILINEAR)
        up = refine_probs(up, np.asarray(rgb), sigma_space=min(REFINE_SIGMA_SPACE, max(work) / g))
        if work != tuple(size):
            up = F.interpolate(up[None], size=size, mode="bilinear", align_corners=False)[0]
    return up.argmax(0).to(torch.uint8).numpy()


REFINE_SIDE = 128  # refinement works at this many pixels along the longer side, at most
REFINE_SIGMA_SPACE = 4.0  # px at the working resolution: one patch, at most 4 px (the cost grows with its square)
REFINE_SIGMA_COLOR = 20.0  # RGB distance (0..255) at which a neighbour's weight falls to exp(-1/2)
REFINE_STEPS = 2


def refine_probs(probs: torch.Tensor, rgb: np.ndarray, sigma_space: float,
                 sigma_color: float = REFINE_SIGMA_COLOR, steps: int = REFINE_STEPS) -> torch.Tensor:
    """Joint bilateral filtering of class probabilities (C, H, W) guided by an image (H, W, 3 uint8): each step,
    every pixel becomes the average of its neighbours within 2 `sigma_space` px, weighted by
    exp(-d^2 / 2 sigma_space^2) * exp(-|rgb_p - rgb_q|^2 / 2 sigma_color^2)."""
    c, h, w = probs.shape
    if rgb.shape[:2] != (h, w):
        raise UserError(f"refine_probs: guide image {rgb.shape[:2]} and probabilities {(h, w)} differ in size")
    r = max(1, math.ceil(2 * sigma_space))
    img = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    img_pad = F.pad(img[None], (r, r, r, r), mode="replicate")[0]
    # the weights depend on the image only: compute them once for all steps
    weights = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            near = math.exp(-(dx * dx + dy * dy) / (2 * sigma_space ** 2))
            diff = img_pad[:, r + dy:r + dy + h, r + dx:r + dx + w] - img
            weights.append((dy, dx, near * torch.exp(-(diff * diff).sum(0) / (2 * sigma_color ** 2))))
    total = sum(wt for _, _, wt in weights)
    for _ in range(steps):
        pad = F.pad(probs[None], (r, r, r, r), mode="replicate")[0]
        acc = torch.zeros_like(probs)
        for dy, dx, wt in weights:
            acc += wt * pad[:, r + dy:r + dy + h, r + dx:r + dx + w]
        probs = acc / total
    return probs


def colorize(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(PALETTE[np.asarray(mask) % len(PALETTE)], "RGB")


def save_mask(mask: np.ndarray, image: ImageLike, classes: Sequence[str], output: str | Path) -> tuple[Path, Path]:
    """Writes `output` (the mask: one uint8 class index per pixel, see `segment`) and `<stem>_overlay.png`
    (the image with the classes in colour at 50%). Prints the legend. Returns both paths."""
    output = Path(output)
    mask = np.asarray(mask).astype(np.uint8)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask, "L").save(output)
    base = load_image(image).convert("RGB").resize((mask.shape[1], mask.shape[0]))
    overlay = Image.blend(base, colorize(mask), 0.5)
    over = output.with_name(output.stem + "_overlay.png")
    overlay.save(over)
    names = candidate_names(classes)
    present = sorted(int(v) for v in np.unique(mask))
    legend = ", ".join(f"{v}={names[v]} {tuple(PALETTE[v % len(PALETTE)])}" for v in present if v < len(names))
    print(f"wrote {output} (values: {legend}) and {over}")
    return output, over
