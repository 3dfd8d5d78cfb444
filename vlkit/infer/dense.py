"""Dense prediction with NTP-M (Youtu-VL): per image token, the LM head's scores of the candidate class-name
tokens; the per-class probability maps are upsampled bilinearly to the image and the highest class wins.

`segment` is what `Pipeline.segment` runs; `save_mask` writes the mask PNG and a colour overlay for the CLI.
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
from vlkit.images import ImageLike, load_image

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
def segment(pipe, image: ImageLike, classes: Sequence[str]) -> np.ndarray:
    """-> uint8 mask (H, W) at the image's size. Values index `classes` when it contains "background";
    otherwise 0 is background and k is classes[k - 1]. Only the requested classes can be predicted."""
    names = candidate_names(classes)
    img = load_image(image)
    pixels = pipe.image_tensor(img)
    prompt = SEGMENT_PROMPT.format(", ".join(n for n in names if n != BACKGROUND))
    ids = torch.tensor([pipe.prompt_ids(prompt, [pixels])], device=pipe.device)
    model = pipe.model
    hidden = model.language(model.embed(ids, [pixels.to(pipe.device)]))[0]
    at = ids[0] == model.cfg.image_token_id
    tokens = torch.tensor(class_token_ids(pipe.tokenizer, names), device=pipe.device)
    scores = model.logits(hidden[at]).float()[:, tokens]  # (N, C): only the candidates are ever compared
    return scores_to_mask(scores, (img.height, img.width))


def scores_to_mask(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Per-patch class logits (N, C) on a square grid -> uint8 mask of `size` (H, W) by bilinear upsampling of
    the class probabilities and argmax."""
    n, c = scores.shape
    g = math.isqrt(n)
    if g * g != n:
        raise UserError(f"{n} image tokens do not form a square grid")
    probs = scores.sigmoid().T.reshape(1, c, g, g)
    up = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[0]
    return up.argmax(0).to(torch.uint8).cpu().numpy()


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
