"""benchmarks/vluas_ablation.py: its four arms are the quickstart recipe with exactly the intended changes, and its
aggregation pairs arms by seed. Nothing is trained here."""
from __future__ import annotations

import math
import statistics

import pytest

from tests.conftest import load_benchmark
from vlkit.config import Recipe



@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("vluas_ablation")


def stream(stage: dict) -> dict:
    (src,) = stage["data"]["train"]
    return src["synth"]


def test_arms_change_only_target_and_dense(ablation, tmp_path):
    budget = ablation.Budget(vision_steps=7, steps=11, plain_steps=16, batch_size=4)
    assert sorted(a.name for a in ablation.ARMS) == ["codes-dense", "codes-plain", "none-dense", "none-plain"]
    tok, vq = tmp_path / "tok.json", tmp_path / "vq"
    recipes = {a.name: ablation.arm_recipe(a, 3, budget, tmp_path / a.name, tok, vq) for a in ablation.ARMS}
    for name, r in recipes.items():
        Recipe.from_dict(r)  # a valid recipe
        target, dense = name.split("-")
        model, multitask = r["model"], r["stages"][-1]
        assert model["vision_target"] == target and ("vq" in r) == (target == "codes")
        assert ("vision_loss_weight" in model) == (target == "codes")
        assert r["tokenizer"] == {"path": str(tok)} and r["train"]["seed"] == 3
        assert multitask["name"] == "multitask" and multitask["batch_size"] == 4
        assert stream(multitask)["seed"] == 4  # the same multitask stream in every arm
        if dense == "dense":
            assert [s["name"] for s in r["stages"]] == ["vision", "multitask"]
            assert [s["steps"] for s in r["stages"]] == [7, 11]
            assert model["dense_prediction"] and model["dense_from"] == "connector"
            assert stream(r["stages"][0])["seed"] == 3 and stream(multitask)["dense_labels"]
        else:
            assert [s["name"] for s in r["stages"]] == ["multitask"] and multitask["steps"] == 16
            assert not model["dense_prediction"] and "dense_from" not in model
            assert not stream(multitask)["dense_labels"]
    # same multitask data otherwise (tasks and weights), and the same model apart from the two switches
    assert len({str(stream(r["stages"][-1])["tasks"]) for r in recipes.values()}) == 1
    assert ablation.lm_grid_downsample_of(recipes["codes-dense"]) == 16  # the 4 x 4 token grid of 64 px images


def test_aggregate_pairs_arms_by_seed(ablation):
    def run(arm, seed, vqa):
        return {"arm": arm, "seed": seed,
                "scores": {"vqa": {"value": vqa, "ci95": [0, 1], "n": 300}},
                "blind": {"vqa": {"blind": 0.3, "difference": vqa - 0.3}}}

    none, codes = [0.5, 0.6, 0.7], [0.55, 0.62, 0.9]
    res = ablation.aggregate([run("none-dense", s, v) for s, v in enumerate(none)]
                             + [run("codes-dense", s, v) for s, v in enumerate(codes)] + [run("codes-dense", 5, 0.0)])
    arm = res["arms"]["none-dense"]["scores"]["vqa"]
    half = 4.303 * statistics.stdev(none) / math.sqrt(3)
    assert arm["mean"] == pytest.approx(0.6) and arm["ci95"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-4)
    assert arm["n_test"] == 300 and res["arms"]["codes-dense"]["seeds"] == [0, 1, 2, 5]
    diff = res["differences"]["codes_minus_none/dense"]
    assert diff["seeds"] == [0, 1, 2]  # seed 5 has no `none` run to pair with
    d = [c - n for c, n in zip(codes, none)]
    assert diff["scores"]["vqa"]["mean"] == pytest.approx(statistics.fmean(d), abs=1e-4)
    assert diff["scores"]["vqa_minus_blind"]["values"] == pytest.approx(d, abs=1e-4)
    assert "codes_minus_none/plain" not in res["differences"]
