"""Answer formats: where a completion's answer is, and how a prompt asks for it. One home for both, used by
evaluation (`vlkit eval --answer-format`) and the `grpo` stage (rewards, prompts); docs/rl.md "Answer formats".

- `plain`: the whole completion is the answer (the default; prompts are left as they are).
- `think`: `<think>reasoning</think><answer>answer</answer>`.
- `visionary` (Visionary-R1): `<info>caption</info><think>reasoning</think><answer>answer</answer>`.

Parsing rules for a tagged format (`parse_completion`): after stripping whitespace at both ends, the completion
is exactly the format's parts in order, each `<tag>content</tag>`, with only whitespace between them. Tags are
lower-case as written (`<Answer>` is not a tag). A part's content is taken as it is (stripped), other markup
included (`<answer><ref>the star</ref><box>(1,2),(3,4)</box></answer>` keeps the grounding text), but it may
not contain one of the format's own tags: a repeated or nested `<answer>` is a parse failure, never a guess.
The answer must be non-empty (other parts may be empty); under `plain` an empty completion is a parse failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from vlkit.errors import UserError


@dataclass(frozen=True)
class AnswerFormat:
    """A completion template: its parts (`tags`, the last is the answer; none for plain) and the instruction
    appended to a prompt to ask for it."""

    name: str
    tags: tuple[str, ...]
    instruction: str
    pattern: Optional[re.Pattern] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        body = r"\s*".join(rf"<{t}>(.*?)</{t}>" for t in self.tags)
        object.__setattr__(self, "pattern", re.compile(rf"^\s*{body}\s*$", re.S) if self.tags else None)

    def parse(self, text: str) -> Optional[dict[str, str]]:
        """{part: content (stripped)} with the answer under "answer", or None when `text` does not follow the
        format (see the module docstring for the rules)."""
        if self.pattern is None:
            answer = text.strip()
            return {"answer": answer} if answer else None
        m = self.pattern.match(text)
        if m is None:
            return None
        parts = {tag: m.group(k + 1).strip() for k, tag in enumerate(self.tags)}
        own_tags = [f"<{t}>" for t in self.tags] + [f"</{t}>" for t in self.tags]
        if any(t in content for content in parts.values() for t in own_tags) or not parts[self.tags[-1]]:
            return None
        return {**parts, "answer": parts[self.tags[-1]]}

    def prompt(self, prompt: str) -> str:
        """`prompt` asking for this format: the instruction on a line of its own after it (plain: unchanged)."""
        return f"{prompt.rstrip()}\n{self.instruction}" if self.instruction else prompt


ANSWER_FORMATS: dict[str, AnswerFormat] = {f.name: f for f in (
    AnswerFormat("plain", (), ""),
    AnswerFormat("think", ("think", "answer"),
                 "First think in <think></think>, then give the answer in <answer></answer>."),
    AnswerFormat("visionary", ("info", "think", "answer"),
                 "First describe the image in <info></info>, then think in <think></think>, then give the answer "
                 "in <answer></answer>."),
)}


def get_format(fmt: str) -> AnswerFormat:
    if fmt not in ANSWER_FORMATS:
        raise UserError(f"answer format {fmt!r} is unknown; choose one of {sorted(ANSWER_FORMATS)}")
    return ANSWER_FORMATS[fmt]


def parse_completion(text: str, fmt: str = "plain") -> Optional[dict[str, str]]:
    """The parts of `text` under the answer format `fmt` ({"info", "think", "answer"} as the format has them),
    or None when the text does not follow it."""
    return get_format(fmt).parse(text)


def extract_answer(text: str, fmt: str = "plain") -> Optional[str]:
    """The answer in `text` under the answer format `fmt`, stripped; None when the text does not follow it."""
    parts = parse_completion(text, fmt)
    return None if parts is None else parts["answer"]


def format_prompt(prompt: str, fmt: str = "plain") -> str:
    """`prompt` with the instruction that asks for the answer format `fmt` (unchanged for plain)."""
    return get_format(fmt).prompt(prompt)
