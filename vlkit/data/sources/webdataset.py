"""WebDataset tar shards (`shard-000000.tar`, ...), read and written with the stdlib `tarfile`.

One sample = members `<key>.json` (the sample), `<key>.png` (its image; more images: `<key>.1.png`,
`<key>.2.png`, ...), for segmentation `<key>.mask.png`, and its video clips in `<video>` order: clip 0 as one
video file `<key>.video.mp4` (any of VIDEO_EXTS) or as frames `<key>.video.000.png`, `<key>.video.001.png`, ...
(any image extension), clip k > 0 the same with `video<k>` (`<key>.video1.mp4`, `<key>.video1.000.png`).
Members of a sample are contiguous; keys have no dots. The reader takes any image extension, a `<key>.json` that
lists no image (the members are its images) or no video (the clip members are its videos) and img2dataset shards (`.jpg` + `.txt` caption + `.json` metadata -> caption samples asking the source's
`caption_prompt`). Images are decoded into `image_objects` (a mask into `mask_object`), clips into
`video_objects` (Reader.attach). A shard that cannot
be read to its end (cut short, bad gzip, no end-of-archive marker) is counted as a bad file, never dropped
quietly.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

from vlkit.data.sources.base import IMAGE_EXTS, VIDEO_EXTS, DataError, Sink, unique_key
from vlkit.data.sources.normalize import ClipData, Reader
from vlkit.tokenizer import IMAGE_PLACEHOLDER

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_MEMBER_IMAGE = re.compile(r"^(?:(\d+)\.)?(" + "|".join(IMAGE_EXTS) + r")$", re.I)
# clip k (`video` for 0, `video<k>` after) as a video file (`video.mp4`) or as frames (`video.000.png`)
_MEMBER_CLIP = re.compile(r"^video([1-9]\d*)?\.(?:(\d+)\.(?:" + "|".join(IMAGE_EXTS) + r")|(?:"
                          + "|".join(VIDEO_EXTS) + r"))$", re.I)


def clip_member(key: str, k: int, ext: str, frame: Optional[int] = None) -> str:
    """The member name of clip k of sample `key`: its video file, or (`frame` t) its t-th frame."""
    tag = "video" if k == 0 else f"video{k}"
    return f"{key}.{tag}.{ext}" if frame is None else f"{key}.{tag}.{frame:03d}.{ext}"


class BadClips(Exception):
    """A sample's clip members do not make clips: (skip reason, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def clip_members(key: str, group: dict) -> tuple[list, list[ClipData]]:
    """The clips among a sample's members, in clip order: (their member names: a name for a video file, a list of
    names for frames; their data: the file's bytes, or the frames' bytes in frame order). `BadClips` when clips or
    frames are not numbered without gaps from 0, or a clip is both a file and frames."""
    clips: dict[int, dict] = {}
    for ext in group:
        if not (m := _MEMBER_CLIP.match(ext)):
            continue
        clip = clips.setdefault(int(m.group(1) or 0), {"files": [], "frames": {}})
        if m.group(2) is None:
            clip["files"].append(ext)
        elif int(m.group(2)) in clip["frames"]:
            raise BadClips("malformed_sample", f"two members for one frame: {key}.{clip['frames'][int(m.group(2))]} "
                           f"and {key}.{ext}")
        else:
            clip["frames"][int(m.group(2))] = ext
    if sorted(clips) != list(range(len(clips))):
        raise BadClips("missing_video", f"clip members for clips {sorted(clips)}: clips are numbered video, video1, "
                       "video2, ... without gaps")
    names: list = []
    data: list[ClipData] = []
    for k in range(len(clips)):
        files, frames = clips[k]["files"], clips[k]["frames"]
        if len(files) + bool(frames) != 1:
            members = sorted(files + list(frames.values()))
            raise BadClips("malformed_sample", f"clip {k} must be one video file member or frame members, got "
                           f"{[f'{key}.{m}' for m in members]}")
        if files:
            names.append(f"{key}.{files[0]}")
            data.append(group[files[0]])
            continue
        order = sorted(frames)
        if order != list(range(len(order))):
            raise BadClips("missing_video", f"clip {k}'s frame members are numbered {order}, not 0..{len(order) - 1}")
        names.append([f"{key}.{frames[t]}" for t in order])
        data.append([group[frames[t]] for t in order])
    return names, data


