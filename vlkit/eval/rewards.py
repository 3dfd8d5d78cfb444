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
evaluation counts it as a parse failure. The formats live in vlkit.eval.answer_formats (re-exported here).

Built-in rewards (docs/rl.md has the table): accuracy rewards on the eval metrics (`vqa_exact`, `grounding_iou`,
`grounding_acc50`, `ocr_exact`, `ocr_cer`, `anls`, `relaxed_acc`, `reg_match`), each scoring the rollout's answer
the way the eval task scores it; `format`; `caption` (against the synthetic world's objects); `image` and
`image_correct` (the generation verifier); and `accuracy`, which picks the default reward of the sample's task
(`reward_for_task`). A reward that lacks the ground truth it needs raises EvalError naming the sample, the reward
and the missing field.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from PIL import Image

from vlkit.data.synth import verify
from vlkit.data.synth.world import COLOR_NAMES, SHAPES, SIZE_NAMES
from vlkit.errors import UserError
from vlkit.eval import metrics as M
from vlkit.eval.answer_formats import ANSWER_FORMATS, extract_answer, format_prompt, get_format, parse_completion
from vlkit.eval.metrics import EvalError
from vlkit.eval.task_base import Task, answers_of, need
from vlkit.eval.tasks import TASKS

__all__ = ["ANSWER_FORMATS", "REWARDS", "TASK_REWARDS", "Rollout", "caption_objects", "check_weights", "extract_answer",
           "format_prompt", "object_f1", "parse_completion", "reward", "reward_for_task", "score"]


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
    bad = {k: v for k, v in weights.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise UserError(f"grpo.rewards weights must be finite numbers, got {bad}")


def score(rollouts: list[Rollout], weights: dict[str, float]) -> tuple[list[float], dict[str, list[float]]]:
    """Each rollout's weighted total reward and each component's unweighted values ({name: [value per rollout]})."""
    check_weights(weights)
    parts = {name: [_value(name, r) for r in rollouts] for name in weights}
    totals = [sum(weights[name] * parts[name][i] for name in weights) for i in range(len(rollouts))]
    return totals, parts


def _value(name: str, rollout: Rollout) -> float:
    """The reward `name` of `rollout` as a float; a value that is not a finite number is the reward's bug."""
    raw = REWARDS[name](rollout)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise UserError(f"reward {name!r} returned {raw!r} for sample {rollout.sample.get('id')!r}; a reward must "
                        "return a finite number")
    return value


# ---------------------------------------------------------------------------------------------------------
# ground truth and answers, as the eval tasks read them


def _ground_truth(rollout: Rollout, name: str, check: Callable[[dict], object]) -> object:
    """`check(sample)` (an eval task's validate, or a meta lookup), its EvalError prefixed with the reward's name."""
    try:
        return check(rollout.sample)
    except EvalError as exc:
        raise EvalError(f"reward {name!r} cannot score: {exc}") from None


def _answers(rollout: Rollout, name: str) -> list[str]:
    return _ground_truth(rollout, name, answers_of)


def _meta(rollout: Rollout, name: str, key: str):
    return _ground_truth(rollout, name, lambda sample: need(sample, key))


def _eval_task(rollout: Rollout, kind: str) -> Task:
    """The eval task that reads the rollout's answer for a reward of eval task `kind`: the sample's own task when
    it is of that kind (multi_count is a VQA task that reads "the first image" as "first"), else `kind`."""
    base = TASKS[kind]
    own = TASKS.get(str(rollout.sample.get("task")))
    return own if isinstance(own, type(base)) else base


def _answer(rollout: Rollout, kind: str) -> Optional[str]:
    """The rollout's answer (under its format) as eval task `kind` extracts it; None when it does not parse."""
    answer = rollout.answer
    return None if answer is None else _eval_task(rollout, kind).extract(answer)


def _on_answer(rollout: Rollout, name: str, kind: str, metric: Callable[[str, list], float]) -> float:
    """`metric(answer, meta["answers"])` for the reward `name`, the answer read as eval task `kind` reads it; 0 when
    it does not parse (the ground truth is checked first, so a sample without it is an error either way)."""
    answers = _answers(rollout, name)
    answer = _answer(rollout, kind)
    return 0.0 if answer is None else float(metric(answer, answers))


# ---------------------------------------------------------------------------------------------------------
# accuracy rewards: the eval metrics (vlkit.eval.metrics) on the rollout's answer; 0 when it does not parse


@reward("vqa_exact")
def vqa_exact(rollout: Rollout) -> float:
    """VQA accuracy (official VQAv2 rule, the vqa task's headline `vqa_acc`) against meta["answers"]."""
    return _on_answer(rollout, "vqa_exact", "vqa", lambda a, refs: M.vqa_accuracy(a, refs, "official"))


def _boxes(sample: dict) -> list:
    TASKS["grounding"].validate(sample)  # a list of [x1, y1, x2, y2]
    return need(sample, "boxes")


def _grounding(rollout: Rollout, name: str) -> dict:
    boxes = _ground_truth(rollout, name, _boxes)
    answer = _answer(rollout, "grounding")
    return M.grounding_score(answer if answer is not None else "", boxes)


@reward("grounding_iou")
def grounding_iou(rollout: Rollout) -> float:
    """IoU of the first parsed box with the best-matching meta["boxes"] box (0 when no box parses)."""
    return _grounding(rollout, "grounding_iou")["iou"]


@reward("grounding_acc50")
def grounding_acc50(rollout: Rollout) -> float:
    """1 when that IoU is >= 0.5 (the grounding task's acc@0.5)."""
    return _grounding(rollout, "grounding_acc50")["acc@0.5"]


@reward("ocr_exact")
def ocr_exact(rollout: Rollout) -> float:
    """Case-sensitive exact match with one of meta["answers"] (the ocr task's exact_match)."""
    return _on_answer(rollout, "ocr_exact", "ocr", lambda a, refs: M.exact_match(a, refs, case_sensitive=True))


@reward("ocr_cer")
def ocr_cer(rollout: Rollout) -> float:
    """1 - the character error rate against the closest of meta["answers"], clipped to [0, 1]."""
    return _on_answer(rollout, "ocr_cer", "ocr",
                      lambda a, refs: min(1.0, max(0.0, 1.0 - min(M.cer(a, r) for r in refs))))


@reward("anls")
def anls(rollout: Rollout) -> float:
    """ANLS against meta["answers"] (the doc and receipt tasks' headline)."""
    return _on_answer(rollout, "anls", "doc", M.anls)


@reward("relaxed_acc")
def relaxed_acc(rollout: Rollout) -> float:
    """ChartQA relaxed accuracy (numbers within 5%) against meta["answers"] (the chart task's headline)."""
    return _on_answer(rollout, "relaxed_acc", "chart", M.relaxed_accuracy)


@reward("reg_match")
def reg_match(rollout: Rollout) -> float:
    """1 when the answer equals one of meta["answers"] after VQA normalization (the reg task's `match`)."""
    return _on_answer(rollout, "reg_match", "reg", M.normalized_match)


# ---------------------------------------------------------------------------------------------------------
# format


@reward("format")
def format_reward(rollout: Rollout) -> float:
    """1 when the completion follows its answer format (plain: it is not empty), else 0."""
    return float(parse_completion(rollout.text, rollout.answer_format) is not None)


# ---------------------------------------------------------------------------------------------------------
# caption: the objects a caption names against the objects in the scene

_NUMBER = "|".join([r"\d+", *M.VQA_NUMBER_WORDS])
_MENTION = re.compile(
    rf"\b(?:(?P<n>{_NUMBER})\s+)?(?:(?:{'|'.join(SIZE_NAMES)})\s+)?(?P<color>{'|'.join(COLOR_NAMES)})\s+"
    rf"(?P<shape>{'|'.join(SHAPES)})(?:s|es)?\b", re.I)


def caption_objects(text: str) -> Counter:
    """The (color, shape) objects a caption names, counted: "a red circle and two small blue stars" ->
    {(red, circle): 1, (blue, star): 2}. A number (word or digits) right before the phrase counts that many,
    otherwise a phrase counts once; a size word is allowed between; case is ignored."""
    found: Counter = Counter()
    for m in _MENTION.finditer(text):
        n = (m.group("n") or "1").lower()
        found[(m.group("color").lower(), m.group("shape").lower())] += int(M.VQA_NUMBER_WORDS.get(n, n))
    return found


def object_f1(mentioned: Counter, present: Counter) -> float:
    """F1 of two multisets of objects: matched = sum of min counts; precision over mentioned, recall over present.
    0 when nothing matches (or either side is empty)."""
    matched = sum((mentioned & present).values())
    if matched == 0:
        return 0.0
    precision, recall = matched / sum(mentioned.values()), matched / sum(present.values())
    return 2 * precision * recall / (precision + recall)


@reward("caption")
def caption(rollout: Rollout) -> float:
    """F1 of the (color, shape) objects the caption names (caption_objects) against those in meta["objects"] (the
    synthetic world's exact scene). The caption is the `<info>` part under `visionary` (0 when the completion does
    not follow the format), otherwise the whole completion."""
    objects = _meta(rollout, "caption", "objects")
    try:
        present = Counter((str(o["color"]).lower(), str(o["shape"]).lower()) for o in objects)
    except (TypeError, KeyError):
        raise EvalError(f"reward 'caption' cannot score: sample {rollout.sample.get('id')!r} has meta['objects'] "
                        f"without color and shape: {objects!r}") from None
    if "info" in get_format(rollout.answer_format).tags:
        parts = parse_completion(rollout.text, rollout.answer_format)
        if parts is None:
            return 0.0
        text = parts["info"]
    else:
        text = rollout.text
    return object_f1(caption_objects(text), present)


# ---------------------------------------------------------------------------------------------------------
# image: the synthetic world's generation verifier (vlkit.data.synth.verify) on a generated image


def _verdict(rollout: Rollout, name: str) -> Optional[dict]:
    objects = _meta(rollout, name, "objects")
    if rollout.image is None:
        return None
    if not isinstance(rollout.image, Image.Image):
        raise UserError(f"reward {name!r}: rollout.image of sample {rollout.sample.get('id')!r} must be a PIL image, "
                        f"got {type(rollout.image).__name__}")
    relation = (rollout.sample.get("meta") or {}).get("relation")
    try:
        return verify.check_generation(rollout.image.convert("RGB"), objects, relation)
    except (ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"reward {name!r} cannot score sample {rollout.sample.get('id')!r}: bad meta['objects'] "
                        f"or meta['relation'] ({exc})") from None


@reward("image")
def image(rollout: Rollout) -> float:
    """The verifier's three checks of a generated image against meta["objects"] (shape, color) and meta["relation"]:
    the mean of color (every requested color is there), shape (each has the requested shape) and position (the
    relation holds); 1 exactly when the image is correct. 0 when there is no image."""
    verdict = _verdict(rollout, "image")
    return 0.0 if verdict is None else (verdict["color"] + verdict["shape"] + verdict["position"]) / 3.0


@reward("image_correct")
def image_correct(rollout: Rollout) -> float:
    """1 when the verifier finds the generated image correct (the generation task's gen_correct), else 0."""
    verdict = _verdict(rollout, "image_correct")
    return 0.0 if verdict is None else float(verdict["correct"])


# ---------------------------------------------------------------------------------------------------------
# accuracy: the default reward of each task

TASK_REWARDS: dict[str, str] = {
    "vqa": "vqa_exact", "multi_count": "vqa_exact", "change": "vqa_exact", "video_qa": "vqa_exact",
    "grounding": "grounding_iou", "reg": "reg_match", "ocr": "ocr_exact", "doc": "anls", "receipt": "anls",
    "chart": "relaxed_acc", "caption": "caption", "generation": "image",
}


def reward_for_task(task: str) -> str:
    """The default accuracy reward of a task (TASK_REWARDS): what `accuracy` scores a sample of that task with."""
    if task not in TASK_REWARDS:
        raise UserError(f"task {task!r} has no default accuracy reward; tasks with one: {sorted(TASK_REWARDS)} "
                        "(name the reward in grpo.rewards instead of `accuracy`)")
    return TASK_REWARDS[task]


@reward("accuracy")
def accuracy(rollout: Rollout) -> float:
    """The default accuracy reward of the sample's task (reward_for_task(sample["task"]))."""
    task = rollout.sample.get("task")
    if not task:
        raise EvalError(f"reward 'accuracy' cannot score sample {rollout.sample.get('id')!r}: it has no `task` to "
                        "choose the reward by")
    name = reward_for_task(str(task))
    try:
        return REWARDS[name](rollout)
    except EvalError as exc:
        raise EvalError(f"reward 'accuracy' uses {name!r} for task {task!r}: {exc}") from None
