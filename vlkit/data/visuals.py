"""A sample's images and video frames -> the tower's uint8 inputs in sequence order, with each slot's token count.

The model fills a sequence's image-pad positions with image embeddings in order, so the tensors must follow the
placeholders as the text holds them (vlkit.chat.media_order). A `<video>` is its frames, each encoded by the image
path, so its slot holds the sum of its frames' image tokens (vlkit/chat.py: one vision block per clip).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from vlkit.chat import ChatProcessor, in_sequence_order, normalize_messages
from vlkit.config.video import VideoConfig
from vlkit.data.sources import load_sample_images, load_sample_videos
from vlkit.errors import UserError
from vlkit.images import ImageProcessor


@dataclass
class Visuals:
    pixels: list[torch.Tensor]  # uint8 (3, H, W): images and video frames in sequence order
    tokens_per_image: list[int]  # N of each image, in image order
    tokens_per_video: list[int] = field(default_factory=list)  # N of each clip (its frames' tokens summed)

    def encode_kwargs(self) -> dict:
        """Extra arguments of `processor.encode_sample`: none for a sample without videos, so processors that
        take no videos (Hugging Face chat templates) work as before."""
        return {"tokens_per_video": self.tokens_per_video} if self.tokens_per_video else {}


def sample_visuals(sample: dict, processor, image_processor: ImageProcessor,
                   tokens_per_image: Callable[[int, int], int], video: Optional[VideoConfig] = None) -> Visuals:
    images = [image_processor.pixels(im) for im in load_sample_images(sample)]
    n_img = [tokens_per_image(int(im.shape[1]), int(im.shape[2])) for im in images]
    if not sample.get("videos") and not sample.get("video_objects"):
        return Visuals(images, n_img)
    if not isinstance(processor, ChatProcessor):
        raise UserError(f"sample {sample.get('id', '?')} has videos, which this checkpoint's chat template "
                        f"({type(processor).__name__}) cannot take; vlkit's ChatML processor can")
    clips = [[image_processor.pixels(f) for f in frames] for frames in load_sample_videos(sample, video)]
    n_vid = [sum(tokens_per_image(int(f.shape[1]), int(f.shape[2])) for f in clip) for clip in clips]
    turns, _ = normalize_messages(sample["conversations"])
    return Visuals(in_sequence_order(turns, images, clips), n_img, n_vid)
