"""Evaluation task registry: each task says how to ask the model (prompt, kind, settings), how to extract the
answer from the raw output, and how to score it. Adding a task = one small subclass + `@register`.

Samples are dicts in the DESIGN.md format; `sample["_base"]` (set by the runner) is the folder that relative
paths in the sample are resolved against.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np

from vlkit.eval import metrics as M
from vlkit.eval.metrics import EvalError

HUMAN_ROLES = ("human", "user")


# ---------------------------------------------------------------------------------------------------------
# Scored metrics: what a task hands back to the runner for aggregation and breakdowns
# ---------------------------------------------------------------------------------------------------------

@dataclass
class MeanMetric:
    """A metric whose dataset value is the mean of per-sample values."""
    values: list[float]

    def summary(self, rows: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict:
        return M.summarize([self.values[i] for i in rows], resamples, seed)

    def statistic(self, rows: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
        """The value on bootstrap resamples of `rows` (bootstrap_ci's count-matrix form)."""
        return M.mean_statistic([self.values[i] for i in rows])


@dataclass
class IoUMetric:
    """mIoU over a set: per-class intersections and unions summed over images, then averaged over classes."""
    inter: np.ndarray  # (n_samples, n_classes)
    union: np.ndarray
    classes: list[str]

    def summary(self, rows: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict:
        rows = list(rows)
        if not rows:
            return {"value": None, "n": 0, "ci95": None}
        inter, union = self.inter[rows], self.union[rows]
        value = M.mean_iou(inter.sum(0).tolist(), union.sum(0).tolist())
        ci = M.bootstrap_ci(len(rows), self.statistic(rows), resamples, seed)
        return {"value": value, "n": len(rows), "ci95": list(ci) if ci else None}

    def statistic(self, rows: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
        rows = list(rows)
        return M.miou_statistic(self.inter[rows], self.union[rows])

    def per_class(self) -> dict[str, Optional[float]]:
        i, u = self.inter.sum(0), self.union.sum(0)
        return {c: (float(i[k] / u[k]) if u[k] > 0 else None) for k, c in enumerate(self.classes)}


def paired_difference(a: Any, b: Any, rows: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict:
    """`a - b` for two scorings of the same samples (MeanMetric or IoUMetric, e.g. with images and blind): each
    value with its own CI, and the difference with a 95% paired bootstrap CI. Paired: every resample draws the
    same samples for both, so how hard the drawn samples are cancels out of the difference."""
    rows = list(rows)
    sa, sb = a.summary(rows, resamples, seed), b.summary(rows, resamples, seed)
    stat_a, stat_b = a.statistic(rows), b.statistic(rows)
    ci = M.bootstrap_ci(len(rows), lambda w: stat_a(w) - stat_b(w), resamples, seed)
    diff = None if sa["value"] is None or sb["value"] is None else sa["value"] - sb["value"]
    return {"with_images": sa["value"], "with_images_ci95": sa["ci95"], "blind": sb["value"],
            "blind_ci95": sb["ci95"], "difference": diff, "ci95": list(ci) if ci else None}


@dataclass
class TaskScores:
    metrics: dict[str, Any]                     # name -> MeanMetric | IoUMetric, first = primary
    parse_failed: list[bool]                    # per sample
    per_sample: list[dict] = field(default_factory=list)  # JSON-able per-sample details
    extra: dict = field(default_factory=dict)   # task-level extras (per-class IoU, ...)


# ---------------------------------------------------------------------------------------------------------
# Sample helpers
# ---------------------------------------------------------------------------------------------------------

def first_human_turn(sample: dict) -> str:
    """The question as in the data: the first human/user turn (later turns are not evaluated)."""
    for turn in sample.get("conversations") or []:
        if turn.get("from") in HUMAN_ROLES:
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

class Task:
    name: ClassVar[str]
    kind: ClassVar[str] = "chat"                # chat | generate_image | segment: which pipe method answers
    metrics: ClassVar[tuple[str, ...]] = ()     # names; the first is the headline number
    max_new_tokens: ClassVar[int] = 32
    breakdowns: ClassVar[tuple[str, ...]] = ("heldout", "category")

    def prompt(self, sample: dict) -> str:
        return first_human_turn(sample)

    def settings(self, sample: dict, max_new_tokens: Optional[int]) -> dict:
        """Generation settings: part of the prediction cache key."""
        return {"max_new_tokens": max_new_tokens or self.max_new_tokens, "temperature": 0.0}

    def validate(self, sample: dict) -> None:
        """Raise EvalError when the sample lacks the ground truth this task needs (checked before any model call)."""

    def extract(self, text: str) -> str:
        """The answer inside the raw model output."""
        return text.strip()

    def score(self, samples: list[dict], predictions: list[Any]) -> TaskScores:
        raise NotImplementedError


def _first_line(text: str) -> str:
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
        return _first_line(text)

    def score(self, samples, predictions):
        off, len_ = [], []
        for s, p in zip(samples, predictions):
            a = answers_of(s)
            off.append(M.vqa_accuracy(p, a, "official"))
            len_.append(M.vqa_accuracy(p, a, "lenient"))
        return TaskScores({"vqa_acc": MeanMetric(off), "vqa_acc_lenient": MeanMetric(len_)},
                          [not p for p in predictions],
                          [{"vqa_acc": a, "vqa_acc_lenient": b} for a, b in zip(off, len_)])


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
        return TaskScores({"cider": MeanMetric(per)}, [not p for p in predictions], [{"cider": v} for v in per])


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
        return TaskScores({"cider": MeanMetric(per), "match": MeanMetric(match)}, [not p for p in predictions],
                          [{"cider": c, "match": m} for c, m in zip(per, match)])


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
        return TaskScores({"exact_match": MeanMetric(em), "exact_match_nocase": MeanMetric(emi), "cer": MeanMetric(cer)},
                          [not p for p in predictions],
                          [{"exact_match": a, "exact_match_nocase": b, "cer": c} for a, b, c in zip(em, emi, cer)])


class ChartTask(_AnswersTask):
    name = "chart"
    metrics = ("relaxed_acc", "relaxed_acc_official")
    max_new_tokens = 16

    def extract(self, text):
        return _first_line(text)

    def score(self, samples, predictions):
        ra = [M.relaxed_accuracy(p, answers_of(s)) for s, p in zip(samples, predictions)]
        ro = [M.relaxed_accuracy(p, answers_of(s), official=True) for s, p in zip(samples, predictions)]
        return TaskScores({"relaxed_acc": MeanMetric(ra), "relaxed_acc_official": MeanMetric(ro)},
                          [not p for p in predictions],
                          [{"relaxed_acc": a, "relaxed_acc_official": b} for a, b in zip(ra, ro)])


class DocTask(_AnswersTask):
    name = "doc"
    metrics = ("anls",)
    max_new_tokens = 32

    def extract(self, text):
        return _first_line(text)

    def score(self, samples, predictions):
        v = [M.anls(p, answers_of(s)) for s, p in zip(samples, predictions)]
        return TaskScores({"anls": MeanMetric(v)}, [not p for p in predictions], [{"anls": x} for x in v])


class SegmentationTask(Task):
    """Dense prediction: `pipe.segment(image, classes)`; the prediction is a mask PNG written by the runner."""
    name = "segmentation"
    kind = "segment"
    metrics = ("miou",)

    def settings(self, sample, max_new_tokens):
        return {"classes": list(need(sample, "classes"))}

    def validate(self, sample):
        need(sample, "mask")
        need(sample, "classes")

    def score(self, samples, predictions):
        from PIL import Image

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


class GenerationTask(Task):
    """Text-to-image: the image is judged by the synthetic world's verifier (shapes, colors, relation)."""
    name = "generation"
    kind = "generate_image"
    metrics = ("gen_correct",)

    def prompt(self, sample):
        p = meta(sample).get("prompt")
        if p:
            return str(p)
        text = first_human_turn(sample).strip()
        return text[len("Draw:"):].strip() if text.startswith("Draw:") else text

    def settings(self, sample, max_new_tokens):
        from vlkit.infer.generate import ImageGenerationConfig

        # the library's sampling defaults, with a stable per-sample seed: reruns reproduce the image, samples differ
        return {**asdict(ImageGenerationConfig()), "seed": stable_seed(sample.get("id"))}

    def validate(self, sample):
        need(sample, "objects")

    def score(self, samples, predictions):
        from PIL import Image

        try:
            from vlkit.data.synth.verify import check_generation
        except ImportError as exc:
            raise EvalError(f"generation scoring needs vlkit.data.synth.verify.check_generation ({exc})") from None
        correct, failed = [], []
        for s, p in zip(samples, predictions):
            if not p:
                correct.append(0.0)
                failed.append(True)
                continue
            with Image.open(p) as im:
                verdict = check_generation(im.convert("RGB"), need(s, "objects"), meta(s).get("relation"))
            correct.append(float(bool(verdict.get("correct"))))
            failed.append(False)
        return TaskScores({"gen_correct": MeanMetric(correct)}, failed, [{"gen_correct": c} for c in correct])


def stable_seed(key: Any) -> int:
    import hashlib

    return int(hashlib.sha256(str(key).encode()).hexdigest()[:8], 16) % (2 ** 31)


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls()
    return cls


for _cls in (VQATask, CaptionTask, GroundingTask, REGTask, OCRTask, ChartTask, DocTask, SegmentationTask,
             GenerationTask):
    register(_cls)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise EvalError(f"unknown eval task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
