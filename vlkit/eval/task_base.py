"""What every evaluation task builds on: the sample helpers (prompt, images, ground truth), `Job`, the `Task` base
class (how to ask the model, extract and score an answer), the image-output base, and the VQA task that other
short-answer tasks extend. The registry of tasks is vlkit.eval.tasks.

Samples are dicts in the DESIGN.md format; `sample["_base"]` (set by the runner) is the folder that relative
paths in the sample are resolved against.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from PIL import Image

from vlkit.chat import USER_ROLES
from vlkit.eval import metrics as M
from vlkit.eval.answer_formats import format_prompt
from vlkit.eval.metrics import EvalError
from vlkit.eval.scoring import MeanMetric, TaskScores
from vlkit.images import load_image


# ---------------------------------------------------------------------------------------------------------
# Sample helpers
# ---------------------------------------------------------------------------------------------------------

def first_human_turn(sample: dict) -> str:
    """The question as in the data: the first human/user turn (later turns are not evaluated)."""
    for turn in sample.get("conversations") or []:
        if turn.get("from") in USER_ROLES:
            return str(turn.get("value", ""))
    raise EvalError(f"sample {sample.get('id')!r} has no human turn to use as the prompt")


def sample_images(sample: dict) -> list[str]:
    imgs = sample.get("images")
    if imgs is None:
        imgs = [sample["image"]] if sample.get("image") else []
    if isinstance(imgs, str):
        imgs = [imgs]
    return [resolve(sample, p) for p in imgs]


def sample_videos(sample: dict) -> list[list[str]]:
    """The sample's videos given as frame lists, each frame path resolved (a video file is not a frame list)."""
    if "video_objects" in sample:  # decoded frames (tar / HF / in-memory sources)
        return [[] for _ in sample["video_objects"]]
    videos = sample.get("videos")
    if not videos or not all(isinstance(v, list) and v for v in videos):
        raise EvalError(f"sample {sample.get('id')!r} (task {sample.get('task')!r}) needs `videos`: a list of "
                        f"clips, each a non-empty list of frame paths; got {videos!r}")
    return [[resolve(sample, p) for p in clip] for clip in videos]


