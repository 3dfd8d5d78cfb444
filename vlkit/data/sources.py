"""Sample sources: read and write samples as JSON(L) + image folder, WebDataset tar shards or HF datasets.

Formats (`fmt`):
  jsonl       `data.jsonl` (one sample per line) + `images/` (+ `masks/`), paths relative to the JSONL file.
              Readers also take LLaVA's JSON list (`image`: one string, `conversations`), and image paths
              relative to a separate `image_folder` (LLaVA's --image_folder).
  webdataset  `shard-000000.tar`, ... written with the stdlib `tarfile`; one sample = members `<key>.json`
              (the sample), `<key>.png` (its image; more images: `<key>.1.png`, `<key>.2.png`, ...) and,
              for segmentation, `<key>.mask.png`. Members of a sample are contiguous; keys have no dots.
              Readers take any image extension, a `<key>.json` that lists no image (the members are its
              images) and img2dataset shards (`.jpg` + `.txt` caption + `.json` metadata -> caption samples).
  hf          a Hugging Face `datasets.Dataset` saved with `save_to_disk` (columns id, images, conversations,
              task, meta (JSON text), mask, extra (JSON text)). `datasets` is optional and imported lazily.
              Readers also take `messages` + `images` datasets (TRL, llava-instruct-mix-vsft, LLaMA-Factory).

Reading convention (`read_samples`): every sample comes out with `id`, `images` (a list; LLaVA's `image`
becomes `images`), `conversations` ({from, value}; `messages` ({role, content}: a string with `<image>`
placeholders or OpenAI-style parts) are converted) and, when present, `task` and `meta`.
  - JSON(L) sources: `images` (and `meta["mask"]`) are absolute paths of files that exist and pass an
    integrity check; pixels are decoded later by whoever needs them.
  - tar and HF sources (and JSON samples with data: URLs): `images` keep the stored names and the decoded
    pixels are in `image_objects` (a list of RGB `PIL.Image`, same order); a segmentation mask is in
    `mask_object` ("L").
`load_sample_images(sample)` and `load_sample_mask(sample)` give pixels for either kind. Paths may be brace
patterns (`shards/{00000..00099}.tar`).

A bad sample (malformed JSON, missing or corrupt image, `<image>` placeholders that do not match the number
of images, ...) is skipped: counted by reason in a `ReadStats`, with a warning naming file and line (the first
`ReadStats.max_messages` of them, then one summary). `strict=True` raises `DataError` instead. A shard or
JSON file that cannot be read to its end is never dropped quietly: it is counted in `stats.bad_files` with a
warning giving how many of its samples were read (strict: `DataError`). A recipe source (`read_source`,
`SourceOptions`) raises `DataError` when more than its `max_skip` share (default 1%) was skipped.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import posixpath
import re
import tarfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from vlkit.config import from_dict, ranged
from vlkit.errors import UserError

IMAGE_TOKEN = "<image>"
CAPTION_PROMPT = "Describe the image briefly."  # img2dataset caption shards: the question a caption answers
ROLES = ("human", "user", "gpt", "assistant", "system")
FORMATS = ("jsonl", "webdataset", "hf")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
_MEMBER_IMAGE = re.compile(r"^(?:(\d+)\.)?(" + "|".join(IMAGE_EXTS) + r")$", re.I)

PathLike = Union[str, os.PathLike]


class DataError(UserError):
    """A data source is missing, unreadable or (in strict mode) holds a bad sample; the message says where."""


class DataWarning(UserWarning):
    """A sample or shard was skipped while reading (non-strict mode)."""


@dataclass
class ReadStats:
    """What a reader did: samples yielded, samples skipped by reason, files it could not read to the end."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    files: int = 0  # JSON(L) files, shards or HF datasets opened
    bad_files: list = field(default_factory=list)  # "path: what went wrong (N samples read before)"
    messages: list = field(default_factory=list)  # the first `max_messages` skip messages
    max_messages: int = 20

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return f"read {self.read} samples, skipped {self.n_skipped} ({reasons or 'none'}) from {self.files} files"


