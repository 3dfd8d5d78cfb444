"""`messages` samples (TRL, llava-instruct-mix-vsft, LLaMA-Factory, OpenAI-style) -> vlkit's `conversations`.

Any format may hold them: a JSON(L) line, a WebDataset `<key>.json` or an HF dataset row with a `messages`
column (+ `images`). `content` is a string with `<image>` placeholders or a list of OpenAI-style parts.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import unquote, urlparse

from vlkit.chat import ChatFormatError, normalize_messages
from vlkit.data.sources.base import is_image_ref
from vlkit.tokenizer import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from vlkit.data.sources.normalize import Reader


def from_messages(reader: "Reader", obj: dict, where: str) -> Optional[tuple[list, list]]:
    """TRL / LLaMA-Factory / OpenAI messages -> (conversations, image references in placeholder order).
    An image is an `<image>` in string content or an image part; a part that carries no image of its own
    (`{"type": "image"}`) takes the next entry of `images`, as does every `<image>` written in text. None (after
    `reader` counted it) when the sample is bad."""
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        reader.skip("malformed_sample", where, "`messages` must be a non-empty list")
        return None
    try:
        turns, parts = normalize_messages(messages)
    except ChatFormatError as exc:
        reader.skip("malformed_sample", where, f"`messages`: {exc}")
        return None
    column = reader.image_list(obj, where)
    if column is None:
        return None
    n_slots = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    own = sum(p is not None for p in parts)
    if own and n_slots != len(parts):
        reader.skip("image_placeholders", where, f"{IMAGE_PLACEHOLDER} written in text mixed with image parts that "
                    "carry their own image; use image parts only")
        return None
    if n_slots - own != len(column):
        reader.skip("image_placeholders", where, f"{n_slots} image placeholders ({IMAGE_PLACEHOLDER} or image parts"
                    f"{f', {own} with their own image' if own else ''}) but {len(column)} images")
        return None
    images = column
    if own:
        rest = iter(column)
        images = []
        for part in parts:
            ref = next(rest) if part is None else inline_image(reader, part, where)
            if ref is None:
                return None
            images.append(ref)
    return [{"from": role, "value": text} for role, text in turns], images


def inline_image(reader: "Reader", part: Any, where: str) -> Any:
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
                reader.skip("corrupt_image", where, f"an image data: URL that is not valid base64 ({exc})")
                return None
        if src.startswith("file://"):
            return unquote(urlparse(src).path)
        if re.match(r"^[a-z][a-z0-9+.-]*://", src, re.I):
            reader.skip("remote_image", where, f"image {src[:80]} is a remote URL; vlkit reads local files only "
                        "(download the images and give their paths)")
            return None
        return src
    if is_image_ref(src):
        return src
    reader.skip("malformed_sample", where, f"an image part without a usable image: {str(part)[:80]}")
    return None