def resolve(sample: dict, path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        return str(p)
    return str(Path(sample.get("_base", ".")) / p)


def load_inputs(sample: dict) -> list:
    """The sample's images as PIL images: decoded ones (tar / HF sources) or its files; raises ImageError."""
    if "image_objects" in sample:
        return list(sample["image_objects"])
    return [load_image(p) for p in sample_images(sample)]


def meta(sample: dict) -> dict:
    return sample.get("meta") or {}


def need(sample: dict, key: str) -> Any:
    """A ground-truth field of meta, or a clear error naming the sample and the field."""
    m = meta(sample)
    if key not in m or m[key] in (None, [], ""):
        raise EvalError(f"sample {sample.get('id')!r} (task {sample.get('task')!r}) has no meta[{key!r}] ground truth")
    return m[key]


def answers_of(sample: dict) -> list[str]:
    a = need(sample, "answers")
    return [str(x) for x in (a if isinstance(a, list) else [a])]


# ---------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Job:
    """One prediction to make: a task's sample (id `sid`) with its generation settings, under its cache `key`;
    `blind`: the input images are replaced by blanks. `settings["answer_format"]`, when present, is the answer
    format (vlkit.eval.answer_formats) the prompt asks for and the answer is extracted with."""
    task: "Task"
    sample: dict
    sid: str
    settings: dict
    key: str
    blind: bool = False


class Task:
    """A task the model answers in text (`pipe.chat_batch`); subclasses with other outputs override `predict`."""
    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = ()     # names; the first is the headline number
    max_new_tokens: ClassVar[int] = 32
    breakdowns: ClassVar[tuple[str, ...]] = ("heldout", "category")
    input_images: ClassVar[bool] = True         # False: the sample's images are the target (text-to-image)
    text_answer: ClassVar[bool] = True          # the model answers in text (so an answer format applies)

    def prompt(self, sample: dict) -> str:
        return first_human_turn(sample)

    def ask(self, job: Job) -> str:
        """What the model is asked for `job`: the prompt, with the instruction of the job's answer format."""
        return format_prompt(self.prompt(job.sample), job.settings.get("answer_format", "plain"))

    def settings(self, sample: dict, max_new_tokens: Optional[int]) -> dict:
        """Generation settings: part of the prediction cache key."""
        return {"max_new_tokens": max_new_tokens or self.max_new_tokens, "temperature": 0.0}

    def validate(self, sample: dict) -> None:
        """Raise EvalError when the sample lacks the ground truth this task needs (checked before any model call)."""

    def unsupported(self, pipe: Any) -> Optional[str]:
        """None when `pipe` can answer this task, else why the task is skipped."""
        return None

    def inputs(self, sample: dict) -> list:
        """The images the model gets for `sample`; raises ImageError when one cannot be used."""
        return load_inputs(sample) if self.input_images else []

    def batch_key(self, settings: dict) -> str:
        """Jobs with the same key may share one `predict` call (one chat_batch has one max_new_tokens)."""
        return json.dumps(settings, sort_keys=True)

    def predict(self, pipe: Any, jobs: list[Job], images: list[list], out_dir: Path) -> list[Any]:
        """The raw predictions of `jobs` (as cached), whose inputs (`inputs`) are `images`."""
        settings = jobs[0].settings
        texts = pipe.chat_batch([self.ask(j) for j in jobs], **self.media(images),
                                max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"])
        if len(texts) != len(jobs):
            raise RuntimeError(f"pipe.chat_batch returned {len(texts)} answers for {len(jobs)} prompts")
        return [str(t) for t in texts]

    def media(self, inputs: list[list]) -> dict:
        """The keyword arguments of `pipe.chat_batch` that carry each job's `inputs`."""
        return {"images": inputs}

    def prediction(self, raw: Any, out_dir: Path) -> Any:
        """What `score` gets for a cached raw prediction."""
        return self.extract(raw)

    def extract(self, text: str) -> str:
        """The answer inside the raw model output."""
        return text.strip()

    def score(self, samples: list[dict], predictions: list[Any]) -> TaskScores:
        raise NotImplementedError


class ImageOutputTask(Task):
    """A task whose prediction is a PNG written under the eval folder; the cache holds its relative path."""
    folder: ClassVar[str]
    text_answer = False

    def batch_key(self, settings):
        return ""

    def prediction(self, raw, out_dir):
        return str(out_dir / raw)

    def predict(self, pipe, jobs, images, out_dir):
        out = []
        for job, imgs in zip(jobs, images):
            rel = f"{self.folder}/{safe_name(job.key)}.png"
            write_png(self.predict_image(pipe, job, imgs), out_dir / rel)
            out.append(rel)
        return out

    def predict_image(self, pipe: Any, job: Job, images: list) -> Image.Image:
        raise NotImplementedError


def safe_name(key: str) -> str:
    return "".join(c for c in key if c.isalnum())


def write_png(img: Image.Image, path: Path) -> None:
    """`img` as a PNG at `path`, written to a temporary sibling and renamed (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def mean_scores(per_sample: dict[str, list[float]], predictions: list[str]) -> TaskScores:
    """The scores of a text task from per-sample values (a MeanMetric each, in the task's metric order); an
    empty answer is a parse failure."""
    rows = [dict(zip(per_sample, values)) for values in zip(*per_sample.values())]
    return TaskScores({name: MeanMetric(v) for name, v in per_sample.items()}, [not p for p in predictions], rows)


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class AnswersTask(Task):
    def validate(self, sample: dict) -> None:
        answers_of(sample)


class VQATask(AnswersTask):
    name = "vqa"
    metrics = ("vqa_acc", "vqa_acc_lenient")
    max_new_tokens = 16
    breakdowns = ("question_type", "heldout", "category")

    def extract(self, text: str) -> str:
        return first_line(text)

    def score(self, samples, predictions):
        off, len_ = [], []
        for s, p in zip(samples, predictions):
            a = answers_of(s)
            off.append(M.vqa_accuracy(p, a, "official"))
            len_.append(M.vqa_accuracy(p, a, "lenient"))
        return mean_scores({"vqa_acc": off, "vqa_acc_lenient": len_}, predictions)
