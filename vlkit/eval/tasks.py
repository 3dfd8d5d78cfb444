"""Evaluation task registry: each task says how to ask the model (prompt, settings, its `predict` step: which pipe
method answers), how to extract the answer from the raw output, and how to score it. Adding a task = one small
subclass + `@register`.

Samples are dicts in the DESIGN.md format; `sample["_base"]` (set by the runner) is the folder that relative
paths in the sample are resolved against.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
from PIL import Image

from vlkit.chat import IMAGE_PROMPT, USER_ROLES
from vlkit.data.synth import verify
from vlkit.eval import metrics as M
from vlkit.eval.metrics import EvalError
from vlkit.eval.scoring import IoUMetric, MeanMetric, TaskScores
from vlkit.images import ImageError, load_image
from vlkit.config import ImageGenerationConfig



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
    `blind`: the input images are replaced by blanks."""
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

    def prompt(self, sample: dict) -> str:
        return first_human_turn(sample)

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
        texts = pipe.chat_batch([self.prompt(j.sample) for j in jobs], **self.media(images),
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


class _ImageOutputTask(Task):
    """A task whose prediction is a PNG written under the eval folder; the cache holds its relative path."""
    folder: ClassVar[str]

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


class _AnswersTask(Task):
    def validate(self, sample: dict) -> None:
        answers_of(sample)


class VQATask(_AnswersTask):
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


class CaptionTask(Task):
    name = "caption"
    metrics = ("cider",)
    max_new_tokens = 48
    refs_key = "captions"

    def validate(self, sample):
        need(sample, self.refs_key)

    def extract(self, text):
        return " ".join(text.split())

    def score(self, samples, predictions):
        refs = [[M.ptb_tokenize(r) for r in need(s, self.refs_key)] for s in samples]
        _, per = M.cider_d([M.ptb_tokenize(p) for p in predictions], refs)
        return mean_scores({"cider": per}, predictions)


class GroundingTask(Task):
    name = "grounding"
    metrics = ("acc@0.5", "miou")
    max_new_tokens = 48

    def validate(self, sample):
        boxes = need(sample, "boxes")
        if not all(isinstance(b, (list, tuple)) and len(b) == 4 for b in boxes):
            raise EvalError(f"sample {sample.get('id')!r}: meta['boxes'] must be a list of [x1,y1,x2,y2], got {boxes!r}")

    def score(self, samples, predictions):
        res = [M.grounding_score(p, need(s, "boxes")) for s, p in zip(samples, predictions)]
        return TaskScores({"acc@0.5": MeanMetric([r["acc@0.5"] for r in res]),
                           "miou": MeanMetric([r["iou"] for r in res])},
                          [r["parse_failed"] for r in res],
                          [{"iou": r["iou"], "box": r["box"], "parse_failed": r["parse_failed"]} for r in res])


class REGTask(_AnswersTask):
    """Referring expression generation: describe the boxed region. CIDEr-D against the answers + lenient match."""
    name = "reg"
    metrics = ("cider", "match")
    max_new_tokens = 32

    def extract(self, text):
        return " ".join(text.split())

    def score(self, samples, predictions):
        refs = [[M.ptb_tokenize(a) for a in answers_of(s)] for s in samples]
        _, per = M.cider_d([M.ptb_tokenize(p) for p in predictions], refs)
        match = [float(any(M.normalize_vqa_answer(p) == M.normalize_vqa_answer(a) for a in answers_of(s)))
                 for s, p in zip(samples, predictions)]
        return mean_scores({"cider": per, "match": match}, predictions)


class OCRTask(_AnswersTask):
    name = "ocr"
    metrics = ("exact_match", "exact_match_nocase", "cer")
    max_new_tokens = 32

    def score(self, samples, predictions):
        em, emi, cer = [], [], []
        for s, p in zip(samples, predictions):
            a = answers_of(s)
            em.append(M.exact_match(p, a, case_sensitive=True))
            emi.append(M.exact_match(p, a, case_sensitive=False))
            cer.append(min(M.cer(p, x) for x in a))
        return mean_scores({"exact_match": em, "exact_match_nocase": emi, "cer": cer}, predictions)


class ChartTask(_AnswersTask):
    name = "chart"
    metrics = ("relaxed_acc", "relaxed_acc_official")
    max_new_tokens = 16

    def extract(self, text):
        return first_line(text)

    def score(self, samples, predictions):
        ra = [M.relaxed_accuracy(p, answers_of(s)) for s, p in zip(samples, predictions)]
        ro = [M.relaxed_accuracy(p, answers_of(s), official=True) for s, p in zip(samples, predictions)]
        return mean_scores({"relaxed_acc": ra, "relaxed_acc_official": ro}, predictions)


class DocTask(_AnswersTask):
    name = "doc"
    metrics = ("anls",)
    max_new_tokens = 32

    def extract(self, text):
        return first_line(text)

    def score(self, samples, predictions):
        v = [M.anls(p, answers_of(s)) for s, p in zip(samples, predictions)]
        return mean_scores({"anls": v}, predictions)


class SegmentationTask(_ImageOutputTask):
    """Dense prediction: `pipe.segment(image, classes)`; the prediction is a mask PNG (255: no class)."""
    name = "segmentation"
    metrics = ("miou",)
    folder = "masks"

    def unsupported(self, pipe):
        able = getattr(pipe, "can_segment", getattr(pipe, "can_generate_images", False))
        if not able or not callable(getattr(pipe, "segment", None)):
            return "the model has no dense-prediction head (pipe.segment unavailable)"
        return None

    def inputs(self, sample):
        images = load_inputs(sample)
        if not images:
            raise ImageError("segmentation sample has no image")
        return images

    def predict_image(self, pipe, job, images):
        classes = job.settings["classes"]
        mask = np.asarray(pipe.segment(images[0], classes)).astype(np.int64)
        if mask.ndim != 2:
            raise RuntimeError(f"pipe.segment returned shape {mask.shape}; expected HxW")
        # labels outside the class list become 255 = "no class" (classes are far fewer than 255)
        mask = np.where((mask >= 0) & (mask < len(classes)), mask, 255).astype(np.uint8)
        return Image.fromarray(mask, "L")

    def settings(self, sample, max_new_tokens):
        return {"classes": list(need(sample, "classes"))}

    def validate(self, sample):
        need(sample, "mask")
        need(sample, "classes")

    def score(self, samples, predictions):
        names: list[str] = []
        for s in samples:
            for c in need(s, "classes"):
                if c not in names:
                    names.append(c)
        col = {c: k for k, c in enumerate(names)}
        inter = np.zeros((len(samples), len(names)), dtype=np.float64)
        union = np.zeros_like(inter)
        failed = []
        for r, (s, p) in enumerate(zip(samples, predictions)):
            classes = list(need(s, "classes"))
            gt = np.array(Image.open(resolve(s, need(s, "mask"))))
            if p:
                with Image.open(p) as im:
                    if im.size != (gt.shape[1], gt.shape[0]):  # model resolution != mask resolution
                        im = im.resize((gt.shape[1], gt.shape[0]), Image.NEAREST)
                    pred = np.array(im)
                failed.append(False)
            else:  # no usable mask: every pixel counts as "no class"
                pred = np.full(gt.shape, len(classes), dtype=np.int64)
                failed.append(True)
            i, u = M.segmentation_counts(pred, gt, len(classes))
            for k, c in enumerate(classes):
                inter[r, col[c]] += i[k]
                union[r, col[c]] += u[k]
        metric = IoUMetric(inter, union, names)
        return TaskScores({"miou": metric}, failed, [{"parse_failed": f} for f in failed],
                          {"per_class_iou": metric.per_class()})


class GenerationTask(_ImageOutputTask):
    """Text-to-image: the image is judged by the synthetic world's verifier (shapes, colors, relation)."""
    name = "generation"
    metrics = ("gen_correct",)
    input_images = False
    folder = "generations"

    def unsupported(self, pipe):
        if not getattr(pipe, "can_generate_images", False):
            return "the model cannot generate images (pipe.can_generate_images is false)"
        return None

    def prompt(self, sample):
        p = meta(sample).get("prompt")
        if p:
            return str(p)
        text = first_human_turn(sample).strip()
        return text[len(_DRAW):].strip() if text.startswith(_DRAW) else text

    def predict_image(self, pipe, job, images):
        return pipe.generate_image(self.prompt(job.sample), **job.settings)

    def settings(self, sample, max_new_tokens):
        # the library's sampling defaults, with a stable per-sample seed: reruns reproduce the image, samples differ
        return {**asdict(ImageGenerationConfig()), "seed": stable_seed(sample.get("id"))}

    def validate(self, sample):
        need(sample, "objects")

    def score(self, samples, predictions):
        correct, failed = [], []
        for s, p in zip(samples, predictions):
            if not p:
                correct.append(0.0)
                failed.append(True)
                continue
            with Image.open(p) as im:
                verdict = verify.check_generation(im.convert("RGB"), need(s, "objects"), meta(s).get("relation"))
            correct.append(float(bool(verdict.get("correct"))))
            failed.append(False)
        return TaskScores({"gen_correct": MeanMetric(correct)}, failed, [{"gen_correct": c} for c in correct])


_DRAW = IMAGE_PROMPT.split("{}")[0].strip()  # "Draw:", the text-to-image prompt's prefix


def stable_seed(key: Any) -> int:
    return int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16) % (2 ** 31)


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls()
    return cls


from vlkit.eval.multi_tasks import ChangeTask, MultiCountTask, VideoQATask  # noqa: E402 (they build on VQATask)

for _cls in (VQATask, CaptionTask, GroundingTask, REGTask, OCRTask, ChartTask, DocTask, SegmentationTask,
             GenerationTask, MultiCountTask, ChangeTask, VideoQATask):
    register(_cls)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise EvalError(f"unknown eval task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