def read_tar(reader: Reader, path: Path) -> Iterator[dict]:
    """The samples of one shard, in member order."""
    reader.stats.files += 1
    n = 0
    try:
        with tarfile.open(path, "r|*") as tf:
            for key, group in _member_groups(tf):
                sample = tar_sample(reader, path, key, group)
                if sample is not None:
                    n += 1
                    yield sample
        if path.name.lower().endswith(".tar"):
            _check_tar_end(path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        reader.bad_file(path, exc, n)


def _member_groups(tf: tarfile.TarFile) -> Iterator[tuple[str, dict]]:
    """(key, {extension: bytes}) for each run of contiguous members that share a key."""
    key, group = None, {}
    for member in tf:
        if not member.isfile():
            continue
        dirname, base = posixpath.split(member.name)
        if "." not in base:
            continue
        stem, ext = base.split(".", 1)
        mkey = posixpath.join(dirname, stem)
        data = tf.extractfile(member).read()
        if len(data) != member.size:
            raise tarfile.ReadError(f"member {member.name} is cut short ({len(data)} of {member.size} bytes)")
        if mkey != key:
            if key is not None:
                yield key, group
            key, group = mkey, {}
        group[ext.lower()] = data
    if key is not None:
        yield key, group


def tar_sample(reader: Reader, shard: Path, key: str, group: dict) -> Optional[dict]:
    """One WebDataset sample. `<key>.json` holds it (`conversations` or `messages`); when it lists no image,
    the image members (`<key>.jpg`, `<key>.1.jpg`, ...) are its images. Without conversations (img2dataset:
    `.jpg` + `.txt` caption + `.json` metadata) it becomes a caption sample asking `caption_prompt`."""
    where = f"{shard}:{key}"
    members = {int(m.group(1) or 0): ext for ext in group if (m := _MEMBER_IMAGE.match(ext))}
    obj: Any = None
    if "json" in group:
        try:
            obj = json.loads(group["json"].decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            reader.skip("malformed_json", where, f"{key}.json is not valid JSON ({exc})")
            return None
    if obj is None or (isinstance(obj, dict) and "conversations" not in obj and "messages" not in obj):
        obj = caption_sample(reader, key, group, obj or {}, len(members), where)
        if obj is None:
            return None
    try:
        clip_names, clips = clip_members(key, group)
    except BadClips as exc:
        reader.skip(exc.reason, where, exc.detail)
        return None
    if isinstance(obj, dict) and "images" not in obj and "image" not in obj:
        obj = {**obj, "images": [f"{key}.{members[k]}" for k in sorted(members)]}
    if isinstance(obj, dict) and "videos" not in obj and clips:
        obj = {**obj, "videos": clip_names}
    sample = reader.normalize(obj, where, default_id=key)
    if sample is None:
        return None
    if sorted(members) != list(range(len(sample["images"]))):
        reader.skip("missing_image", where, f"{len(sample['images'])} images listed, image members {sorted(group)}")
        return None
    if len(clips) != len(sample.get("videos", [])):
        reader.skip("missing_video", where, f"{len(sample.get('videos', []))} videos listed, {len(clips)} clips "
                    f"among the members {sorted(group)}")
        return None
    return reader.attach(sample, [group[members[k]] for k in sorted(members)], group.get("mask.png"), where, clips)


def caption_sample(reader: Reader, key: str, group: dict, meta: Any, n_images: int, where: str) -> Optional[dict]:
    """An img2dataset record: the caption (`<key>.txt`, else the metadata's `caption`) answers
    `caption_prompt` about the image; the metadata (`<key>.json`) is kept in `meta`."""
    caption = meta.get("caption") if isinstance(meta, dict) else None
    if "txt" in group:
        try:
            caption = group["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            reader.skip("malformed_sample", where, f"{key}.txt is not UTF-8 text ({exc})")
            return None
    if not isinstance(caption, str) or not caption.strip():
        reader.skip("malformed_sample", where, f"no conversation ({key}.json with `conversations` or `messages`) "
                    f"and no caption ({key}.txt); members: {sorted(group)}")
        return None
    if not n_images:
        reader.skip("missing_image", where, f"a caption without an image member; members: {sorted(group)}")
        return None
    caption = caption.strip()
    meta = {**meta, "captions": [caption]} if isinstance(meta, dict) else {"captions": [caption]}
    return {"id": key, "task": "caption", "meta": meta, "conversations": [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n" * n_images + reader.caption_prompt},
        {"from": "gpt", "value": caption}]}


def _check_tar_end(path: Path) -> None:
    """tarfile stops quietly when a shard is cut at a member boundary; a whole tar ends with two zero
    blocks (the end-of-archive marker), so their absence means the shard lost its tail."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 1024:
            raise tarfile.ReadError("too short for a tar archive")
        f.seek(-1024, os.SEEK_END)
        if f.read(1024) != bytes(1024):
            raise tarfile.ReadError("no end-of-archive marker: the shard is truncated")


def _ext(rel: str, default: str, allowed: tuple = (), sid: str = "") -> str:
    """The lower-case extension of a file name (`default` without one); DataError when it is not `allowed`, as the
    reader would not take the member back."""
    ext = rel.rsplit(".", 1)[-1].lower() if "." in posixpath.basename(rel) else default
    if allowed and ext not in allowed:
        raise DataError(f"sample {sid}: {rel} cannot be stored in a shard: its extension is not one of {allowed}")
    return ext


class TarSink(Sink):
    """WebDataset shards of `shard_size` samples; byte-identical for identical input (fixed tar headers)."""

    def __init__(self, out: Path, shard_size: int = 1000):
        super().__init__(out, shard_size)
        for old in self.out.glob("shard-*.tar"):  # shards of an earlier, longer run would be read as data
            if re.fullmatch(r"shard-\d{6}\.tar", old.name):
                old.unlink()
        self.shard_size = max(1, int(shard_size))
        self._tar: Optional[tarfile.TarFile] = None
        self._n = 0
        self._shard = 0
        self._keys: set = set()

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        if self._tar is None or self._n >= self.shard_size:
            self.close()
            self._tar = tarfile.open(self.out / f"shard-{self._shard:06d}.tar", "w", format=tarfile.PAX_FORMAT)
            self._shard += 1
            self._n = 0
        key = unique_key(sample["id"], self._keys)  # member names must stay unique even if ids repeat
        self._member(f"{key}.json", json.dumps(sample, ensure_ascii=False).encode("utf-8"))
        for i, rel in enumerate(sample.get("images", [])):
            ext = _ext(rel, "png")
            self._member(f"{key}.{ext}" if i == 0 else f"{key}.{i}.{ext}", files[rel])
        mask = (sample.get("meta") or {}).get("mask")
        if mask:
            self._member(f"{key}.mask.png", files[mask])
        for k, clip in enumerate(sample.get("videos", [])):
            if isinstance(clip, str):
                self._member(clip_member(key, k, _ext(clip, "mp4", VIDEO_EXTS, sample["id"])), files[clip])
            else:
                for t, rel in enumerate(clip):
                    self._member(clip_member(key, k, _ext(rel, "png", IMAGE_EXTS, sample["id"]), t), files[rel])
        self._n += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
