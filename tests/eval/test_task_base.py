"""vlkit.eval.task_base: what every eval task shares: the prompt, the sample's images and ground truth, first-line
answers, per-sample scores."""
import pytest
from PIL import Image

from vlkit.eval.metrics import EvalError
from vlkit.eval.task_base import (answers_of, first_human_turn, first_line, load_inputs, mean_scores, need,
                                  sample_images, write_png)


def test_the_prompt_is_the_first_user_turn():
    sample = {"id": "s", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "Q1"},
                                           {"from": "gpt", "value": "A"}, {"role": "user", "value": "Q2"}]}
    assert first_human_turn(sample) == "Q1"
    with pytest.raises(EvalError, match="'s' has no human turn"):
        first_human_turn({"id": "s", "conversations": [{"from": "gpt", "value": "A"}]})


def test_images_resolve_against_the_sample_file_and_load(tmp_path):
    Image.new("RGB", (5, 3), (1, 2, 3)).save(tmp_path / "a.png")
    one = {"_base": str(tmp_path), "image": "a.png"}
    assert sample_images(one) == [str(tmp_path / "a.png")]
    assert sample_images({"_base": str(tmp_path), "images": ["a.png", "/abs/b.png"]}) == [
        str(tmp_path / "a.png"), "/abs/b.png"]
    assert sample_images({"id": "text only"}) == []
    assert [im.size for im in load_inputs(one)] == [(5, 3)]
    decoded = Image.new("RGB", (2, 2))
    assert load_inputs({"image_objects": [decoded], "image": "missing.png"}) == [decoded]  # decoded ones first


def test_ground_truth_is_named_when_missing():
    sample = {"id": "s", "task": "vqa", "meta": {"answers": "red", "box": []}}
    assert answers_of(sample) == ["red"] and need(sample, "answers") == "red"
    with pytest.raises(EvalError, match=r"'s' \(task 'vqa'\) has no meta\['box'\]"):
        need(sample, "box")  # an empty list is no ground truth


def test_first_line_and_mean_scores():
    assert first_line("\n  red  \nblue") == "red" and first_line("  \n ") == ""
    ts = mean_scores({"acc": [1.0, 0.0], "cer": [0.0, 0.5]}, ["red", ""])
    assert list(ts.metrics) == ["acc", "cer"] and ts.metrics["cer"].values == [0.0, 0.5]
    assert ts.parse_failed == [False, True]  # an empty answer
    assert ts.per_sample == [{"acc": 1.0, "cer": 0.0}, {"acc": 0.0, "cer": 0.5}]


def test_write_png_leaves_no_temporary_file(tmp_path):
    write_png(Image.new("RGB", (3, 3), (9, 9, 9)), tmp_path / "out" / "m.png")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.png"]
    assert Image.open(tmp_path / "out" / "m.png").getpixel((1, 1)) == (9, 9, 9)
