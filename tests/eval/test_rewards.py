"""The reward registry: every built-in reward on hand-made cases (right, wrong, partial, parse failure), on the
synthetic world's own ground truth, its errors, and a user's own reward."""
import math

import pytest
from PIL import Image, ImageOps

from vlkit.data.synth import SynthConfig
from vlkit.data.synth.tasks import make_memory_sample
from vlkit.errors import UserError
from vlkit.eval import rewards as R
from vlkit.eval.metrics import EvalError
from vlkit.eval.rewards import REWARDS, Rollout, check_weights, reward, reward_for_task, score
from vlkit.eval.tasks import TASKS


def sample(task="vqa", sid="s-1", **meta):
    return {"id": sid, "task": task, "meta": meta,
            "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]}


def visionary(answer, info="an image", think="I look."):
    return f"<info>{info}</info><think>{think}</think><answer>{answer}</answer>"


def value(name, text, s, fmt="plain", **kw):
    return REWARDS[name](Rollout(text, s, answer_format=fmt, **kw))


# ---------------------------------------------------------------------------------------------------------
# accuracy rewards

def test_vqa_exact_scores_like_the_vqa_task():
    s = sample(answers=["red"] * 10)
    assert value("vqa_exact", "red", s) == 1.0
    assert value("vqa_exact", "red\nbecause it is red", s) == 1.0  # the vqa task reads the first line
    assert value("vqa_exact", "blue", s) == 0.0
    # partial: 2 of 10 annotators said red; each "red" GT sees 1 other match (1/3), each "blue" sees 2 (2/3)
    mixed = sample(answers=["red"] * 2 + ["blue"] * 8)
    assert value("vqa_exact", "red", mixed) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    # the answer is taken under the format: a bare "red" does not follow visionary
    assert value("vqa_exact", visionary("red"), s, "visionary") == 1.0
    assert value("vqa_exact", "red", s, "visionary") == 0.0
    assert value("vqa_exact", "", s) == 0.0


def test_vqa_exact_reads_the_answer_as_the_samples_own_vqa_like_task():
    # multi_count reads "The first image." as "first"; a plain vqa question does not
    assert value("vqa_exact", "The first image.", sample("multi_count", answers=["first"] * 10)) == 1.0
    assert value("vqa_exact", "The first image.", sample("vqa", answers=["first"] * 10)) == 0.0


def test_grounding_iou_and_acc50():
    s = sample("grounding", boxes=[[0, 0, 100, 100]], phrase="the square")
    exact = "<ref>the square</ref><box>(0,0),(100,100)</box>"
    half = "<box>(0,0),(100,200)</box>"  # IoU 100*100 / (100*200) = 0.5
    third = "<box>(0,0),(100,300)</box>"  # IoU 1/3
    assert value("grounding_iou", exact, s) == pytest.approx(1.0)
    assert value("grounding_iou", half, s) == pytest.approx(0.5)
    assert value("grounding_acc50", half, s) == 1.0  # IoU >= 0.5
    assert value("grounding_iou", third, s) == pytest.approx(1 / 3)
    assert value("grounding_acc50", third, s) == 0.0
    assert value("grounding_iou", "no idea", s) == 0.0  # no box: parse failure
    # the box must be in the answer: one in <think> does not count
    assert value("grounding_iou", visionary(exact), s, "visionary") == pytest.approx(1.0)
    assert value("grounding_iou", visionary("somewhere", think=exact), s, "visionary") == 0.0
    assert value("grounding_iou", exact, s, "think") == 0.0  # not in the think format
    with pytest.raises(EvalError, match=r"grounding_iou.*boxes"):
        value("grounding_iou", exact, sample("grounding", boxes=[[0, 0, 100]]))


def test_ocr_exact_and_cer():
    s = sample("ocr", answers=["Hello"])
    assert value("ocr_exact", " Hello ", s) == 1.0
    assert value("ocr_exact", "hello", s) == 0.0  # case-sensitive, as the ocr task's exact_match
    assert value("ocr_cer", "Hello", s) == 1.0
    assert value("ocr_cer", "Hellp", s) == pytest.approx(1 - 1 / 5)
    assert value("ocr_cer", "a much longer and different text", s) == 0.0  # CER > 1 is clipped
    assert value("ocr_cer", "Hello", s, "think") == 0.0  # parse failure
    assert value("ocr_cer", "<think>x</think><answer>Hellp</answer>", s, "think") == pytest.approx(0.8)
    # the closest of several answers counts
    assert value("ocr_cer", "Hellp", sample("ocr", answers=["zzzzz", "Hello"])) == pytest.approx(0.8)


def test_anls():
    s = sample("doc", answers=["hello world"])
    assert value("anls", "Hello World", s) == 1.0  # case and spacing are normalized
    assert value("anls", "hello worle", s) == pytest.approx(1 - 1 / 11)
    assert value("anls", "something else entirely", s) == 0.0  # NL > 0.5 -> 0
    assert value("anls", "hello world", s, "visionary") == 0.0
    assert value("anls", "hello world", sample("receipt", answers=["hello world"])) == 1.0


def test_relaxed_acc():
    s = sample("chart", answers=["10"])
    assert value("relaxed_acc", "10.4", s) == 1.0  # within 5%
    assert value("relaxed_acc", "11", s) == 0.0
    assert value("relaxed_acc", "1,000", sample("chart", answers=["1000"])) == 1.0
    assert value("relaxed_acc", "<think>about ten</think><answer>10</answer>", s, "think") == 1.0
    assert value("relaxed_acc", "<think>about ten</think>10", s, "think") == 0.0


def test_reg_match():
    s = sample("reg", answers=["a red circle", "the red circle", "red circle"])
    assert value("reg_match", "The red circle.", s) == 1.0
    assert value("reg_match", "a blue circle", s) == 0.0


# ---------------------------------------------------------------------------------------------------------
# format and caption

def test_format_reward():
    s = sample(answers=["red"])
    assert value("format", "red", s) == 1.0
    assert value("format", "  \n", s) == 0.0  # plain: an empty completion does not follow it
    assert value("format", visionary("red"), s, "visionary") == 1.0
    assert value("format", "<think>x</think><answer>red</answer>", s, "visionary") == 0.0  # no <info>
    assert value("format", "<think>x</think><answer>red</answer>", s, "think") == 1.0
    assert value("format", visionary(""), s, "visionary") == 0.0  # an empty answer is no answer


def test_caption_object_f1():
    s = sample("caption", objects=[{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "star"}],
               captions=["a red circle and a blue star"])
    assert value("caption", "a red circle and a blue star", s) == 1.0
    assert value("caption", "A small RED Circle, a large blue star.", s) == 1.0  # sizes and case don't matter
    assert value("caption", "a red circle", s) == pytest.approx(2 / 3)  # P 1, R 1/2
    assert value("caption", "a red circle and a green square", s) == pytest.approx(0.5)  # P 1/2, R 1/2
    assert value("caption", "a blue circle and a red star", s) == 0.0  # right words, wrong pairs
    assert value("caption", "nothing to see", s) == 0.0
    # counts: two red circles present, "a red circle" recalls one of them; "three" over-claims
    two = sample("caption", objects=[{"color": "red", "shape": "circle"}] * 2)
    assert value("caption", "two red circles", two) == 1.0
    assert value("caption", "a red circle", two) == pytest.approx(2 / 3)
    assert value("caption", "three red circles", two) == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    # visionary: the <info> part is the caption; the answer is not
    assert value("caption", visionary("no", info="a red circle and a blue star"), s, "visionary") == 1.0
    assert value("caption", visionary("a red circle and a blue star", info="dark"), s, "visionary") == 0.0
    assert value("caption", "a red circle and a blue star", s, "visionary") == 0.0  # parse failure
    # think: the whole completion
    assert value("caption", "<think>a red circle and a blue star</think><answer>x</answer>", s, "think") == 1.0


def test_every_synthetic_reference_caption_scores_one():
    cfg = SynthConfig(split="test")
    n = 0
    for i in range(40):
        s = make_memory_sample("caption", i, 0, cfg)
        for c in s["meta"]["captions"]:
            assert value("caption", c, s) == 1.0, (c, s["meta"]["objects"])
            n += 1
    assert n >= 160


# ---------------------------------------------------------------------------------------------------------
# image

def _generation(relations=("left of", "right of")):
    cfg = SynthConfig(split="test")
    for i in range(100):
        s = make_memory_sample("generation", i, 0, cfg)
        if s["meta"]["relation"] in relations:
            return s
    raise AssertionError("no generation sample with a horizontal relation")


def test_image_reward_uses_the_verifier_on_the_prompt_objects():
    s = _generation()
    target = s["image_objects"][0]
    assert value("image", "", s, image=target) == 1.0
    assert value("image_correct", "", s, image=target) == 1.0
    # mirrored left-right: the (symmetric) shapes and colors are right, the relation is not
    mirrored = ImageOps.mirror(target)
    assert value("image", "", s, image=mirrored) == pytest.approx(2 / 3)
    assert value("image_correct", "", s, image=mirrored) == 0.0
    black = Image.new("RGB", target.size)
    assert value("image", "", s, image=black) == 0.0
    assert value("image", "", s) == 0.0  # no image generated
    with pytest.raises(UserError, match="PIL image"):
        value("image", "", s, image=[[0]])


# ---------------------------------------------------------------------------------------------------------
# accuracy: the default reward of each task

def test_accuracy_dispatches_on_the_task():
    box = sample("grounding", boxes=[[0, 0, 100, 100]])
    assert value("accuracy", "<box>(0,0),(100,200)</box>", box) == pytest.approx(0.5)  # grounding_iou
    assert value("accuracy", "blue", sample(answers=["blue"] * 10)) == 1.0
    cap = sample("caption", objects=[{"color": "red", "shape": "circle"}])
    assert value("accuracy", "a red circle and a red star", cap) == pytest.approx(2 / 3)
    with pytest.raises(UserError, match="segmentation.*no default accuracy reward"):
        value("accuracy", "x", sample("segmentation", classes=["a"]))
    with pytest.raises(EvalError, match="accuracy.*'s-1'.*no `task`"):
        value("accuracy", "x", {"id": "s-1", "meta": {"answers": ["x"]}})


def test_every_task_default_is_a_registered_reward_and_every_text_task_has_one():
    assert all(reward_for_task(t) in REWARDS for t in R.TASK_REWARDS)
    assert {name for name, t in TASKS.items() if t.text_answer} <= set(R.TASK_REWARDS)
    assert reward_for_task("chart") == "relaxed_acc" and reward_for_task("generation") == "image"


# ---------------------------------------------------------------------------------------------------------
# errors: a reward that cannot score names the sample, the reward and the field

@pytest.mark.parametrize("name,task,field", [
    ("vqa_exact", "vqa", "answers"), ("ocr_exact", "ocr", "answers"), ("ocr_cer", "ocr", "answers"),
    ("anls", "doc", "answers"), ("relaxed_acc", "chart", "answers"), ("reg_match", "reg", "answers"),
    ("grounding_iou", "grounding", "boxes"), ("grounding_acc50", "grounding", "boxes"),
    ("caption", "caption", "objects"), ("image", "generation", "objects"), ("image_correct", "generation", "objects"),
    ("accuracy", "vqa", "answers"),
])
def test_missing_ground_truth_is_a_clear_error(name, task, field):
    s = sample(task, sid="sample-42", other=1)
    # even a parse failure (or no image) must not hide missing ground truth
    for text in ("anything", ""):
        with pytest.raises(EvalError) as err:
            value(name, text, s)
        msg = str(err.value)
        assert "sample-42" in msg and f"{name!r}" in msg and f"meta[{field!r}]" in msg


# ---------------------------------------------------------------------------------------------------------
# a user's own reward; weights

@pytest.fixture
def own_reward():
    added = []

    def register(name, fn):
        added.append(name)
        return reward(name)(fn)

    yield register
    for name in added:
        REWARDS.pop(name, None)


def test_a_users_reward_is_used_by_score(own_reward):
    own_reward("test_short", lambda r: 1.0 if len(r.text) <= 3 else 0.0)
    s = sample(answers=["red"] * 10)
    rollouts = [Rollout("red", s), Rollout("blue", s), Rollout("a long answer", s)]
    totals, parts = score(rollouts, {"vqa_exact": 1.0, "test_short": 0.5})
    assert parts == {"vqa_exact": [1.0, 0.0, 0.0], "test_short": [1.0, 0.0, 0.0]}
    assert totals == [1.5, 0.0, 0.0]
    totals, _ = score(rollouts, {"test_short": -2})
    assert totals == [-2.0, 0.0, 0.0]


def test_a_second_function_under_a_registered_name_is_an_error(own_reward):
    fn = own_reward("test_twice", lambda r: 0.0)
    reward("test_twice")(fn)  # the same function again: fine (e.g. a module imported twice)
    with pytest.raises(UserError, match="test_twice.*already registered"):
        reward("test_twice")(lambda r: 1.0)
    with pytest.raises(UserError, match="'vqa_exact'.*already registered"):
        reward("vqa_exact")(lambda r: 1.0)
    assert REWARDS["vqa_exact"] is R.vqa_exact


def test_check_weights_names_unknown_rewards_and_bad_weights():
    with pytest.raises(UserError, match=r"unknown reward\(s\) \['nope', 'vqa_exactt'\].*registered: .*'vqa_exact'"):
        check_weights({"vqa_exact": 1.0, "nope": 1.0, "vqa_exactt": 2})
    with pytest.raises(UserError, match="empty"):
        check_weights({})
    for bad in (float("nan"), float("inf"), "1.0", True, None):
        with pytest.raises(UserError, match="finite numbers"):
            check_weights({"format": bad})
    check_weights({"format": 0, "vqa_exact": 0.5})


def test_a_reward_returning_no_number_is_named(own_reward):
    own_reward("test_nan", lambda r: math.nan)
    own_reward("test_text", lambda r: "good")
    for name in ("test_nan", "test_text"):
        with pytest.raises(UserError, match=f"reward '{name}' returned .* for sample 's-1'"):
            score([Rollout("x", sample(answers=["x"]))], {name: 1.0})


def test_rollout_answer_follows_its_format():
    s = sample(answers=["red"])
    assert Rollout("  red \n", s).answer == "red"
    assert Rollout(visionary(" Red "), s, "visionary").answer == "Red"
    assert Rollout("red", s, "visionary").answer is None
    with pytest.raises(UserError, match="answer format 'xml' is unknown"):
        Rollout("red", s, "xml").answer
