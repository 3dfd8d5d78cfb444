"""One request to the serving engine: its sampling parameters, its state while it runs, the events it emits
and the Completion they join into. The engine (vlkit.infer.engine) schedules requests; this module knows how a
request's tokens become text (stop strings, held-back partial characters).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from vlkit.errors import UserError
from vlkit.config import GenerationConfig, SamplingParams


class QueueFullError(UserError):
    """Too many requests are waiting; the server answers 429."""


class ContextLengthError(UserError):
    """The prompt plus the requested tokens do not fit the model's context."""


class TooManyImagesError(UserError):
    """A request has more images than the model accepts (ModelConfig.max_images)."""


class EngineStoppedError(RuntimeError):
    """The engine was stopped (or never started) while a request was pending."""


@dataclass
class EngineEvent:
    """New text of one request; the last event of a request has `finish_reason` set
    ("stop" | "length" | "error" | "cancelled"), all answer token ids and the token counts."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class RequestState:
    """One request's state inside the engine."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], pixels: list[torch.Tensor], params: SamplingParams,
                 gen: GenerationConfig, emit: Callable[[EngineEvent], None], stream: bool = True):
        self.id = next(self._ids)
        self.stream = stream  # False: one event with the whole answer (no per-token wake-ups of the consumer)
        self.prompt_ids = prompt_ids
        self.pixels = pixels
        self.params = params
        self.gen = gen
        self.emit = emit
        self.stop_ids = set(gen.stop_token_ids)
        self.generator: Optional[torch.Generator] = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self.tokens: list[int] = []  # answer tokens (stop token excluded)
        self.generated = 0  # every sampled token, the stop token included
        self.sent = 0  # characters of the answer already emitted
        self.cancelled = False
        self.done = False
        self.submitted_at = time.perf_counter()

    def take_text(self, decode: Callable[[list[int]], str], final: bool) -> tuple[str, bool]:
        """The answer text not yet sent (marked as sent) and whether a stop string was found (the answer ends
        before it). Text that could be the start of a stop string, or a split multi-byte character, is held
        back until `final`; a request that does not stream gets all its text at the end."""
        stops = self.params.stop
        if not (final or self.stream or stops):
            return "", False  # nothing to check or send before the end
        text = decode(self.tokens)
        hit = False
        if stops:
            start = max(0, self.sent - max(len(s) for s in stops))
            found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
            if found:
                text, hit = text[:min(found)], True
        end = len(text)
        if not (final or hit):
            if text.endswith("\ufffd"):
                return "", False
            for s in stops:  # hold back a suffix that may grow into a stop string
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        end = min(end, len(text) - k)
                        break
        end = max(end, self.sent)
        if not (self.stream or final or hit) or end <= self.sent:
            return "", hit
        piece, self.sent = text[self.sent:end], end
        return piece, hit


class Answer:
    """Joins a request's events into its Completion; an error event raises."""

    def __init__(self):
        self.pieces: list[str] = []
        self.ids: list[int] = []

    def add(self, ev: EngineEvent) -> Optional[Completion]:
        """The Completion once `ev` is the final event, else None."""
        self.pieces.append(ev.text)
        self.ids += ev.token_ids
        if ev.finish_reason is None:
            return None
        if ev.finish_reason == "error":
            raise RuntimeError(ev.error)
        return Completion("".join(self.pieces), self.ids, ev.finish_reason, ev.prompt_tokens, ev.completion_tokens)


