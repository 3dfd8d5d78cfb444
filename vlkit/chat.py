"""Conversation -> token ids + labels (loss on assistant turns only), per the image-token contract.

Template (ChatML):
    <|im_start|>system\\n{text}<|im_end|>\\n          (only when a system turn is given)
    <|im_start|>user\\n{text}<|im_end|>\\n
    <|im_start|>assistant\\n{text}<|im_end|>\\n
Each `<image>` in a user turn becomes `<|vision_start|>` + N x `<|image_pad|>` + `<|vision_end|>`, N being the
number of embeddings the encoder + connector make for that image. An `<image>` in an assistant turn is an image
to generate (VLUAS): `<|gen_start|><|vision_start|>` + N pads + `<|vision_end|>`; the model supervises its codes.

Each `<video>` (user turns only) becomes `<|vision_start|>` + N x `<|video_pad|>` + `<|vision_end|>`, N being the
tokens of the whole clip (`VisionLanguageModel.tokens_per_clip`): the same count contract as images. The model
fills video pads with the features of clips, (T, 3, H, W) tensors, and image pads with those of images
(ModelConfig.video_token_id). A checkpoint without a video token (its tokenizer file predates `<|video_pad|>`)
keeps the older path: a clip's frames are encoded one by one as images, its N is the sum of its frames' image
tokens and its pads are `<|image_pad|>` (`ChatProcessor.video_slot_id`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from vlkit.errors import UserError
from vlkit.tokenizer import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Tokenizer

IGNORE = -100  # the label of a position without loss (PyTorch's cross-entropy ignore_index)
# a sample's ("from": human | gpt, LLaVA) or a message's ("role": user | assistant, OpenAI) role -> its ChatML role
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
USER_ROLES = tuple(r for r, chatml in ROLES.items() if chatml == "user")  # ("human", "user")
ASSISTANT_ROLES = tuple(r for r, chatml in ROLES.items() if chatml == "assistant")  # ("gpt", "assistant")
# the user turn of a text-to-image sample (the synthetic world's generation task; Pipeline.generate_image's prompt)
IMAGE_PROMPT = "Draw: {}"
_NOUN = {IMAGE_PLACEHOLDER: "image", VIDEO_PLACEHOLDER: "video"}
PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


class ChatFormatError(UserError):
    """A conversation is malformed (unknown role, bad content, placeholder/image count mismatch)."""


def image_prompt_subject(text: str) -> Optional[str]:
    """What a text-to-image user turn asks to draw (`IMAGE_PROMPT` read back); None for any other text."""
    head, _, tail = IMAGE_PROMPT.partition("{}")
    if not (text.startswith(head) and text.endswith(tail)):
        return None
    return text[len(head):len(text) - len(tail)].strip()


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int = 0
    target_images: list[int] = field(default_factory=list)  # indices of images that are generation targets
    num_videos: int = 0


def normalize_messages(messages: Sequence[dict],
                       videos: Optional[list] = None) -> tuple[list[tuple[str, str]], list[Any]]:
    """DESIGN.md turns ({"from", "value"}) or OpenAI messages ({"role", "content": str | parts}) ->
    [(role, text with <image> placeholders)], [image sources in placeholder order]. Image parts of OpenAI
    messages become placeholders where they stand; their `image_url` objects are returned for the caller
    to resolve. Video parts (vLLM's `video_url`) become `<video>` placeholders and their `video_url` objects
    are appended to `videos` when the caller passes that list (else they are an error)."""
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
                elif kind in ("video_url", "video") and videos is not None:
                    pieces.append(VIDEO_PLACEHOLDER + "\n")
                    videos.append(part.get("video_url", part.get("video")))
                else:
                    allowed = "text, image_url" + (", video_url" if videos is not None else "")
                    raise ChatFormatError(f"messages[{i}].content[{j}] has type {kind!r}; allowed: {allowed}")
            text = "".join(pieces)
        elif content is None:
            text = ""
        else:
            raise ChatFormatError(f"messages[{i}].content must be a string or a list of parts")
        turns.append((ROLES[role], text))
    return turns, images


class ChatProcessor:
    """Applies the template. `tokens_per_image[k]` is N for image k (from the model's geometry)."""

    takes_videos = True  # `<video>` placeholders (processors of HF chat templates may not)

    def __init__(self, tokenizer: Tokenizer, video_token_id: Optional[int] = None):
        """`video_token_id`: the model's video pad (ModelConfig.video_token_id), whose slots clips fill as (T, 3, H,
        W) tensors; None: a clip's frames fill image pads, each encoded as an image (checkpoints before it)."""
        self.tok = tokenizer
        self._nl = tokenizer.encode("\n")
        self._role_ids = {r: tokenizer.encode(r + "\n") for r in ("system", "user", "assistant")}
        self.video_slot_id = tokenizer.image_pad_id if video_token_id is None else video_token_id

    @property
    def video_clips(self) -> bool:
        """Whether a clip reaches the model as one (T, 3, H, W) tensor filling video pads (else: frame by frame)."""
        return self.video_slot_id != self.tok.image_pad_id

    def image_tokens(self, n: int, target: bool = False) -> list[int]:
        t = self.tok
        ids = [t.vision_start_id] + [t.image_pad_id] * n + [t.vision_end_id]
        return [t.gen_start_id] + ids if target else ids

    def video_tokens(self, n: int) -> list[int]:
        return [self.tok.vision_start_id] + [self.video_slot_id] * n + [self.tok.vision_end_id]

    def encode(self, turns: Sequence[tuple[str, str]], tokens_per_image: Sequence[int],
               add_generation_prompt: bool = False, tokens_per_video: Sequence[int] = ()) -> Encoded:
        """`tokens_per_image[k]` / `tokens_per_video[k]`: N of the k-th `<image>` / `<video>` placeholder."""
        t = self.tok
        ids: list[int] = []
        labels: list[int] = []
        given = {IMAGE_PLACEHOLDER: tokens_per_image, VIDEO_PLACEHOLDER: tokens_per_video}
        seen = {IMAGE_PLACEHOLDER: 0, VIDEO_PLACEHOLDER: 0}
        targets: list[int] = []
        for role, text in turns:
            head = [t.im_start_id] + self._role_ids[role]
            ids += head
            labels += [IGNORE] * len(head)
            train = role == "assistant"
            for piece in PLACEHOLDERS.split(text):
                if piece in given:
                    k = seen[piece]
                    if k >= len(given[piece]):
                        raise ChatFormatError(f"the conversation has more {piece} placeholders than "
                                              f"{_NOUN[piece]}s ({len(given[piece])})")
                    slot, lab = self._slot(piece, given[piece][k], train)
                    if train and piece == IMAGE_PLACEHOLDER:
                        targets.append(k)
                    ids += slot
                    labels += lab
                    seen[piece] += 1
                elif piece:
                    enc = t.encode(piece)
                    ids += enc
                    labels += enc if train else [IGNORE] * len(enc)
            ids += [t.im_end_id]
            labels += [t.im_end_id] if train else [IGNORE]
            ids += self._nl
            labels += [IGNORE] * len(self._nl)
        if targets and seen[VIDEO_PLACEHOLDER]:  # generated images are counted among images only (collate)
            raise ChatFormatError(f"a conversation with a {VIDEO_PLACEHOLDER} cannot ask for an image to generate")
        for ph, n in seen.items():
            if n != len(given[ph]):
                raise ChatFormatError(
                    f"the conversation has {n} {ph} placeholder(s) but {len(given[ph])} {_NOUN[ph]}(s)")
        if add_generation_prompt:
            head = [t.im_start_id] + self._role_ids["assistant"]
            ids += head
            labels += [IGNORE] * len(head)
        return Encoded(ids, labels, seen[IMAGE_PLACEHOLDER], targets, seen[VIDEO_PLACEHOLDER])

    def _slot(self, placeholder: str, n: int, train: bool) -> tuple[list[int], list[int]]:
        """The ids and labels of one image or video of `n` tokens; `train`: in an assistant turn."""
        if placeholder == VIDEO_PLACEHOLDER:
            if train:
                raise ChatFormatError(f"a {VIDEO_PLACEHOLDER} in an assistant turn would be a video to generate, "
                                      f"which vlkit cannot do; put videos in user turns")
            ids = self.video_tokens(n)
            return ids, [IGNORE] * len(ids)
        img = self.image_tokens(n, target=train)
        if train:  # learn to open and close the image; the model supervises pads with codes
            return img, img[:2] + [IGNORE] * n + img[-1:]
        return img, [IGNORE] * len(img)

    def encode_sample(self, sample: dict, tokens_per_image: Sequence[int],
                      tokens_per_video: Sequence[int] = ()) -> Encoded:
        """A DESIGN.md sample; images (videos) without any placeholder are put before the first user text."""
        turns, _ = normalize_messages(sample["conversations"])
        turns = ensure_placeholders(turns, len(tokens_per_image), len(tokens_per_video))
        return self.encode(turns, tokens_per_image, tokens_per_video=tokens_per_video)

    def encode_prompt(self, prompt: str, num_images: int, tokens_per_image: Sequence[int],
                      system: str | None = None) -> list[int]:
        turns = ([("system", system)] if system else []) + [("user", prompt)]
        turns = ensure_placeholders(turns, num_images)
        return self.encode(turns, tokens_per_image, add_generation_prompt=True).input_ids


def ensure_placeholders(turns: list[tuple[str, str]], num_images: int,
                        num_videos: int = 0) -> list[tuple[str, str]]:
    """If no turn has a placeholder of a kind but items of it are given, put them at the start of the first user
    turn (images before videos)."""
    heads = "".join((ph + "\n") * n for ph, n in ((IMAGE_PLACEHOLDER, num_images), (VIDEO_PLACEHOLDER, num_videos))
                    if n and not any(ph in text for _, text in turns))
    if heads:
        turns = list(turns)
        for i, (role, text) in enumerate(turns):
            if role == "user":
                turns[i] = (role, heads + text)
                break
    return turns


def media_order(turns: Sequence[tuple[str, str]], num_images: int, num_videos: int) -> list[str]:
    """"image" / "video" for each placeholder, in the order the sequence holds them (after `ensure_placeholders`):
    the order in which a sample's images and video frames reach the model."""
    turns = ensure_placeholders(list(turns), num_images, num_videos)
    return [_NOUN[m] for _, text in turns for m in PLACEHOLDERS.findall(text)]


def in_sequence_order(turns: Sequence[tuple[str, str]], images: Sequence[Any], videos: Sequence[Sequence[Any]]) -> list:
    """Images and the frames of each video as one list in the order the sequence holds them (`media_order`): the
    order in which the model fills their slots. When the counts do not match the placeholders, images then frames
    (encoding the conversation reports the mismatch)."""
    order = media_order(turns, len(images), len(videos))
    if order.count("image") != len(images) or order.count("video") != len(videos):
        return list(images) + [f for clip in videos for f in clip]
    it_img, it_vid = iter(images), iter(videos)
    return [x for kind in order for x in ([next(it_img)] if kind == "image" else next(it_vid))]


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
