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


def test_native_resolution_batches_keep_each_image_size(tokenizer):
    """Images of different sizes (native resolution) batch as a list; padded and packed batches give the model
    (rope2d encoder, M-RoPE LM) the same loss."""
    from PIL import Image

    from vlkit.chat import ChatProcessor
    from vlkit.config import ImageProcessorConfig, TextConfig, VisionConfig, tiny_model_config
    from vlkit.data.collate import encode_samples
    from vlkit.images import ImageProcessor
    from vlkit.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    vision = VisionConfig(position="rope2d", processor=ImageProcessorConfig(min_pixels=16 * 16, max_pixels=48 * 48,
                                                                            merge_size=2))
    cfg = tiny_model_config("spatial_merge", vision=vision, text=TextConfig(vocab_size=len(tokenizer), rope="mrope"))
    cfg.image_token_id = tokenizer.image_pad_id
    model = VisionLanguageModel(cfg).eval()
    rng = torch.Generator().manual_seed(0)

    def picture(w, h):
        return Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=rng, dtype=torch.uint8).numpy())

    def sample(i, pictures):
        return {"id": str(i), "image_objects": pictures,
                "conversations": [{"from": "human", "value": "<image>\n" * len(pictures) + "What?"},
                                  {"from": "gpt", "value": "red and blue"}]}

    samples = [sample(0, [picture(200, 70)]), sample(1, [picture(60, 180)]), sample(2, [picture(50, 50), picture(90, 40)])]
    examples = encode_samples(samples, ChatProcessor(tokenizer), 64, model.tokens_per_image, 512, strict=True,
                              image_processor=ImageProcessor.from_vision(cfg.vision))
    shapes = [tuple(im.shape[1:]) for ex in examples for im in ex.images]
    assert len(set(shapes)) == 4 and all(h % 16 == 0 and w % 16 == 0 for h, w in shapes)
    assert shapes[0][1] > shapes[0][0] and shapes[1][0] > shapes[1][1]  # wide stays wide, tall stays tall
    losses = []
    for packing in (False, True):
        batch = Collator(tokenizer.pad_id, cfg.vision.image_mean, cfg.vision.image_std, packing, 512)(examples)
        assert [tuple(im.shape[1:]) for im in batch.images] == shapes
        with torch.no_grad():
            losses.append(model(batch.input_ids, batch.images, **batch.model_inputs())["loss"])
    assert batch.input_ids.shape[0] == 1  # all three samples packed into one row
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
