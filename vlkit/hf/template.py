"""The chat side of Hugging Face VLMs: the model's own Jinja chat template, rendered as transformers does, and
`HFChatProcessor`, which gives it vlkit's ChatProcessor interface (prompt ids, training labels).

`PROMPT_FORMATS` (keyed by ModelConfig.prompt_format) says how one image token of the template expands in the
text: N copies of the image token (LLaVA) or Idefics3's `<fake_token_around_image><global-img>` + N x `<image>`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vlkit.chat import IGNORE, PLACEHOLDERS, ChatFormatError, Encoded, ensure_placeholders, normalize_messages
from vlkit.errors import CheckpointError, UserError
from vlkit.io import read_json
from vlkit.tokenizer import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER  # vlkit's placeholders in sample text


@dataclass
class HFChatSpec:
    """How an HF VLM's prompts look: its image token and how one image expands in the text."""

    image_token: str
    expand: Callable[[int], str]  # number of image embeddings -> the text that replaces one image token
    video_token: Optional[str] = None  # the template's token for a video clip, repeated N times (None: no videos)


def _llava_spec(image_token: str, tok: Any) -> HFChatSpec:
    return HFChatSpec(image_token=image_token, expand=lambda n: image_token * n)


def _idefics3_spec(image_token: str, tok: Any) -> HFChatSpec:
    # Idefics3Processor without image splitting: <fake_token_around_image><global-img> N x <image> <fake...>
    fake, glob = "<fake_token_around_image>", "<global-img>"
    has_glob = tok.token_to_id(glob) is not None
    return HFChatSpec(image_token=image_token,
                      expand=lambda n: fake + (glob if has_glob else "") + image_token * n + fake)


def _qwen2_vl_spec(image_token: str, tok: Any) -> HFChatSpec:
    # the template writes <|vision_start|><|image_pad|><|vision_end|> (a video: <|video_pad|>); pads repeat N times
    video = QWEN2_VL_VIDEO_TOKEN if tok.token_to_id(QWEN2_VL_VIDEO_TOKEN) is not None else None
    return HFChatSpec(image_token=image_token, expand=lambda n: image_token * n, video_token=video)


QWEN2_VL_VIDEO_TOKEN = "<|video_pad|>"
# ModelConfig.prompt_format -> how one image token of the chat template expands (image token, tokenizer -> spec)
PROMPT_FORMATS: dict[str, Callable[[str, Any], HFChatSpec]] = {"llava": _llava_spec, "idefics3": _idefics3_spec,
                                                               "qwen2_vl": _qwen2_vl_spec}