# ---------------------------------------------------------------------------------------------------------
# reading


class _Reader:
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
        if "conversations" not in obj and "messages" in obj:
            got = self.from_messages(obj, where)
            if got is None:
                return None
            conv, images = got
        else:
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
            n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
            if n_tokens != len(images):
                self.skip("image_placeholders", where,
                          f"{n_tokens} {IMAGE_TOKEN} placeholders but {len(images)} images")
                return None
        meta = obj.get("meta")
        if meta is not None and not isinstance(meta, dict):
            self.skip("malformed_sample", where, "`meta` must be an object")
            return None
        sample = {"id": str(obj["id"]) if obj.get("id") is not None else default_id, "images": images,
                  "conversations": conv}
        for k, v in obj.items():
            if k not in ("id", "image", "images", "conversations", "messages"):
                sample[k] = v
        return sample

    def image_list(self, obj: dict, where: str) -> Optional[list]:
        images = obj.get("images", obj.get("image"))
        if images is None:
            return []
        if not isinstance(images, list):
            images = [images]
        if not all(_is_image_ref(im) for im in images):
            self.skip("malformed_sample", where, "`images` must be a list of image paths (or `image` one path)")
            return None
        return list(images)

    def from_messages(self, obj: dict, where: str) -> Optional[tuple[list, list]]:
        """TRL / LLaMA-Factory / OpenAI messages -> (conversations, image references in placeholder order).
        An image is an `<image>` in string content or an image part; a part that carries no image of its own
        (`{"type": "image"}`) takes the next entry of `images`, as does every `<image>` written in text."""
        from vlkit.chat import ChatFormatError, normalize_messages

        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            self.skip("malformed_sample", where, "`messages` must be a non-empty list")
            return None
        try:
            turns, parts = normalize_messages(messages)
        except ChatFormatError as exc:
            self.skip("malformed_sample", where, f"`messages`: {exc}")
            return None
        column = self.image_list(obj, where)
        if column is None:
            return None
        n_slots = sum(text.count(IMAGE_TOKEN) for _, text in turns)
        own = sum(p is not None for p in parts)
        if own and n_slots != len(parts):
            self.skip("image_placeholders", where, f"{IMAGE_TOKEN} written in text mixed with image parts that "
                      "carry their own image; use image parts only")
            return None
        if n_slots - own != len(column):
            self.skip("image_placeholders", where, f"{n_slots} image placeholders ({IMAGE_TOKEN} or image parts"
                      f"{f', {own} with their own image' if own else ''}) but {len(column)} images")
            return None
        images = column
        if own:
            rest = iter(column)
            images = []
            for part in parts:
                ref = next(rest) if part is None else self.inline_image(part, where)
                if ref is None:
                    return None
                images.append(ref)
        return [{"from": role, "value": text} for role, text in turns], images

    def inline_image(self, part: Any, where: str) -> Any:
        """The image of an `image_url` part ({url} or a string: a path, file:// or a base64 data: URL) or of an
        `{"type": "image", "image": ...}` part; None (after counting) when it is none of those."""
        src = part.get("url") if isinstance(part, dict) and "url" in part else part
        if isinstance(src, str):
            if src.startswith("data:"):
                head, _, payload = src.partition(",")
                try:
                    if not head.endswith(";base64"):
                        raise ValueError("not base64")
                    return base64.b64decode(payload, validate=True)
                except (ValueError, binascii.Error) as exc:
                    self.skip("corrupt_image", where, f"an image data: URL that is not valid base64 ({exc})")
                    return None
            if src.startswith("file://"):
                return unquote(urlparse(src).path)
            if re.match(r"^[a-z][a-z0-9+.-]*://", src, re.I):
                self.skip("remote_image", where, f"image {src[:80]} is a remote URL; vlkit reads local files only "
                          "(download the images and give their paths)")
                return None
            return src
        if _is_image_ref(src):
            return src
        self.skip("malformed_sample", where, f"an image part without a usable image: {str(part)[:80]}")
        return None

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
        meta = sample.get("meta")
        if isinstance(meta, dict) and isinstance(meta.get("mask"), str):
            p = Path(meta["mask"]) if os.path.isabs(meta["mask"]) else base / meta["mask"]
            if not self._file_ok(p, where, "mask"):
                return False
            sample["meta"] = {**meta, "mask": os.path.abspath(p)}
        return True

    def decode(self, sample: dict, base: Path, mask: Optional[bytes], where: str) -> Optional[dict]:
        """Images from references (paths against `image_folder` or `base`, bytes, {bytes, path}, PIL images) ->
        `image_objects`; `images` keeps a name for each."""
        blobs, names = [], []
        for k, ref in enumerate(sample["images"]):
            name = ref if isinstance(ref, str) else ref.get("path") if isinstance(ref, dict) else None
            names.append(name or f"{sample['id']}_{k}.png")
            if isinstance(ref, dict):
                ref = ref["bytes"] if ref.get("bytes") is not None else ref.get("path")
            if isinstance(ref, str):
                p = self._path(ref, base)
                if not p.is_file():
                    self.skip("missing_image", where, f"image file {p} does not exist")
                    return None
                ref = p.read_bytes()
            blobs.append(ref)
        sample["images"] = names
        return self.attach(sample, blobs, mask, where)

    def attach(self, sample: dict, blobs: list, mask: Optional[bytes], where: str) -> Optional[dict]:
        from vlkit.images import ImageError, decode_bytes

        if not self.decode_images:  # lazy (streaming) reads: bytes now, pixels when the sample is encoded
            sample["image_bytes"] = [_encode_png(b) if isinstance(b, Image.Image) else b for b in blobs]
            if mask is not None:
                sample["mask_bytes"] = mask
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
        return sample

    # --- per format -------------------------------------------------------------------------------------

    def jsonl(self, path: Path) -> Iterator[dict]:
        self.stats.files += 1
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    self.skip("malformed_json", where, f"not valid JSON ({exc})")
                    continue
                sample = self.normalize(obj, where, default_id=f"{path.stem}-{lineno}")
                if sample is not None and self.resolve(sample, path.parent, where):
                    yield sample

    def json_list(self, path: Path) -> Iterator[dict]:
        self.stats.files += 1
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            self.bad_file(path, exc, 0)
            return
        if not isinstance(data, list):
            self.bad_file(path, ValueError("expected a JSON list of samples"), 0)
            return
        for k, obj in enumerate(data):
            where = f"{path}: item {k}"
            sample = self.normalize(obj, where, default_id=f"{path.stem}-{k}")
            if sample is not None and self.resolve(sample, path.parent, where):
                yield sample

    def tar(self, path: Path) -> Iterator[dict]:
        self.stats.files += 1
        n = 0
        try:
            with tarfile.open(path, "r|*") as tf:
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
                        raise tarfile.ReadError(f"member {member.name} is cut short "
                                                f"({len(data)} of {member.size} bytes)")
                    if mkey != key:
                        if key is not None:
                            sample = self.tar_sample(path, key, group)
                            if sample is not None:
                                n += 1
                                yield sample
                        key, group = mkey, {}
                    group[ext.lower()] = data
                if key is not None:
                    sample = self.tar_sample(path, key, group)
                    if sample is not None:
                        n += 1
                        yield sample
            if path.name.lower().endswith(".tar"):
                _check_tar_end(path)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            self.bad_file(path, exc, n)

    def tar_sample(self, shard: Path, key: str, group: dict) -> Optional[dict]:
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
                self.skip("malformed_json", where, f"{key}.json is not valid JSON ({exc})")
                return None
        if obj is None or (isinstance(obj, dict) and "conversations" not in obj and "messages" not in obj):
            obj = self.caption_sample(key, group, obj or {}, len(members), where)
            if obj is None:
                return None
        if isinstance(obj, dict) and "images" not in obj and "image" not in obj:
            obj = {**obj, "images": [f"{key}.{members[k]}" for k in sorted(members)]}
        sample = self.normalize(obj, where, default_id=key)
        if sample is None:
            return None
        if sorted(members) != list(range(len(sample["images"]))):
            self.skip("missing_image", where, f"{len(sample['images'])} images listed, image members {sorted(group)}")
            return None
        return self.attach(sample, [group[members[k]] for k in sorted(members)], group.get("mask.png"), where)

    def caption_sample(self, key: str, group: dict, meta: Any, n_images: int, where: str) -> Optional[dict]:
        """An img2dataset record: the caption (`<key>.txt`, else the metadata's `caption`) answers
        `caption_prompt` about the image; the metadata (`<key>.json`) is kept in `meta`."""
        caption = meta.get("caption") if isinstance(meta, dict) else None
        if "txt" in group:
            try:
                caption = group["txt"].decode("utf-8")
            except UnicodeDecodeError as exc:
                self.skip("malformed_sample", where, f"{key}.txt is not UTF-8 text ({exc})")
                return None
        if not isinstance(caption, str) or not caption.strip():
            self.skip("malformed_sample", where, f"no conversation ({key}.json with `conversations` or `messages`) "
                      f"and no caption ({key}.txt); members: {sorted(group)}")
            return None
        if not n_images:
            self.skip("missing_image", where, f"a caption without an image member; members: {sorted(group)}")
            return None
        caption = caption.strip()
        meta = {**meta, "captions": [caption]} if isinstance(meta, dict) else {"captions": [caption]}
        return {"id": key, "task": "caption", "meta": meta, "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n" * n_images + self.caption_prompt},
            {"from": "gpt", "value": caption}]}

    def hf(self, path: Path) -> Iterator[dict]:
        datasets = _import_datasets()
        try:
            obj = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"{path} looks like a saved HF dataset but cannot be loaded ({type(exc).__name__}: {exc})")
        parts = [("", obj)] if isinstance(obj, datasets.Dataset) else [(f"[{k}]", obj[k]) for k in obj]
        for split, ds in parts:
            self.stats.files += 1
            columns = set(ds.column_names)
            if not columns & {"conversations", "messages"}:
                raise DataError(f"{path}{split} has no `conversations` or `messages` column "
                                f"(columns: {sorted(columns)})")
            # raw Arrow rows: images stay bytes here and are decoded (safely) per sample
            arrow = ds.with_format("arrow")
            for start in range(0, len(ds), 256):
                batch = arrow[start:start + 256].to_pylist()
                for i, row in enumerate(batch):
                    sample = self.hf_sample(row, path, f"{path}{split}: row {start + i}")
                    if sample is not None:
                        yield sample

    def hf_sample(self, row: dict, path: Path, where: str) -> Optional[dict]:
        obj: dict = {k: row[k] for k in ("id", "conversations", "messages", "images", "image", "task")
                     if row.get(k) is not None}
        try:
            if row.get("meta") is not None:
                obj["meta"] = json.loads(row["meta"]) if isinstance(row["meta"], str) else row["meta"]
            if row.get("extra"):
                obj.update(json.loads(row["extra"]))
        except ValueError as exc:
            self.skip("malformed_json", where, f"`meta`/`extra` is not valid JSON ({exc})")
            return None
        sample = self.normalize(obj, where, default_id=where)
        if sample is None:
            return None
        mask = row.get("mask")
        return self.decode(sample, path, mask.get("bytes") if isinstance(mask, dict) else None, where)


