"""Video clips -> lists of RGB frames (PIL images), sampled and bounded as `vlkit.config.video.VideoConfig` says.

A clip is a video file (mp4, webm, ...; decoded with PyAV, which is imported only when a file is decoded: the
`video` extra), its encoded bytes, a folder of frame images, or a list of frames, each an image path, encoded image
bytes or a PIL image (these work without PyAV; tar shards and HF datasets give frames as bytes). Files are sampled at `fps` frames per second; when a clip would give more than `max_frames`
the sampling step grows so that the frames spread evenly over the whole clip. Frame lists are taken as given
(already sampled) and thinned evenly to `max_frames`. Then `temporal_patch_size: 2` makes the count even (the last
frame repeated, as Qwen2-VL) and frames are resized down together, aspect kept, so that
frames x height x width <= `max_total_pixels`.

Decoding is as careful as images' (vlkit.images): the file size and every frame's size are checked before pixels
are decoded, and each failure is a `VideoError` (an `ImageError`, so every place that reports a bad image reports
a bad video the same way) naming the problem.
"""
from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

from PIL import Image

from vlkit.config.video import VideoConfig

if TYPE_CHECKING:
    import torch
from vlkit.images import MAX_PIXELS, RESAMPLE, ImageError, decode_bytes, load_image, to_rgb

FRAME_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # files of a folder of frames
VideoLike = Union[str, os.PathLike, bytes, Sequence[Union[str, os.PathLike, bytes, Image.Image]]]


class VideoError(ImageError):
    """A video a user supplied cannot be used; the message says why."""


def load_video(src: VideoLike, cfg: VideoConfig | None = None, what: str = "video") -> list[Image.Image]:
    """A clip (see the module docstring) -> its sampled, bounded RGB frames."""
    cfg = cfg or VideoConfig()
    if isinstance(src, (bytes, bytearray)):
        frames = decode_video_bytes(bytes(src), cfg, what)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_dir():
            frames = load_frames(thin(frame_files(path), cfg.max_frames), f"{what} {path}")
        elif path.is_file():
            frames = decode_video_file(path, cfg, f"{what} {path}")
        else:
            raise VideoError(f"{what} {path} does not exist")
    elif isinstance(src, (list, tuple)):
        if not src:
            raise VideoError(f"{what} has no frames")
        frames = load_frames(thin(list(src), cfg.max_frames), what)  # only the kept frames are decoded
    else:
        raise VideoError(f"{what} must be a video file path, its bytes, a folder of frames or a list of frames; "
                         f"got {type(src).__name__}")
    return fit_budget(even_frames(frames, cfg.temporal_patch_size), cfg.max_total_pixels)


def clip_frames(src: Union[bytes, Sequence], what: str = "video", cfg: VideoConfig | None = None) -> list[Image.Image]:
    """A clip held as data (tar shards, HF datasets) -> its frames as a reader gives them: every frame of a frame
    list (encoded image bytes or PIL images; at most `max_decoded_frames`), or a video file's bytes sampled at
    `fps` up to `max_frames` (`cfg`, default `VideoConfig()`). Not evened or resized: `load_video` does that when
    the sample is encoded. Errors are `VideoError`s naming `what`."""
    cfg = cfg or VideoConfig()
    if isinstance(src, (bytes, bytearray)):
        return decode_video_bytes(bytes(src), cfg, what)
    if not isinstance(src, (list, tuple)):
        raise VideoError(f"{what} must be a video file's bytes or a list of frames, got {type(src).__name__}")
    if len(src) > cfg.max_decoded_frames:
        raise VideoError(f"{what} has {len(src)} frames, more than max_decoded_frames={cfg.max_decoded_frames}")
    return load_frames(src, what)


def stack_frames(frames: Sequence["torch.Tensor"], what: str = "video") -> "torch.Tensor":
    """A clip's processed frames, each (3, H, W) -> the model's clip input (T, 3, H, W). The frames of a clip share
    one size (a video's do; a list of frames of different sizes is a `VideoError`)."""
    import torch

    if not frames:
        raise VideoError(f"{what} has no frames")
    sizes = sorted({tuple(f.shape[-2:]) for f in frames})
    if len(sizes) > 1:
        raise VideoError(f"the frames of {what} have different sizes after processing ({sizes[0]} and {sizes[-1]}, "
                         "as H x W); a clip's frames must share one size")
    return torch.stack(list(frames))


