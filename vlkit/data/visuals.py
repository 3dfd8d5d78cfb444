"""A sample's images and video clips -> the tower's uint8 inputs in sequence order, with each slot's token count.

The model fills a sequence's image-pad (video-pad) positions with image (clip) embeddings in order, so the tensors
must follow the placeholders as the text holds them (vlkit.chat.media_order). With a model that has a video token
(`ChatProcessor.video_clips`) a `<video>` is one (T, 3, H, W) tensor and its slot holds `tokens_per_clip(T, H, W)`
video pads; otherwise (checkpoints from before `<|video_pad|>`) it is its frames, each encoded by the image path,
and its slot holds the sum of its frames' image tokens (vlkit/chat.py: one vision block per clip).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from vlkit.chat import in_sequence_order, normalize_messages
from vlkit.config.video import VideoConfig
from vlkit.data.sources import load_sample_images, load_sample_videos
from vlkit.errors import UserError
from vlkit.images import ImageProcessor
from vlkit.video import stack_frames

ClipTokens = Callable[[int, int, int], int]  # (frames, height, width) -> LM tokens (VisionLanguageModel.tokens_per_clip)


@dataclass
class Visuals:
    pixels: list[torch.Tensor]  # uint8 (3, H, W) images and (T, 3, H, W) clips (or their frames) in sequence order
    tokens_per_image: list[int]  # N of each image, in image order
    tokens_per_video: list[int] = field(default_factory=list)  # N of each clip

    def encode_kwargs(self) -> dict:
        """Extra arguments of `processor.encode_sample`: none for a sample without videos, so processors that
        take no videos work as before."""
        return {"tokens_per_video": self.tokens_per_video} if self.tokens_per_video else {}


def sample_visuals(sample: dict, processor, image_processor: ImageProcessor,
                   tokens_per_image: Callable[[int, int], int], video: Optional[VideoConfig] = None,
                   tokens_per_clip: Optional[ClipTokens] = None) -> Visuals:
    """`tokens_per_clip` is needed when the processor takes clips whole (`video_clips`)."""
    images = [image_processor.pixels(im) for im in load_sample_images(sample)]
    n_img = [tokens_per_image(int(im.shape[1]), int(im.shape[2])) for im in images]
    if not sample.get("videos") and not sample.get("video_objects"):
        return Visuals(images, n_img)
    if not getattr(processor, "takes_videos", False):
        raise UserError(f"sample {sample.get('id', '?')} has videos, which this checkpoint's chat template "
                        f"({type(processor).__name__}) cannot take (vlkit's ChatML and Qwen2-VL's can)")
    frames = [[image_processor.pixels(f) for f in clip] for clip in load_sample_videos(sample, video)]
    turns, _ = normalize_messages(sample["conversations"])
    if not processor.video_clips:
        n_vid = [sum(tokens_per_image(int(f.shape[1]), int(f.shape[2])) for f in clip) for clip in frames]
        return Visuals(in_sequence_order(turns, images, frames), n_img, n_vid)
    if tokens_per_clip is None:
        raise ValueError("sample_visuals needs tokens_per_clip for a processor that takes clips whole")
    clips = [stack_frames(clip, f"video {k}") for k, clip in enumerate(frames)]
    n_vid = [tokens_per_clip(int(c.shape[0]), int(c.shape[2]), int(c.shape[3])) for c in clips]
    return Visuals(in_sequence_order(turns, images, [[c] for c in clips]), n_img, n_vid)
