"""Edge-aware refinement of NTP-M masks (vlkit.infer.segment): patch labels -> boundaries that follow the image."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlkit.data.collate import patch_classes
from vlkit.errors import UserError
from vlkit.infer.segment import refine_probs, scores_to_mask


def _scene():
    """A red disc and a white square on a dark noisy background, both off the 8-px patch grid; the true mask."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 40, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    for draw, fill in ((ImageDraw.Draw(img), None), (ImageDraw.Draw(mask), 1)):
        draw.ellipse((5, 9, 29, 33), fill=fill or (220, 40, 40))
    for draw, fill in ((ImageDraw.Draw(img), None), (ImageDraw.Draw(mask), 2)):
        draw.rectangle((37, 35, 58, 54), fill=fill or (245, 245, 245))
    return img, np.array(mask)


def _patch_scores(mask, grid, classes=3):
    """What a perfectly trained NTP-M head scores: +6 on each patch's classes (>= 20% or majority), -6 elsewhere."""
    scores = torch.full((grid * grid, classes), -6.0)
    for n, present in enumerate(patch_classes(mask, grid)):
        scores[n, present] = 6.0
    return scores


def _iou(pred, gt, k):
    return ((pred == k) & (gt == k)).sum() / ((pred == k) | (gt == k)).sum()


@pytest.mark.parametrize("grid", [8, 16])
def test_refinement_follows_object_boundaries_inside_patches(grid):
    img, gt = _scene()
    scores = _patch_scores(gt, grid)
    plain = scores_to_mask(scores, gt.shape)
    refined = scores_to_mask(scores, gt.shape, img)
    for k in (1, 2):
        assert _iou(refined, gt, k) > 0.97
        assert _iou(refined, gt, k) > _iou(plain, gt, k) + 0.03
    assert set(np.unique(refined)) == {0, 1, 2}


def test_refinement_keeps_flat_regions_and_only_mixes_candidates():
    # one colour everywhere: the filter is a plain blur, so a confident 2-class split keeps its majority labels
    probs = torch.zeros(2, 16, 16)
    probs[0, :, :8], probs[1, :, 8:] = 1.0, 1.0
    out = refine_probs(probs, np.full((16, 16, 3), 100, np.uint8), sigma_space=2.0)
    assert torch.allclose(out.sum(0), torch.ones(16, 16))  # a convex mix of the input probabilities
    assert (out.argmax(0)[:, :8] == 0).all() and (out.argmax(0)[:, 8:] == 1).all()
    # a large image is refined at a capped working size and the mask still has the image's size
    img, gt = _scene()
    big = scores_to_mask(_patch_scores(gt, 8), (256, 256), img.resize((256, 256)))
    assert big.shape == (256, 256) and set(np.unique(big)) <= {0, 1, 2}
    with pytest.raises(UserError, match="differ in size"):
        refine_probs(probs, np.zeros((8, 8, 3), np.uint8), sigma_space=2.0)
