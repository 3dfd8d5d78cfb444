"""The shared sample normalisation every format reader goes through (`Reader`).

`Reader.normalize` checks a raw sample's structure and brings it to vlkit's convention: `id`, `images` (a list
of image references in placeholder order; LLaVA's `image` becomes `images`), `videos` (clips in `<video>`
placeholder order: a video file or frame folder path, or a list of frame paths), `conversations` ({from, value};
`messages` are converted, see messages.py) and the sample's other keys. `resolve` makes a JSON(L) sample's
image and video paths absolute and checks the files; `decode` / `attach` turn image and clip data (tar and HF sources)
into pixels (or keep the bytes, for the streaming index). A bad sample is skipped and counted (`skip`), or raises
`DataError` under `strict`.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from PIL import Image

from vlkit.chat import ROLES
from vlkit.data.sources.base import CAPTION_PROMPT, DataError, DataWarning, ReadStats, is_image_ref, png_bytes
from vlkit.data.sources.messages import from_messages
from vlkit.images import ImageError, decode_bytes
from vlkit.tokenizer import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from vlkit.video import VideoError, clip_frames

ClipData = Union[bytes, list]  # a clip held as data: a video file's bytes, or its frames' encoded bytes


class Reader:
    """One read's settings and counts; format modules call it for every sample they find."""

    def __init__(self, strict: bool, stats: ReadStats, check_images: bool, image_folder: Optional[Path] = None,
                 caption_prompt: str = CAPTION_PROMPT, decode_images: bool = True):
        self.strict, self.stats, self.check_images = strict, stats, check_images
        self.image_folder, self.caption_prompt, self.decode_images = image_folder, caption_prompt, decode_images

    def skip(self, reason: str, where: str, detail: str) -> None:
        msg = f"{where}: skipped sample ({reason}): {detail}"
        if self.strict:
            raise DataError(msg)
        self.stats.skipped[reason] += 1
        if len(self.stats.messages) < self.stats.max_messages:
            self.stats.messages.append(msg)
            warnings.warn(msg, DataWarning, stacklevel=2)

    def bad_file(self, path: Path, error: BaseException, n_read: int) -> None:
        msg = (f"{path} cannot be read to its end ({type(error).__name__}: {error}); {n_read} samples were read "
               f"from it before, the rest is lost")
        if self.strict:
            raise DataError(msg)
        self.stats.skipped["corrupt_file"] += 1
        self.stats.bad_files.append(msg)
        warnings.warn(msg, DataWarning, stacklevel=2)

    # --- one sample's structure ---------------------------------------------------------------------------

    def normalize(self, obj: Any, where: str, default_id: str) -> Optional[dict]:
        """Check the structure: `conversations` ({from, value}) or `messages` ({role, content}) become
        `conversations`; `image`/`images` become `images`, a list of image references (a path, bytes, a
        {bytes, path} dict or a PIL image) in placeholder order. None (after counting) when the sample is bad."""
        if not isinstance(obj, dict):
            self.skip("malformed_sample", where, f"a sample must be a JSON object, got {type(obj).__name__}")
            return None
        got = from_messages(self, obj, where) if "conversations" not in obj and "messages" in obj else \
            self.conversations(obj, where)
        if got is None:
            return None
        conv, images = got
        videos = self.video_list(obj, conv, where)
        if videos is None:
            return None
        meta = obj.get("meta")
        if meta is not None and not isinstance(meta, dict):
            self.skip("malformed_sample", where, "`meta` must be an object")
            return None
        sample = {"id": str(obj["id"]) if obj.get("id") is not None else default_id, "images": images,
                  "conversations": conv}
        if videos:
            sample["videos"] = videos
        for k, v in obj.items():
            if k not in ("id", "image", "images", "videos", "conversations", "messages"):
                sample[k] = v
        return sample

    def conversations(self, obj: dict, where: str) -> Optional[tuple[list, list]]:
        """A `conversations` sample -> (its turns, its image references), checked against each other."""
        conv = obj.get("conversations")
        if not isinstance(conv, list) or not conv:
            self.skip("malformed_sample", where, "`conversations` (or `messages`) must be a non-empty list")
            return None
        for turn in conv:
            if not (isinstance(turn, dict) and turn.get("from") in ROLES and isinstance(turn.get("value"), str)):
                self.skip("malformed_sample", where, f"each turn needs `from` in {list(ROLES)} and a string "
                          f"`value`, got {str(turn)[:80]}")
                return None
        images = self.image_list(obj, where)
        if images is None:
            return None
        n_tokens = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conv)
        if n_tokens != len(images):
            self.skip("image_placeholders", where,
                      f"{n_tokens} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
            return None
        return conv, images

    def image_list(self, obj: dict, where: str) -> Optional[list]:
        images = obj.get("images", obj.get("image"))
        if images is None:
            return []
        if not isinstance(images, list):
            images = [images]
        if not all(is_image_ref(im) for im in images):
            self.skip("malformed_sample", where, "`images` must be a list of image paths (or `image` one path)")
            return None
        return list(images)

    def video_list(self, obj: dict, conv: list, where: str) -> Optional[list]:
        """The sample's `videos` (each a path or a list of frame paths), checked against its `<video>`
        placeholders; None (after counting) when they are bad."""
        videos = obj.get("videos", [])
        if not isinstance(videos, list) or not all(
                isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(f, str) for f in v))
                for v in videos):
            self.skip("malformed_sample", where, "`videos` must be a list of clips, each a video file or frame "
                      "folder path or a non-empty list of frame image paths")
            return None
        n_slots = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in conv)
        if n_slots != len(videos):
            self.skip("video_placeholders", where, f"{n_slots} {VIDEO_PLACEHOLDER} placeholders but "
                      f"{len(videos)} videos")
            return None
        return list(videos)

    # --- a sample's images -------------------------------------------------------------------------------

    def _file_ok(self, path: Path, where: str, what: str) -> bool:
        if not path.is_file():
            self.skip(f"missing_{what}", where, f"{what} file {path} does not exist")
            return False
        if self.check_images:
            try:
                with Image.open(path) as im:
                    im.verify()  # header and chunk checksums, without decoding every pixel
            except Exception as exc:  # PIL raises many types for corrupt data
                self.skip(f"corrupt_{what}", where, f"{what} file {path} is corrupt ({type(exc).__name__}: {exc})")
                return False
        return True

    def _path(self, rel: str, base: Path) -> Path:
        return Path(rel) if os.path.isabs(rel) else (self.image_folder or base) / rel

    def resolve(self, sample: dict, base: Path, where: str) -> bool:
        """Make image (and mask) paths absolute, relative ones against `image_folder` or `base`; False (after
        counting) if one is missing or corrupt. A sample that holds image data (data: URLs) is decoded instead."""
        refs = sample["images"]
        if all(isinstance(r, str) for r in refs):
            paths = []
            for rel in refs:
                p = self._path(rel, base)
                if not self._file_ok(p, where, "image"):
                    return False
                paths.append(os.path.abspath(p))
            sample["images"] = paths
        elif self.decode(sample, base, None, where) is None:
            return False
        if sample.get("videos") and not self.resolve_videos(sample, base, where):
            return False
        meta = sample.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("mask"), str):
            p = Path(meta["mask"]) if os.path.isabs(meta["mask"]) else base / meta["mask"]
            if not self._file_ok(p, where, "mask"):
                return False
            sample["meta"] = {**meta, "mask": os.path.abspath(p)}
        return True

    def resolve_videos(self, sample: dict, base: Path, where: str) -> bool:
        """Video paths made absolute as image paths are; False (after counting) when a file or folder is missing.
        Video files are decoded (and so checked) only when the sample is encoded."""
        out = []
        for clip in sample["videos"]:
            paths = [self._path(rel, base) for rel in (clip if isinstance(clip, list) else [clip])]
            for p in paths:
                if not (p.exists() if isinstance(clip, str) else p.is_file()):
                    self.skip("missing_video", where, f"video {'file or folder' if isinstance(clip, str) else 'frame'} "
                              f"{p} does not exist")
                    return False
            absolute = [os.path.abspath(p) for p in paths]
            out.append(absolute[0] if isinstance(clip, str) else absolute)
        sample["videos"] = out
        return True

    def ref_bytes(self, ref: Any, base: Path, where: str, what: str = "image") -> Optional[bytes]:
        """The bytes of a reference (a path against `image_folder` or `base`, bytes, a {bytes, path} dict) or a
        PIL image as it is; None (after counting `missing_<what>`) when its file does not exist."""
        if isinstance(ref, dict):
            ref = ref["bytes"] if ref.get("bytes") is not None else ref.get("path")
        if not isinstance(ref, str):
            return ref
        p = self._path(ref, base)
        if not p.is_file():
            self.skip(f"missing_{what}", where, f"{what} file {p} does not exist")
            return None
        return p.read_bytes()

    def decode(self, sample: dict, base: Path, mask: Optional[bytes], where: str,
               clips: Sequence[ClipData] = ()) -> Optional[dict]:
        """Images from references (paths against `image_folder` or `base`, bytes, {bytes, path}, PIL images) ->
        `image_objects`; `images` keeps a name for each. `clips`: the sample's clips as data (`attach`)."""
        blobs, names = [], []
        for k, ref in enumerate(sample["images"]):
            name = ref if isinstance(ref, str) else ref.get("path") if isinstance(ref, dict) else None
            names.append(name or f"{sample['id']}_{k}.png")
            data = self.ref_bytes(ref, base, where)
            if data is None:
                return None
            blobs.append(data)
        sample["images"] = names
        return self.attach(sample, blobs, mask, where, clips)

    def attach(self, sample: dict, blobs: list, mask: Optional[bytes], where: str,
               clips: Sequence[ClipData] = ()) -> Optional[dict]:
        """The images (encoded bytes or PIL images), mask bytes and clips (each a video file's bytes or a list of
        its frames' encoded bytes, in `videos` order) of a sample: decoded into `image_objects`, `mask_object` and
        `video_objects` (each clip a list of RGB frames: all of a frame list, a video file sampled as
        `VideoConfig()` says), or (`decode_images=False`) kept as bytes in `image_bytes`, `mask_bytes` and
        `video_bytes`."""
        if not self.decode_images:  # lazy (streaming) reads: bytes now, pixels when the sample is encoded
            sample["image_bytes"] = [png_bytes(b) if isinstance(b, Image.Image) else b for b in blobs]
            if mask is not None:
                sample["mask_bytes"] = mask
            if clips:
                sample["video_bytes"] = list(clips)
            return sample
        objs = []
        for k, data in enumerate(blobs):
            if isinstance(data, Image.Image):
                objs.append(data.convert("RGB"))
                continue
            try:
                objs.append(decode_bytes(data, what=f"image {k}"))
            except ImageError as exc:
                self.skip("corrupt_image", where, str(exc))
                return None
        sample["image_objects"] = objs
        if mask is not None:
            try:
                m = Image.open(io.BytesIO(mask))
                m.load()
            except Exception as exc:
                self.skip("corrupt_mask", where, f"mask cannot be decoded ({type(exc).__name__}: {exc})")
                return None
            sample["mask_object"] = m
        if clips:
            try:
                sample["video_objects"] = [clip_frames(c, f"video {k}") for k, c in enumerate(clips)]
            except VideoError as exc:
                self.skip("corrupt_video", where, str(exc))
                return None
        return sample
