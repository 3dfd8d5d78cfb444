"""Tiny video clips for tests: frame k shows a white square at x = 8 k on black, so a frame's index can be read
back from its pixels even after lossy coding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SQUARE = 8


def frame(k: int, width: int = 128, height: int = 32) -> Image.Image:
    a = np.zeros((height, width, 3), np.uint8)
    a[8:8 + SQUARE, SQUARE * k:SQUARE * (k + 1)] = 255
    return Image.fromarray(a, "RGB")


def frame_index(img: Image.Image) -> int:
    """Which `frame(k)` this is (the column of its brightest square), at any size."""
    a = np.asarray(img.convert("L"), dtype=np.float32)
    cols = a.sum(0)
    x = float((cols * np.arange(len(cols))).sum() / cols.sum())  # the square's centre column
    return int(x / a.shape[1] * 128 / SQUARE)


def write_clip(path: Path, n: int = 12, fps: int = 6, codec: str = "mpeg4", width: int = 128,
               height: int = 32) -> Path:
    """An n-frame clip at `fps` (mp4: mpeg4 or libx264; webm: libvpx)."""
    import pytest

    av = pytest.importorskip("av")  # the `video` extra (in dev)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(n):
            for packet in stream.encode(av.VideoFrame.from_image(frame(k, width, height))):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