def _is_image_ref(x: Any) -> bool:
    """A path, encoded bytes, a {bytes, path} dict (HF `Image` feature) or a PIL image."""
    if isinstance(x, dict):
        return isinstance(x.get("bytes"), bytes) or isinstance(x.get("path"), str)
    return isinstance(x, (str, bytes, Image.Image))


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


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("the HF format needs the optional package `datasets`: pip install 'vlkit[data]'") from None
    return datasets


def detect_format(path: PathLike) -> str:
    """'jsonl' | 'json' | 'webdataset' | 'hf' for a file or folder; DataError if it is none of them."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_file():
        name = p.name.lower()
        if name.endswith(".jsonl"):
            return "jsonl"
        if name.endswith(".json"):
            return "json"
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            return "webdataset"
        raise DataError(f"data file {p} is not .jsonl, .json or .tar")
    if (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()):
        return "hf"
    names = [c.name.lower() for c in p.iterdir() if c.is_file()]
    if any(n.endswith((".tar", ".tar.gz", ".tgz")) for n in names):
        return "webdataset"
    if any(n.endswith(".jsonl") for n in names):
        return "jsonl"
    if any(n.endswith(".json") for n in names):
        return "json"
    raise DataError(f"no data in {p}: expected *.jsonl or *.json files, *.tar shards, or a saved HF dataset")


def _files(p: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(c for c in p.iterdir() if c.is_file() and c.name.lower().endswith(suffixes))


def expand_path(path: PathLike) -> list[Path]:
    """`path` itself, or the files of a brace pattern (`shards/{00000..00099}.tar`, `{a,b}.jsonl`), each of
    which must exist."""
    text = os.fspath(path)
    if "{" not in text or os.path.exists(text):
        return [Path(text)]
    from braceexpand import braceexpand

    paths = [Path(p) for p in braceexpand(text)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(paths)} paths of the pattern {text} do not exist "
                        f"(e.g. {missing[0]})")
    return paths


def read_samples(path: PathLike, strict: bool = False, stats: Optional[ReadStats] = None, *,
                 check_images: bool = True, image_folder: Optional[PathLike] = None,
                 caption_prompt: str = CAPTION_PROMPT, decode_images: bool = True) -> Iterator[dict]:
    """Yield the samples of `path`: a folder with *.jsonl (or *.json lists) and images, a .jsonl/.json file,
    a .tar shard or a folder of them, a saved HF dataset (the format is detected), or a brace pattern of any
    of these (`shards/{00000..00099}.tar`).

    A sample holds `conversations` ({from, value}) or `messages` ({role, content}: a string with `<image>`
    placeholders or OpenAI-style parts); both come out as `conversations`. JSON(L) sources yield `images` as
    absolute paths (relative ones are resolved against `image_folder`, else the JSON file's folder), checked
    to exist and pass `PIL.Image.verify` (`check_images=False`: existence only). tar and HF sources (and JSON
    samples with inline data: URLs) yield `images` as names plus the decoded RGB `PIL.Image`s in
    `image_objects` (and a mask in `mask_object`). WebDataset records without a conversation (img2dataset:
    image + `.txt` caption) become caption samples asking `caption_prompt`. Bad samples are skipped and
    counted in `stats` (pass a `ReadStats` to see the counts) with a `DataWarning` naming file and line;
    `strict=True` raises `DataError` instead. `decode_images=False` (the streaming index, vlkit/data/records.py):
    images held as data stay undecoded in `image_bytes` (a mask in `mask_bytes`); `load_sample_images` decodes
    them when needed."""
    stats = stats if stats is not None else ReadStats()
    folder = Path(image_folder) if image_folder is not None else None
    if folder is not None and not folder.is_dir():
        raise DataError(f"image_folder {folder} is not a folder")
    reader = _Reader(strict, stats, check_images, folder, caption_prompt, decode_images)
    for p in expand_path(path):
        fmt = detect_format(p)
        if fmt == "hf":
            gen: Iterator[dict] = reader.hf(p)
        elif fmt == "webdataset":
            if folder is not None:
                raise DataError(f"{p}: image_folder applies to JSON(L) and HF sources; WebDataset shards hold "
                                "their images")
            gen = (s for f in _files(p, (".tar", ".tar.gz", ".tgz")) for s in reader.tar(f))
        elif fmt == "jsonl":
            gen = (s for f in _files(p, (".jsonl",)) for s in reader.jsonl(f))
        else:
            gen = (s for f in _files(p, (".json",)) for s in reader.json_list(f))
        for sample in gen:
            stats.read += 1
            yield sample
    if stats.n_skipped:
        warnings.warn(f"{os.fspath(path)}: {stats.summary()}", DataWarning, stacklevel=2)
        if stats.read == 0:
            raise DataError(f"{os.fspath(path)}: no usable sample ({stats.summary()}); first problem: "
                            f"{(stats.messages or stats.bad_files or ['?'])[0]}")


# ---------------------------------------------------------------------------------------------------------
# a recipe's source: {path, image_folder, max_skip, caption_prompt} (+ the trainer's weight, tasks)


@dataclass
class SourceOptions:
    """How a `data.train` entry `{path: ...}` is read (the trainer adds `weight` and `tasks`)."""

    image_folder: Optional[str] = None  # relative image paths are relative to this folder (LLaVA's --image_folder)
    max_skip: float = ranged(0.01, 0, 1)  # the largest share of samples that may be skipped before it is an error
    caption_prompt: str = CAPTION_PROMPT  # the question of caption samples made from img2dataset shards

    @classmethod
    def from_spec(cls, src: dict, where: str = "source") -> "SourceOptions":
        return from_dict(cls, {k: src[k] for k in SOURCE_OPTIONS if k in src}, where)


SOURCE_OPTIONS = tuple(f.name for f in fields(SourceOptions))


def check_skip_share(source: str, kept: int, skipped: dict, max_skip: float, examples: list = (),
                     stage: str = "reading") -> None:
    """DataError when more than `max_skip` of a source's samples were skipped: it names the source, the counts,
    the main reasons and the first problem, and says how to accept the loss."""
    n_skip = sum(skipped.values())
    total = kept + n_skip
    if not n_skip or n_skip <= max_skip * total:
        return
    share = n_skip / total
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1])[:4])
    first = f" First: {examples[0]}." if examples else ""
    raise DataError(f"source {source}: {n_skip} of {total} samples ({share:.1%}) were skipped while {stage}, more "
                    f"than max_skip={max_skip:g} allows ({reasons}).{first} Fix the data (images relative to "
                    f"another folder need `image_folder:`), or set `max_skip: {math.ceil(share * 100) / 100:g}` on "
                    f"this source to train on what is left.")


def read_source(src: dict, strict: bool = False, stats: Optional[ReadStats] = None, *,
                check_images: bool = True) -> Iterator[dict]:
    """The samples of one recipe source `{path, image_folder?, max_skip?, caption_prompt?}` (other keys are the
    caller's); after the last one, a DataError if more than `max_skip` of them were skipped."""
    opts = SourceOptions.from_spec(src)
    stats = stats if stats is not None else ReadStats()
    yield from read_samples(src["path"], strict, stats, check_images=check_images, image_folder=opts.image_folder,
                            caption_prompt=opts.caption_prompt)
    check_skip_share(src["path"], stats.read, stats.skipped, opts.max_skip, stats.messages + stats.bad_files)


def load_sample_images(sample: dict) -> list[Image.Image]:
    """The sample's images as RGB PIL images, whichever reader produced it."""
    if "image_objects" in sample:
        return list(sample["image_objects"])
    if "image_bytes" in sample:  # read with decode_images=False
        from vlkit.images import decode_bytes

        return [decode_bytes(b, what=f"image {k}") for k, b in enumerate(sample["image_bytes"])]
    from vlkit.images import load_image

    return [load_image(p) for p in sample.get("images", [])]


def load_sample_mask(sample: dict) -> Optional[np.ndarray]:
    """The segmentation mask (uint8 HxW class indices) or None."""
    if sample.get("mask_object") is not None:
        return np.asarray(sample["mask_object"])
    if sample.get("mask_bytes") is not None:  # read with decode_images=False
        with Image.open(io.BytesIO(sample["mask_bytes"])) as m:
            return np.asarray(m)
    path = (sample.get("meta") or {}).get("mask")
    if not path:
        return None
    with Image.open(path) as m:
        return np.asarray(m)


def corpus_text(path_or_samples: Union[PathLike, Iterable[dict]]) -> Iterator[str]:
    """Every conversation turn's text (with `<image>` placeholders removed), e.g. to train a BPE tokenizer."""
    if isinstance(path_or_samples, (str, os.PathLike)):
        samples: Iterable[dict] = read_samples(path_or_samples, check_images=False)
    else:
        samples = path_or_samples
    for sample in samples:
        for turn in sample.get("conversations", []):
            text = turn.get("value", "").replace(IMAGE_TOKEN, "").strip()
            if text:
                yield text


# ---------------------------------------------------------------------------------------------------------
# writing


def _safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "sample"


class _Sink:
    """Writes (sample, files) records; `sample` holds paths relative to the output folder and `files`
    maps each of them to its bytes."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass


class JsonlSink(_Sink):
    def __init__(self, out: Path, name: str = "data.jsonl"):
        super().__init__(out)
        self._dirs: set = set()
        self._f = open(out / name, "w", encoding="utf-8")

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            target = self.out / rel
            if target.parent not in self._dirs:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(target.parent)
            with open(target, "wb") as f:
                f.write(data)
        self._f.write(json.dumps(sample, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._f.close()


class TarSink(_Sink):
    """WebDataset shards of `shard_size` samples; byte-identical for identical input (fixed tar headers)."""

    def __init__(self, out: Path, shard_size: int = 1000):
        super().__init__(out)
        for old in out.glob("shard-*.tar"):  # shards of an earlier, longer run would be read as data
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
        key = base = _safe_key(sample["id"])
        k = 1
        while key in self._keys:  # member names must stay unique even if ids repeat
            key, k = f"{base}_{k}", k + 1
        self._keys.add(key)
        self._member(f"{key}.json", json.dumps(sample, ensure_ascii=False).encode("utf-8"))
        for i, rel in enumerate(sample["images"]):
            ext = rel.rsplit(".", 1)[-1].lower() if "." in rel else "png"
            self._member(f"{key}.{ext}" if i == 0 else f"{key}.{i}.{ext}", files[rel])
        mask = (sample.get("meta") or {}).get("mask")
        if mask:
            self._member(f"{key}.mask.png", files[mask])
        self._n += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


class HFSink(_Sink):
    """Collects rows, then `Dataset.from_dict(...).save_to_disk(out)` on close."""

    _CORE = ("id", "images", "conversations", "task", "meta")

    def __init__(self, out: Path):
        super().__init__(out)
        self.datasets = _import_datasets()
        self.rows: dict[str, list] = {k: [] for k in ("id", "images", "conversations", "task", "meta", "mask", "extra")}

    def add(self, sample: dict, files: dict[str, bytes]) -> None:
        r = self.rows
        r["id"].append(sample["id"])
        r["images"].append([{"bytes": files[rel], "path": rel} for rel in sample["images"]])
        r["conversations"].append([{"from": t["from"], "value": t["value"]} for t in sample["conversations"]])
        r["task"].append(sample.get("task"))
        meta = sample.get("meta")
        r["meta"].append(json.dumps(meta, ensure_ascii=False) if meta is not None else None)
        mask = (meta or {}).get("mask")
        r["mask"].append({"bytes": files[mask], "path": mask} if mask else None)
        extra = {k: v for k, v in sample.items() if k not in self._CORE}
        r["extra"].append(json.dumps(extra, ensure_ascii=False) if extra else None)

    def close(self) -> None:
        if self.rows is None:
            return
        ds = self.datasets
        features = ds.Features({
            "id": ds.Value("string"), "images": [ds.Image()],
            "conversations": [{"from": ds.Value("string"), "value": ds.Value("string")}],
            "task": ds.Value("string"), "meta": ds.Value("string"), "mask": ds.Image(), "extra": ds.Value("string"),
        })
        table = ds.Dataset.from_dict(self.rows, features=features)
        enabled = ds.is_progress_bar_enabled()
        ds.disable_progress_bars()
        try:
            table.save_to_disk(str(self.out))
        finally:
            if enabled:
                ds.enable_progress_bars()
        self.rows = None


def open_sink(out: PathLike, fmt: str = "jsonl", shard_size: int = 1000) -> _Sink:
    out = Path(out)
    if fmt == "jsonl":
        return JsonlSink(out)
    if fmt == "webdataset":
        return TarSink(out, shard_size)
    if fmt == "hf":
        return HFSink(out)
    raise DataError(f"unknown data format {fmt!r}; choose one of {list(FORMATS)}")


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sample_record(sample: dict, index: int = 0, used: Optional[set] = None) -> tuple[dict, dict[str, bytes]]:
    """A sample as `read_samples` yields it (or as a user builds it: `images` paths or `image_objects`) ->
    (sample with paths relative to an output folder, {relative path: bytes}). File names come from the id;
    `used` (a set of names taken so far) keeps two ids that read alike from sharing a file."""
    sid = str(sample.get("id") or f"sample-{index:06d}")
    key = base = _safe_key(sid)
    if used is not None:
        k = 1
        while key in used:
            key, k = f"{base}_{k}", k + 1
        used.add(key)
    out = {k: v for k, v in sample.items() if k not in ("image_objects", "mask_object", "image")}
    out["id"] = sid
    files: dict[str, bytes] = {}
    names = []
    if "image_objects" in sample:
        blobs = [(_encode_png(im), "png") for im in sample["image_objects"]]
    else:
        paths = sample.get("images", sample.get("image", []))
        paths = [paths] if isinstance(paths, str) else paths
        blobs = []
        for p in paths:
            try:
                blobs.append((Path(p).read_bytes(), Path(p).suffix.lstrip(".").lower() or "png"))
            except OSError as exc:
                raise DataError(f"sample {sid}: cannot read image {p} ({exc})") from None
    for k, (data, ext) in enumerate(blobs):
        rel = f"images/{key}.{ext}" if k == 0 else f"images/{key}.{k}.{ext}"
        files[rel] = data
        names.append(rel)
    out["images"] = names
    meta = sample.get("meta")
    if isinstance(meta, dict) and (meta.get("mask") or sample.get("mask_object") is not None):
        if sample.get("mask_object") is not None:
            data = _encode_png(sample["mask_object"])
        else:
            try:
                data = Path(meta["mask"]).read_bytes()
            except OSError as exc:
                raise DataError(f"sample {sid}: cannot read mask {meta['mask']} ({exc})") from None
        rel = f"masks/{key}.png"
        files[rel] = data
        out["meta"] = {**meta, "mask": rel}
    return out, files


def write_samples(samples: Iterable[dict], out: PathLike, fmt: str = "jsonl", shard_size: int = 1000) -> Path:
    """Write samples (from `read_samples`, or dicts with `images` paths / `image_objects`) to `out` as
    `fmt` (jsonl | webdataset | hf). Images are copied byte for byte; decoded images are saved as PNG.
    Returns `out`. Files are named after sample ids (`images/<id>.png`, `images/<id>.1.png` for a second image,
    `masks/<id>.png`; characters other than letters, digits, `_` and `-` become `_`, clashes get a suffix)."""
    out = Path(out)
    used: set = set()
    with open_sink(out, fmt, shard_size) as sink:
        for i, sample in enumerate(samples):
            sink.add(*sample_record(sample, i, used))
    return out
