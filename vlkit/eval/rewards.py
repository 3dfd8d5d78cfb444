"""Rewards for reinforcement learning (the `grpo` stage, docs/rl.md): a registry of functions that score one
rollout, built on the evaluation metrics, and the answer formats that say where a completion's answer is.

A reward is a function `fn(rollout: Rollout) -> float`, registered by name with the `@reward("name")`
decorator; a recipe weighs them (`grpo.rewards: {vqa_exact: 1.0, format: 0.2}`) and `score` gives each rollout's
weighted total and every component (logged one by one). A reward must be a pure function of the rollout: the
same rollout always gets the same reward.

Answer formats (`ANSWER_FORMATS`, the recipe's `grpo.answer_format` and eval's `--answer-format`) say how the
answer is taken from a completion: `plain` (the whole completion), `think` (`<think>...</think><answer>...
</answer>`) or `visionary` (Visionary-R1: `<info>caption</info><think>...</think><answer>...</answer>`). A
completion whose answer cannot be parsed gets `None` from `extract_answer`: accuracy rewards give it 0 and
evaluation counts it as a parse failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from vlkit.errors import UserError


@dataclass
class Rollout:
    """What a reward sees: one sampled completion for one prompt."""

    text: str  # the completion, decoded (special tokens dropped)
    sample: dict  # the prompt's sample (DESIGN.md format): `task`, `meta` (the ground truth), `conversations`
    answer_format: str = "plain"  # a key of ANSWER_FORMATS
    image: Optional[object] = None  # a generated image (PIL), for VLUAS rollouts that sample visual codes
    extra: dict = field(default_factory=dict)  # anything else a user's reward needs (e.g. the token ids)

    @property
    def answer(self) -> Optional[str]:
        """The completion's answer under its format, or None when it cannot be parsed."""
        return extract_answer(self.text, self.answer_format)


RewardFn = Callable[[Rollout], float]
REWARDS: dict[str, RewardFn] = {}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Registers `fn` as the reward `name` (a user's own reward too: decorate it before the recipe runs)."""

    def register(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise UserError(f"a reward named {name!r} is already registered ({REWARDS[name].__module__}."
                            f"{REWARDS[name].__qualname__})")
        REWARDS[name] = fn
        return fn

    return register


def check_weights(weights: dict) -> None:
    """A recipe's `{reward name: weight}`: every name registered, every weight a finite number."""
    if not weights:
        raise UserError("grpo.rewards is empty; name at least one reward, e.g. {vqa_exact: 1.0}; registered: "
                        f"{sorted(REWARDS)}")
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise UserError(f"unknown reward(s) {unknown}; registered: {sorted(REWARDS)} (register your own with "
                        "@vlkit.eval.rewards.reward('name'))")
    bad = {k: v for k, v in weights.items() if not isinstance(v, (int, float)) or v != v or abs(v) == float("inf")}
    if bad:
        raise UserError(f"grpo.rewards weights must be finite numbers, got {bad}")


def score(rollouts: list[Rollout], weights: dict[str, float]) -> tuple[list[float], dict[str, list[float]]]:
    """Each rollout's weighted total reward and each component's unweighted values ({name: [value per rollout]})."""
    check_weights(weights)
    parts = {name: [float(REWARDS[name](r)) for r in rollouts] for name in weights}
    totals = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(rollouts))]
    return totals, parts


# ---------------------------------------------------------------------------------------------------------
# answer formats


def _tagged(*tags: str) -> re.Pattern:
    body = r"\s*".join(rf"<{t}>(.*?)</{t}>" for t in tags)
    return re.compile(rf"^\s*{body}\s*$", re.S)


ANSWER_FORMATS: dict[str, Optional[re.Pattern]] = {
    "plain": None,  # the whole completion is the answer
    "think": _tagged("think", "answer"),
    "visionary": _tagged("info", "think", "answer"),
}


def extract_answer(text: str, fmt: str = "plain") -> Optional[str]:
    """The answer in `text` under the answer format `fmt`, stripped; None when the text does not follow it."""
    if fmt not in ANSWER_FORMATS:
        raise UserError(f"answer format {fmt!r} is unknown; choose one of {sorted(ANSWER_FORMATS)}")
    pattern = ANSWER_FORMATS[fmt]
    if pattern is None:
        return text.strip()
    m = pattern.match(text)
    return m.group(m.re.groups).strip() if m else None
