"""Generation settings: text decoding (GenerationConfig), image generation (ImageGenerationConfig) and a serving
request's sampling parameters (SamplingParams). They are checked when built, by the validator of every config
(vlkit.config.base.check_fields), and again by `validate()` after a change; errors name the keyword argument
(`temperature=-1.0 must be in [0, 100]`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vlkit.config.base import _Checked, check_fields, non_negative, positive, ranged

SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)  # a 64-bit signed integer (torch.Generator.manual_seed takes these)


def _seed() -> Optional[int]:
    return ranged(None, *SEED_RANGE)


def _temperature(default: float) -> float:
    return ranged(default, 0, 100)  # 0: greedy


def _top_p() -> float:
    return ranged(1.0, 0, 1, lo_open=True)  # 1: off


class _Settings(_Checked):
    SECTION = ""  # keyword arguments: errors read `top_p=...`, not `generation.top_p=...`

    def validate(self) -> None:
        check_fields(self, self.SECTION)


@dataclass
class GenerationConfig(_Settings):
    max_new_tokens: int = positive(64)
    temperature: float = _temperature(0.0)
    top_k: int = non_negative(0)  # 0: off
    top_p: float = _top_p()
    stop_token_ids: tuple[int, ...] = non_negative(())  # token ids
    seed: Optional[int] = _seed()
    vocab_limit: Optional[int] = positive(None)  # only ids below this may be generated (VLUAS: text ids, not codes)
    suppress_token_ids: tuple[int, ...] = non_negative(())  # ids never generated (a grpo stage's image/video pads)


@dataclass
class ImageGenerationConfig(_Settings):
    # classifier-free guidance: uncond + scale * (cond - uncond); 1 = cond only, 0 = uncond only
    cfg_scale: float = ranged(1.5, 0, 50)
    temperature: float = _temperature(1.0)
    top_k: int = non_negative(0)
    top_p: float = _top_p()
    seed: Optional[int] = _seed()


@dataclass
class SamplingParams(_Settings):
    """One serving request's sampling (vlkit.infer.engine)."""

    max_new_tokens: int = positive(64)  # the OpenAI request's max_tokens
    temperature: float = _temperature(0.0)
    top_p: float = _top_p()
    top_k: int = non_negative(0)
    stop: tuple[str, ...] = ()  # stop strings (not part of the answer)
    seed: Optional[int] = _seed()
