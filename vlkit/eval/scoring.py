"""Scored metrics: what a task hands back to the runner for aggregation, breakdowns and the blind comparison."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from vlkit.eval import metrics as M


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
