"""Batches: padding and packing keep every example's tokens, labels and images; images are normalized by
vlkit.images (the one normalisation)."""
import torch

from vlkit.chat import IGNORE
from vlkit.data.collate import Collator, Example
from vlkit.images import normalize_pixels


def example(n: int, value: int, n_images: int = 1) -> Example:
    return Example(list(range(value, value + n)), [IGNORE] + list(range(value + 1, value + n)),
                   [torch.full((3, 4, 4), value, dtype=torch.uint8) for _ in range(n_images)])


def test_padding_and_images():
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    batch = Collator(pad_id=0, mean=mean, std=std)([example(3, 10), example(5, 50, 2)])
    assert batch.input_ids.tolist() == [[10, 11, 12, 0, 0], [50, 51, 52, 53, 54]]
    assert batch.labels[0].tolist() == [IGNORE, 11, 12, IGNORE, IGNORE] and batch.num_samples == 2
    assert len(batch.images) == 3
    for img, value in zip(batch.images, (10, 50, 50)):
        assert torch.equal(img, normalize_pixels(torch.full((3, 4, 4), value, dtype=torch.uint8), mean, std))


def test_packing_keeps_samples_apart():
    batch = Collator(pad_id=0, mean=(0.5,) * 3, std=(0.5,) * 3, packing=True, max_length=8)(
        [example(3, 10), example(4, 20), example(6, 30)])
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 0]]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert batch.labels[0, 3].item() == IGNORE  # a sample's first token is never predicted from the previous one
    mask = batch.attn_mask_4d[0, 0]
    assert not mask[3, 2] and mask[2, 0] and mask[6, 3] and not mask[2, 3]  # block-diagonal and causal
    assert torch.allclose(batch.images[0], torch.full((3, 4, 4), 10 / 127.5 - 1), atol=1e-6)
