"""How a video clip becomes frames (vlkit.video): sampling rate, frame and pixel budgets, decoding limits.

The defaults follow Qwen2-VL's video input (2 frames per second); `temporal_patch_size: 2` makes the frame count
even, as a temporal-patch encoder that embeds frames in pairs needs (the last frame is repeated).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlkit.config.base import _Checked, non_negative, positive, ranged

MAX_VIDEO_BYTES = 256 * 1024 * 1024  # an encoded video file larger than this is refused before decoding


@dataclass
class VideoConfig(_Checked):
    fps: float = positive(2.0)  # frames sampled per second of a video file (frame lists are taken as given)
    max_frames: int = ranged(32, 1)  # at most this many frames per clip (sampled evenly over the clip)
    # frames x height x width of a clip is kept under this by resizing its frames down (aspect kept); 0: off
    max_total_pixels: int = non_negative(16 * 1024 * 1024)
    temporal_patch_size: Literal[1, 2] = 1  # 2: an even number of frames (the last one repeated)
    max_bytes: int = ranged(MAX_VIDEO_BYTES, 1)  # an encoded video larger than this is an error
    max_decoded_frames: int = ranged(100_000, 1)  # a file with more frames than this is an error (time bound)
