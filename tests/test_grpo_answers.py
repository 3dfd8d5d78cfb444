"""benchmarks/grpo_answers.py: its arms are the intended stages, its templated answers are what the rewards and the
evaluation read as right, its budget arithmetic and its pairing (by sample and by seed). Nothing is trained here."""
from __future__ import annotations

import math
import statistics

import pytest

from tests.conftest import load_benchmark
from vlkit.config import Recipe
from vlkit.data.synth.stream import synth_stream
from vlkit.eval.answer_formats import ANSWER_FORMATS, parse_completion
from vlkit.eval.rewards import Rollout, score



@pytest.fixture(scope="module")
def bench():
    return load_benchmark("grpo_answers")


def test_arms_are_the_intended_stages(bench, tmp_path):
    s = bench.Settings(batch_size=12, prompts=3, generations=5, lr_sft=3e-4, lr_grpo=7e-5, max_new_tokens=20,
                       max_new_tokens_visionary=90)
    data = {"plain": tmp_path / "plain.jsonl", "visionary": tmp_path / "visionary.jsonl"}
    init = tmp_path / "init"
    assert [a.name for a in bench.ARMS] == ["sft", "grpo", "grpo_visionary"]
    recipes = {}
    for arm in bench.ARMS:
        steps = {p: 3 + k for k, p in enumerate(arm.phases)}
        r = bench.recipe(init, steps, s, data, tmp_path / arm.name, seed=4)
        Recipe.from_dict(r)  # a valid recipe
        assert r["init"] == str(init) and r["train"]["seed"] == 4 and r["train"]["out"] == str(tmp_path / arm.name)
        assert [st["steps"] for st in r["stages"]] == list(steps.values())
        recipes[arm.name] = r["stages"]
    (sft,), (grpo,), (fmt, vis) = recipes["sft"], recipes["grpo"], recipes["grpo_visionary"]
    # the same training samples; the visionary arm's are the templated ones
    assert sft["data"] == grpo["data"] == {"max_length": s.max_length, "train": [{"path": str(data["plain"])}]}
    assert fmt["data"]["train"] == vis["data"]["train"] == [{"path": str(data["visionary"])}]
    # sft trains what grpo trains (connector + LM), at the sft settings
    assert (sft["train"], sft["batch_size"], sft["lr"]) == ("sft", 12, 3e-4) and "grpo" not in sft
    assert (fmt["train"], fmt["batch_size"], fmt["lr"]) == ("sft", 12, 3e-4)
    assert (grpo["train"], grpo["batch_size"], grpo["lr"]) == ("grpo", 3, 7e-5)
    assert grpo["grpo"] == {"num_generations": 5, "temperature": 1.0, "max_new_tokens": 20,
                            "rewards": {"accuracy": 1.0}, "answer_format": "plain"}
    assert vis["grpo"] == {**grpo["grpo"], "max_new_tokens": 90, "answer_format": "visionary",
                           "rewards": {"accuracy": 1.0, "format": 0.2, "caption": 0.2}}
    assert [a.answer_format for a in bench.ARMS] == ["plain", "plain", "visionary"]


@pytest.mark.parametrize("task", ["vqa", "grounding"])
def test_templated_answers_are_right_by_the_rewards(bench, task):
    """The format SFT's targets follow the format, and the rewards (the eval's metrics) score them 1."""
    stream = synth_stream({"tasks": [task]}, 3)
    for g in range(6):
        sample = stream(g)
        t = bench.templated(sample, "visionary")
        (user, answer) = t["conversations"]
        assert user["value"] == sample["conversations"][0]["value"] + "\n" + ANSWER_FORMATS["visionary"].instruction
        parts = parse_completion(answer["value"], "visionary")
        assert parts["answer"] == sample["conversations"][1]["value"] and parts["think"] == ""
        _, rewards = score([Rollout(answer["value"], t, "visionary")], {"accuracy": 1, "format": 1, "caption": 1})
        assert rewards == {"accuracy": [1.0], "format": [1.0], "caption": [1.0]}
        assert sample["conversations"][0]["value"] in user["value"]  # the original is not changed
        assert bench.templated(sample, "plain") is sample


def test_caption_is_left_to_right_and_needs_objects(bench):
    objects = [{"color": "red", "shape": "circle", "box": [600, 0, 700, 100]},
               {"color": "orange", "shape": "star", "box": [0, 0, 100, 100]},
               {"color": "blue", "shape": "square", "box": [300, 500, 400, 600]}]
    assert bench.caption_of(objects) == "an orange star, a blue square and a red circle"
    with pytest.raises(ValueError, match="objects"):
        bench.caption_of([])
    with pytest.raises(ValueError, match="think"):
        bench.templated({"conversations": []}, "think")


