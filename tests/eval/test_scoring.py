"""Scored metrics: per-sample means, corpus mIoU, and the paired difference of two scorings of the same samples."""
import numpy as np
import pytest

from vlkit.eval import metrics as M
from vlkit.eval.scoring import IoUMetric, MeanMetric, paired_difference

INTER = np.array([[4.0, 0.0], [2.0, 1.0], [3.0, 3.0]])
UNION = np.array([[8.0, 2.0], [4.0, 2.0], [3.0, 6.0]])


def test_mean_metric_summarizes_the_chosen_rows():
    m = MeanMetric([1.0, 0.0, 1.0, 1.0])
    s = m.summary([0, 1, 2], resamples=200, seed=0)
    assert s["value"] == pytest.approx(2 / 3) and s["n"] == 3
    assert s["ci95"][0] <= s["value"] <= s["ci95"][1]
    assert m.summary([], resamples=10)["value"] is None


def test_iou_metric_sums_counts_over_images_before_averaging_classes():
    m = IoUMetric(INTER, UNION, ["a", "b"])
    s = m.summary(range(3), resamples=200, seed=0)
    assert s["value"] == pytest.approx(M.mean_iou([9.0, 4.0], [15.0, 10.0])) == pytest.approx((9 / 15 + 4 / 10) / 2)
    assert s["n"] == 3 and s["ci95"][0] <= s["value"] <= s["ci95"][1]
    assert m.summary([]) == {"value": None, "n": 0, "ci95": None}
    assert m.per_class() == pytest.approx({"a": 9 / 15, "b": 4 / 10})
    assert IoUMetric(np.zeros((1, 1)), np.zeros((1, 1)), ["none"]).per_class() == {"none": None}


def test_paired_difference_cancels_what_the_samples_share():
    x = np.linspace(0, 10, 30)  # samples of very different difficulty, the same +0.5 gain on each
    a, b = MeanMetric(list(x + 0.5)), MeanMetric(list(x))
    d = paired_difference(a, b, range(30), resamples=300, seed=0)
    assert d["difference"] == pytest.approx(0.5) and d["ci95"] == pytest.approx([0.5, 0.5])
    assert d["with_images_ci95"][1] - d["with_images_ci95"][0] > 1  # each score alone is uncertain
    inter = np.array([[4.0, 0.0], [2.0, 1.0], [3.0, 3.0]])
    union = np.array([[8.0, 2.0], [4.0, 2.0], [3.0, 6.0]])
    same = paired_difference(IoUMetric(inter, union, ["a", "b"]), IoUMetric(inter, union, ["a", "b"]), range(3))
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
