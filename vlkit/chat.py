"""Conversation -> token ids + labels (loss on assistant turns only), per the image-token contract.

Template (ChatML):
    <|im_start|>system\\n{text}<|im_end|>\\n          (only when a system turn is given)
    <|im_start|>user\\n{text}<|im_end|>\\n
    <|im_start|>assistant\\n{text}<|im_end|>\\n
Each `<image>` in a user turn becomes `<|vision_start|>` + N x `<|image_pad|>` + `<|vision_end|>`, N being the
number of embeddings the encoder + connector make for that image. An `<image>` in an assistant turn is an image
to generate (VLUAS): `<|gen_start|><|vision_start|>` + N pads + `<|vision_end|>`; the model supervises its codes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from vlkit.errors import UserError
from vlkit.tokenizer import IMAGE_PLACEHOLDER, Tokenizer

IGNORE = -100
IMAGE_PROMPT = "Draw: {}"  # the user turn of text-to-image samples (the synthetic world's generation task)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class ChatFormatError(UserError):
    """A conversation is malformed (unknown role, bad content, placeholder/image count mismatch)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int = 0
    target_images: list[int] = field(default_factory=list)  # indices of images that are generation targets


def normalize_messages(messages: Sequence[dict]) -> tuple[list[tuple[str, str]], list[Any]]:
    """DESIGN.md turns ({"from", "value"}) or OpenAI messages ({"role", "content": str | parts}) ->
    [(role, text with <image> placeholders)], [image sources in placeholder order]. Image parts of OpenAI
    messages become placeholders where they stand; their `image_url` objects are returned for the caller
    to resolve."""
    turns: list[tuple[str, str]] = []
    images: list[Any] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ChatFormatError(f"message {i} must be an object, got {type(msg).__name__}")
        role = msg.get("from", msg.get("role"))
        if role not in ROLES:
            raise ChatFormatError(f"message {i} has role {role!r}; allowed: {sorted(ROLES)}")
        content = msg.get("value", msg.get("content"))
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        raise ChatFormatError(f"messages[{i}].content[{j}].text must be a string")
                    pieces.append(part["text"])
                elif kind in ("image_url", "image"):
                    pieces.append(IMAGE_PLACEHOLDER + "\n")
                    images.append(part.get("image_url", part.get("image")))
                else:
                    raise ChatFormatError(f"messages[{i}].content[{j}] has type {kind!r}; allowed: text, image_url")
            text = "".join(pieces)
        elif content is None:
            text = ""
        else:
            raise ChatFormatError(f"messages[{i}].content must be a string or a list of parts")
        turns.append((ROLES[role], text))
    return turns, images


class ChatProcessor:
    """Applies the template. `tokens_per_image[k]` is N for image k (from the model's geometry)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self._nl = tokenizer.encode("\n")
        self._role_ids = {r: tokenizer.encode(r + "\n") for r in ("system", "user", "assistant")}

    def image_tokens(self, n: int, target: bool = False) -> list[int]:
        t = self.tok
        ids = [t.vision_start_id] + [t.image_pad_id] * n + [t.vision_end_id]
        return [t.gen_start_id] + ids if target else ids

    def encode(self, turns: Sequence[tuple[str, str]], tokens_per_image: Sequence[int],
               add_generation_prompt: bool = False) -> Encoded:
        t = self.tok
        ids: list[int] = []
        labels: list[int] = []
        k = 0
        targets: list[int] = []
        for role, text in turns:
            head = [t.im_start_id] + self._role_ids[role]
            ids += head
            labels += [IGNORE] * len(head)
            train = role == "assistant"
            pieces = text.split(IMAGE_PLACEHOLDER)
            for p, piece in enumerate(pieces):
                if p > 0:
                    if k >= len(tokens_per_image):
                        raise ChatFormatError(
                            f"the conversation has more {IMAGE_PLACEHOLDER} placeholders than images ({len(tokens_per_image)})")
                    img = self.image_tokens(tokens_per_image[k], target=train)
                    if train:  # learn to open and close the image; the model supervises pads with codes
                        targets.append(k)
                        lab = img[:2] + [IGNORE] * tokens_per_image[k] + img[-1:]
                    else:
                        lab = [IGNORE] * len(img)
                    ids += img
                    labels += lab
                    k += 1
                if piece:
                    enc = t.encode(piece)
                    ids += enc
                    labels += enc if train else [IGNORE] * len(enc)
            ids += [t.im_end_id]
            labels += [t.im_end_id] if train else [IGNORE]
            ids += self._nl
            labels += [IGNORE] * len(self._nl)
        if k != len(tokens_per_image):
            raise ChatFormatError(
                f"the conversation has {k} {IMAGE_PLACEHOLDER} placeholder(s) but {len(tokens_per_image)} image(s)")
        if add_generation_prompt:
            head = [t.im_start_id] + self._role_ids["assistant"]
            ids += head
            labels += [IGNORE] * len(head)
        return Encoded(ids, labels, k, targets)

    def encode_sample(self, sample: dict, tokens_per_image: Sequence[int]) -> Encoded:
        """A DESIGN.md sample; images without any placeholder are put before the first user text."""
        turns, _ = normalize_messages(sample["conversations"])
        turns = ensure_placeholders(turns, len(tokens_per_image))
        return self.encode(turns, tokens_per_image)

    def encode_prompt(self, prompt: str, num_images: int, tokens_per_image: Sequence[int],
                      system: str | None = None) -> list[int]:
        turns = ([("system", system)] if system else []) + [("user", prompt)]
        turns = ensure_placeholders(turns, num_images)
        return self.encode(turns, tokens_per_image, add_generation_prompt=True).input_ids


def ensure_placeholders(turns: list[tuple[str, str]], num_images: int) -> list[tuple[str, str]]:
    """If no turn has a placeholder but images are given, put them at the start of the first user turn."""
    if num_images and not any(IMAGE_PLACEHOLDER in text for _, text in turns):
        turns = list(turns)
        for i, (role, text) in enumerate(turns):
            if role == "user":
                turns[i] = (role, (IMAGE_PLACEHOLDER + "\n") * num_images + text)
                break
    return turns


def class_word_tokens(tok: Tokenizer, names: Sequence[str]) -> list[list[int]]:
    """NTP-M targets of multi-word class names ("red circle"): the tokens of each word (" red", " circle"; every
    piece of a word the tokenizer splits, " app" "le"), so a patch of a red circle is positive for both words and
    words shared between classes stay one target."""
    _check_class_names(names)
    return [[t for word in name.split() for t in tok.encode(" " + word)] for name in names]


def _check_class_names(names: Sequence[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ChatFormatError(f"class names must be non-empty strings, got {name!r}")


def class_token_ids(tok: Tokenizer, names: Sequence[str]) -> list[int]:
    """NTP-M: each class name is scored through one vocabulary token, the first token of " name" (as the name
    is written after a space in a prompt). Two names sharing that token cannot be told apart: an error."""
    _check_class_names(names)
    ids, seen = [], {}
    for name in names:
        first = tok.encode(" " + name.strip())[0]
        if first in seen and seen[first] != name:
            raise ChatFormatError(f"classes {seen[first]!r} and {name!r} start with the same token "
                                  f"{tok.decode([first])!r}; rename one so each class has its own first token")
        seen[first] = name
        ids.append(first)
    return ids