def test_budget_arithmetic(bench):
    # the gaps between the callbacks (steps 2..n; step 1, the warm-up, is not seen): their median
    times = [10.0, 14.0, 15.0, 16.5, 17.0]
    assert bench.seconds_per_step(times) == pytest.approx(statistics.median([4.0, 1.0, 1.5, 0.5]))
    assert bench.stepping_seconds(times) == pytest.approx(7.0 + 1.25)
    with pytest.raises(ValueError):
        bench.seconds_per_step([1.0])
    rates = {"sft": 0.5, "grpo": 3.0, "format": 0.8, "grpo_visionary": 7.0}
    arms = {a.name: a for a in bench.ARMS}
    assert bench.budget_steps(arms["sft"], 100, rates, 0.25) == {"sft": 200}
    assert bench.budget_steps(arms["grpo"], 100, rates, 0.25) == {"grpo": 33}
    vis = bench.budget_steps(arms["grpo_visionary"], 100, rates, 0.25)
    assert vis == {"format": 31, "grpo_visionary": 10} and list(vis) == ["format", "grpo_visionary"]
    assert bench.budget_steps(arms["grpo"], 1, rates, 0.25) == {"grpo": 1}  # at least one step
    for arm, steps in (("sft", 200), ("grpo", 33)):  # the budget is not exceeded by more than one step
        spent = steps * rates[arm]
        assert spent <= 100 < spent + rates[arm]
    with pytest.raises(ValueError, match="share"):
        bench.budget_steps(arms["grpo_visionary"], 100, rates, 1.0)


def test_slices_pair_and_aggregate(bench):
    metas = {"q1": {"question_type": "count", "heldout": True}, "q2": {"question_type": "relation"},
             "q3": {"question_type": "color", "heldout": False}, "g1": {"heldout": True}, "g2": {}}

    def rows(vqa, iou):
        return ([{"task": "vqa", "id": i, "vqa_acc": v} for i, v in zip(["q1", "q2", "q3"], vqa)]
                + [{"task": "grounding", "id": i, "iou": v} for i, v in zip(["g1", "g2"], iou)])

    a = bench.slice_values(rows([1.0, 0.0, 1.0], [0.5, 0.49]), metas)
    assert a == {"vqa": {"q1": 1.0, "q2": 0.0, "q3": 1.0}, "vqa_count": {"q1": 1.0}, "vqa_relation": {"q2": 0.0},
                 "vqa_heldout": {"q1": 1.0}, "grounding_acc50": {"g1": 1.0, "g2": 0.0},
                 "grounding_acc50_heldout": {"g1": 1.0}}
    b = bench.slice_values(rows([0.0, 0.0, 1.0], [0.9, 0.9]), metas)
    d = bench.differences({"grpo": a, "sft": b})
    assert list(d) == ["grpo_minus_sft"]  # the other pairs have an arm missing
    assert d["grpo_minus_sft"]["vqa"]["difference"] == pytest.approx(1 / 3, abs=1e-4)
    assert d["grpo_minus_sft"]["vqa"]["n"] == 3 and d["grpo_minus_sft"]["grounding_acc50"]["difference"] == -0.5
    assert bench.summary(a["vqa"])["n"] == 3

    def run(seed, values):
        return {"seed": seed, "arms": {"grpo": {"scores": {"vqa": {"value": values[0], "n": 300}}},
                                       "sft": {"scores": {"vqa": {"value": values[1], "n": 300}}}},
                "differences": {"grpo_minus_sft": {"vqa": {"difference": values[0] - values[1], "n": 300}}}}

    grpo, sft = [0.5, 0.6, 0.8], [0.4, 0.6, 0.5]
    res = bench.aggregate([run(s, v) for s, v in enumerate(zip(grpo, sft))])
    half = 4.303 * statistics.stdev(grpo) / math.sqrt(3)
    arm = res["arms"]["grpo"]["vqa"]
    assert arm["mean"] == pytest.approx(statistics.fmean(grpo), abs=1e-4) and arm["n_test"] == 300
    assert arm["ci95"] == pytest.approx([arm["mean"] - half, arm["mean"] + half], abs=1e-3)
    diff = res["differences"]["grpo_minus_sft"]["vqa"]
    assert diff["values"] == pytest.approx([0.1, 0.0, 0.3]) and diff["seeds"] == [0, 1, 2]
    assert diff["mean"] == pytest.approx(0.1333, abs=1e-4)
    one = bench.aggregate([run(0, (0.5, 0.4))])
    assert one["arms"]["grpo"]["vqa"]["ci95"] is None  # one seed: no interval