def frame_files(folder: Path) -> list[Path]:
    """The image files of a folder of frames, in natural order (frame_2 before frame_10)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTS]
    if not files:
        raise VideoError(f"video folder {folder} holds no frame images ({', '.join(FRAME_EXTS)})")
    return sorted(files, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)])


def load_frames(frames: Sequence, what: str) -> list[Image.Image]:
    """Frames (image paths, encoded image bytes or PIL images) -> RGB images; a frame that cannot be read is a
    `VideoError` naming the clip and the frame."""
    if not frames:
        raise VideoError(f"{what} has no frames")
    out = []
    for k, f in enumerate(frames):
        try:
            if isinstance(f, Image.Image):
                out.append(to_rgb(f))
            elif isinstance(f, (str, os.PathLike)):
                out.append(load_image(f))
            elif isinstance(f, (bytes, bytearray)):
                out.append(decode_bytes(bytes(f), what=f"frame {k}"))
            else:
                raise VideoError(f"{what}: frame {k} must be an image path, image bytes or a PIL image, got "
                                 f"{type(f).__name__}")
        except VideoError:
            raise
        except ImageError as exc:
            raise VideoError(f"{what}: {exc}") from None
    return out


def thin(frames: list, max_frames: int) -> list:
    """At most `max_frames` of `frames`, evenly spread from the first one."""
    if len(frames) <= max_frames:
        return frames
    step = len(frames) / max_frames
    return [frames[int(k * step)] for k in range(max_frames)]


def even_frames(frames: list[Image.Image], temporal_patch_size: int) -> list[Image.Image]:
    """Repeat the last frame until the count is a multiple of `temporal_patch_size`."""
    while len(frames) % temporal_patch_size:
        frames = frames + [frames[-1].copy()]
    return frames


def fit_budget(frames: list[Image.Image], max_total_pixels: int) -> list[Image.Image]:
    """Frames resized down together (aspect kept, bicubic) so that frames x pixels <= `max_total_pixels` (0: off)."""
    w, h = frames[0].size
    total = len(frames) * w * h
    if not max_total_pixels or total <= max_total_pixels:
        return frames
    if len(frames) > max_total_pixels:
        raise VideoError(f"{len(frames)} frames cannot fit max_total_pixels={max_total_pixels} even at one pixel "
                         f"each; raise the budget or lower max_frames")
    scale = math.sqrt(max_total_pixels / total)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return [f.resize(size, RESAMPLE["bicubic"]) if f.size != size else f for f in frames]


# --- video files (PyAV) ----------------------------------------------------------------------------------------

def _av():
    try:
        import av
    except ImportError:
        raise VideoError("decoding video files needs PyAV: pip install 'vlkit[video]' (or pip install av); "
                         "a clip given as a folder or list of frame images works without it") from None
    return av


def decode_video_file(path: Path, cfg: VideoConfig, what: str) -> list[Image.Image]:
    size = path.stat().st_size
    if size > cfg.max_bytes:
        raise VideoError(f"{what} is {size} bytes; the limit is {cfg.max_bytes}")
    return decode_video_bytes(path.read_bytes(), cfg, what)


def decode_video_bytes(data: bytes, cfg: VideoConfig | None = None, what: str = "video") -> list[Image.Image]:
    """Encoded video bytes -> sampled RGB frames (before `even_frames` / `fit_budget`)."""
    cfg = cfg or VideoConfig()
    if not data:
        raise VideoError(f"{what} is empty (0 bytes)")
    if len(data) > cfg.max_bytes:
        raise VideoError(f"{what} is {len(data)} bytes; the limit is {cfg.max_bytes}")
    av = _av()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"{what} has no video stream")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > MAX_PIXELS:
                raise VideoError(f"{what} frames are {w}x{h} = {w * h} pixels; the limit is {MAX_PIXELS}")
            frames = _sample(container, stream, cfg, what)
    except ImageError:
        raise
    except Exception as exc:  # PyAV raises FFmpegError subclasses (and a few others) for bad data and codecs
        raise VideoError(f"{what} cannot be decoded ({type(exc).__name__}: {exc}); is it corrupt, truncated or "
                         f"in a codec this FFmpeg build lacks?") from None
    if not frames:
        raise VideoError(f"{what} has no decodable frames")
    return frames


def _duration(container, stream) -> float:
    """The clip's length in seconds from the headers; 0 when they do not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else 0.0


def _sample(container, stream, cfg: VideoConfig, what: str) -> list[Image.Image]:
    """One pass over the frames, keeping the first frame at or after each sampling time (0, step, 2 step, ...).
    When more than `max_frames` are kept (the headers gave no duration, or understated it) every other one is
    dropped and the step doubled, so memory stays bounded by the frame budget."""
    duration = _duration(container, stream)
    step = max(1.0 / cfg.fps, duration / cfg.max_frames if duration else 0.0)
    kept: list[Image.Image] = []
    next_t = 0.0
    for n, frame in enumerate(container.decode(stream)):
        if n >= cfg.max_decoded_frames:
            raise VideoError(f"{what} has more than max_decoded_frames={cfg.max_decoded_frames} frames")
        if frame.width * frame.height > MAX_PIXELS:
            raise VideoError(f"{what} frame {n} is {frame.width}x{frame.height} pixels; the limit is {MAX_PIXELS}")
        t = float(frame.time) if frame.time is not None else n / float(stream.average_rate or cfg.fps)
        if t + 1e-6 < next_t:
            continue
        kept.append(frame.to_image().convert("RGB"))
        next_t = (math.floor(t / step + 1e-6) + 1) * step
        if len(kept) > cfg.max_frames:  # kept[k] sits near time k * step: keep the even k, at the doubled step
            step *= 2
            kept = kept[::2]
            next_t = (math.floor(t / step + 1e-6) + 1) * step
    return kept[:cfg.max_frames]
