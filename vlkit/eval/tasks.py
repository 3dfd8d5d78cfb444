"""Evaluation task registry: each task says how to ask the model (prompt, settings, its `predict` step: which pipe
method answers), how to extract the answer from the raw output, and how to score it. Adding a task = one small
subclass (of vlkit.eval.task_base.Task) + `@register`. Multi-image and video tasks live in multi_tasks.py.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

import numpy as np
from PIL import Image

from vlkit.chat import IMAGE_PROMPT
from vlkit.config import ImageGenerationConfig
from vlkit.data.synth import verify
from vlkit.eval import metrics as M
from vlkit.eval.metrics import EvalError
from vlkit.eval.multi_tasks import ChangeTask, MultiCountTask, VideoQATask
from vlkit.eval.scoring import IoUMetric, MeanMetric, TaskScores
from vlkit.eval.task_base import (AnswersTask, ImageOutputTask, Task, VQATask, answers_of, first_human_turn, first_line,
                                  load_inputs, mean_scores, meta, need, resolve)
from vlkit.images import ImageError


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


class REGTask(AnswersTask):
    """Referring expression generation: describe the boxed region. CIDEr-D against the answers + lenient match."""
    name = "reg"
    metrics = ("cider", "match")
    max_new_tokens = 32

    def extract(self, text):
        return " ".join(text.split())

    def score(self, samples, predictions):
        refs = [[M.ptb_tokenize(a) for a in answers_of(s)] for s in samples]
        _, per = M.cider_d([M.ptb_tokenize(p) for p in predictions], refs)
        match = [M.normalized_match(p, answers_of(s)) for s, p in zip(samples, predictions)]
        return mean_scores({"cider": per, "match": match}, predictions)


class OCRTask(AnswersTask):
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


class ChartTask(AnswersTask):
    name = "chart"
    metrics = ("relaxed_acc", "relaxed_acc_official")
    max_new_tokens = 16

    def extract(self, text):
        return first_line(text)

    def score(self, samples, predictions):
        ra = [M.relaxed_accuracy(p, answers_of(s)) for s, p in zip(samples, predictions)]
        ro = [M.relaxed_accuracy(p, answers_of(s), official=True) for s, p in zip(samples, predictions)]
        return mean_scores({"relaxed_acc": ra, "relaxed_acc_official": ro}, predictions)


class DocTask(AnswersTask):
    name = "doc"
    metrics = ("anls",)
    max_new_tokens = 32

    def extract(self, text):
        return first_line(text)

    def score(self, samples, predictions):
        v = [M.anls(p, answers_of(s)) for s, p in zip(samples, predictions)]
        return mean_scores({"anls": v}, predictions)


class ReceiptTask(DocTask):
    """Receipts (a price, the total, the number of items), scored like documents."""
    name = "receipt"


class SegmentationTask(ImageOutputTask):
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


class GenerationTask(ImageOutputTask):
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


for _cls in (VQATask, CaptionTask, GroundingTask, REGTask, OCRTask, ChartTask, DocTask, SegmentationTask,
             GenerationTask, ReceiptTask, MultiCountTask, ChangeTask, VideoQATask):
    register(_cls)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise EvalError(f"unknown eval task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