def read_chat_template(path: Path) -> Optional[str]:
    """chat_template.jinja, chat_template.json (processor) or tokenizer_config.json's `chat_template`."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        p = path / name
        if p.is_file():
            tpl = read_json(p).get("chat_template")
            if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
                first = tpl[0]["template"] if tpl else None
                tpl = next((t["template"] for t in tpl if t.get("name") == "default"), first)
            if tpl:
                return tpl
    return None


class GenerationTag(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant text for its assistant-token
    masks): renders its body. vlkit finds the assistant text by rendering prefixes."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def render_template(template: str, messages: list[dict], add_generation_prompt: bool, **special: Any) -> str:
    """Render an HF chat template the way transformers does (sandboxed jinja2, trim/lstrip blocks, the
    loop-control and `generation` extensions)."""
    def raise_exception(message: str):
        raise UserError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols", GenerationTag])
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **special)
    except jinja2.TemplateError as exc:
        raise CheckpointError(f"the model's chat template cannot be rendered: {exc}") from None


Piece = tuple[str, bool]  # a piece of a rendered prompt: (text, True if a user wrote it, False if the template)
_TEXT_MARK = "\x00{}\x00"  # stands for the k-th text part while the template renders
_TEXT_MARK_RE = re.compile("\x00(\\d+)\x00")


def _joined(pieces: Sequence[Piece]) -> str:
    return "".join(text for text, _ in pieces)


class HFChatProcessor:
    """ChatProcessor's interface for HF models: renders the model's own chat template, expands each image
    token per the model's processor, tokenizes like transformers (BOS added unless the template wrote it).

    User text is text: the template renders a marker in place of each text part, so the pieces it writes are
    told apart from the users' text; image tokens are expanded in the template's pieces only, and user text
    never becomes a special token."""

    video_clips = True  # a clip reaches the model whole, (T, 3, H, W) (Qwen2-VL's video pads)

    def __init__(self, tokenizer: Any, spec: HFChatSpec):
        self.tok = tokenizer
        self.spec = spec
        self._protected = tokenizer.special_ids() | {tokenizer.image_pad_id}  # never from user text
        self._media = {IMAGE_PLACEHOLDER: spec.image_token}
        if spec.video_token is not None:
            self._protected.add(tokenizer.hf.token_to_id(spec.video_token))
            self._media[VIDEO_PLACEHOLDER] = spec.video_token
        self._media_re = re.compile("|".join(re.escape(t) for t in self._media.values()))

    @property
    def takes_videos(self) -> bool:
        """Whether the template has a video token (Qwen2-VL's); `<video>` placeholders are an error otherwise."""
        return self.spec.video_token is not None

    def messages(self, turns: Sequence[tuple[str, str]], texts: list[str]) -> list[dict]:
        """HF messages whose text parts are markers; the texts are appended to `texts` in marker order."""
        out = []
        for role, text in turns:
            parts: list[dict] = []
            for piece in PLACEHOLDERS.split(text):
                if piece in self._media:
                    parts.append({"type": "image" if piece == IMAGE_PLACEHOLDER else "video"})
                    continue
                if parts and parts[-1]["type"] != "text" and piece.startswith("\n"):
                    piece = piece[1:]  # vlkit writes "<image>\n"
                if piece:
                    parts.append({"type": "text", "text": _TEXT_MARK.format(len(texts))})
                    texts.append(piece)
            if VIDEO_PLACEHOLDER in text and not self.takes_videos:
                raise ChatFormatError("this model's chat template takes no videos")
            out.append({"role": role, "content": parts})
        return out

    def render(self, turns: Sequence[tuple[str, str]], add_generation_prompt: bool) -> list[Piece]:
        texts: list[str] = []
        rendered = render_template(self.tok.chat_template, self.messages(turns, texts), add_generation_prompt,
                                   bos_token=self.tok.bos_token or "", eos_token=self.tok.eos_token or "")
        parts = _TEXT_MARK_RE.split(rendered)
        order = [int(k) for k in parts[1::2]]
        if order != sorted(set(order)) or any(k >= len(texts) for k in order):
            raise CheckpointError("the model's chat template repeats or reorders message text; vlkit cannot tell "
                                  "the users' text from the template's")
        pieces = [(parts[0], False)]
        for k, template_text in zip(order, parts[2::2]):
            pieces += [(texts[k], True), (template_text, False)]
        return pieces

    def expand(self, pieces: Sequence[Piece], tokens_per_image: Sequence[int], exact: bool = True,
               tokens_per_video: Sequence[int] = ()) -> list[Piece]:
        """Each image (video) token the template wrote -> the model's text for that image's (clip's) embeddings."""
        given = {self.spec.image_token: tokens_per_image, self.spec.video_token: tokens_per_video}
        seen = dict.fromkeys(given, 0)
        out = []
        for text, from_user in pieces:
            if not from_user:
                chunks, tokens = self._media_re.split(text), self._media_re.findall(text)
                text = chunks[0]
                for token, chunk in zip(tokens, chunks[1:]):
                    k, seen[token] = seen[token], seen[token] + 1
                    if k < len(given[token]):
                        text += (self.spec.expand(given[token][k]) if token == self.spec.image_token else
                                 token * given[token][k])
                    text += chunk
            out.append((text, from_user))
        for token, noun in ((self.spec.image_token, "image"), (self.spec.video_token, "video")):
            n, want = seen[token], len(given[token])
            if (exact and n != want) or n > want:
                raise ChatFormatError(f"the prompt has {n} {noun}(s) but {want} were given")
        return out

    def _encode(self, pieces: Sequence[Piece]) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets. The whole prompt is encoded at once, as transformers does, unless a special
        token would then come from user text; then each piece is encoded on its own, user text with special
        tokens split into plain characters (BOS, if any, before the first piece). A tokenizer whose vocabulary
        still spells a special token from that text (a word-level one) refuses it."""
        full = _joined(pieces)
        add = not (self.tok.bos_token and full.startswith(self.tok.bos_token))
        enc = self.tok.hf.encode(full, add_special_tokens=add)
        user, at = [], 0
        for text, from_user in pieces:
            if from_user:
                user.append((at, at + len(text)))
            at += len(text)
        if not any(i in self._protected and start < b and end > a
                   for i, (start, end) in zip(enc.ids, enc.offsets) for a, b in user):
            return list(enc.ids), list(enc.offsets)
        ids, offsets, at = [], [], 0
        for k, (text, from_user) in enumerate(pieces):
            part = (self.tok.text_hf if from_user else self.tok.hf).encode(text, add_special_tokens=add and k == 0)
            if from_user and set(part.ids) & self._protected:
                raise ChatFormatError(f"the text {text[:40]!r} encodes to a special token of this model's tokenizer")
            ids += part.ids
            offsets += [(start + at, end + at) for start, end in part.offsets]
            at += len(text)
        return ids, offsets

    def encode(self, turns: Sequence[tuple[str, str]], tokens_per_image: Sequence[int],
               add_generation_prompt: bool = False, tokens_per_video: Sequence[int] = ()):
        """-> vlkit.chat.Encoded; labels cover the assistant turns' text as the template renders it."""
        def expanded(upto: int, gen: bool, exact: bool = False) -> list[Piece]:
            return self.expand(self.render(turns[:upto], gen), tokens_per_image, exact, tokens_per_video)

        pieces = expanded(len(turns), add_generation_prompt, exact=True)
        full = _joined(pieces)
        spans = []
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before, upto = _joined(expanded(i, True)), _joined(expanded(i + 1, False))
            if full.startswith(upto) and upto.startswith(before):
                spans.append((len(before), len(upto)))
        ids, offsets = self._encode(pieces)
        labels = [IGNORE] * len(ids)
        for j, (tid, (start, end)) in enumerate(zip(ids, offsets)):
            if end > start and any(a <= start < b for a, b in spans):
                labels[j] = tid
        return Encoded(ids, labels, len(tokens_per_image), [], len(tokens_per_video))

    def encode_prompt(self, prompt: str, num_images: int, tokens_per_image: Sequence[int],
                      system: Optional[str] = None) -> list[int]:
        turns = ([("system", system)] if system else []) + [("user", prompt)]
        return self.encode(ensure_placeholders(turns, num_images), tokens_per_image, True).input_ids

    def encode_sample(self, sample: dict, tokens_per_image: Sequence[int], tokens_per_video: Sequence[int] = ()):
        turns, _ = normalize_messages(sample["conversations"])
        turns = ensure_placeholders(turns, len(tokens_per_image), len(tokens_per_video))
        return self.encode(turns, tokens_per_image, tokens_per_video=tokens_per_video)
