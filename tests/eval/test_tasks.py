"""Eval tasks own their prediction step: which pipe method answers, what it is given, what is cached and scored."""
import numpy as np
import pytest
from PIL import Image

from vlkit.chat import IMAGE_PROMPT
from vlkit.eval.metrics import EvalError
from vlkit.eval.task_base import Job
from vlkit.eval.tasks import TASKS, get_task
from vlkit.images import ImageError


def _sample(task, tmp_path, image=True, **meta):
    if image:
        Image.new("RGB", (8, 6), (200, 10, 10)).save(tmp_path / "a.png")
    return {"id": f"{task}-0", "task": task, "_base": str(tmp_path), **({"image": "a.png"} if image else {}),
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}],
            "meta": meta}


def _job(task, sample, key="k/e:y"):
    return Job(task, sample, sample["id"], task.settings(sample, None), key)


class Recorder:
    can_generate_images, can_segment = True, True

    def __init__(self, answers=("red",), mask=None):
        self.answers, self.mask, self.calls = list(answers), mask, []

    def chat_batch(self, prompts, images, max_new_tokens=64, temperature=0.0):
        self.calls.append(("chat", list(prompts), [len(i) for i in images], max_new_tokens, temperature))
        return self.answers

    def generate_image(self, prompt, **settings):
        self.calls.append(("generate_image", prompt, settings))
        return Image.new("RGB", (4, 4), (1, 2, 3))

    def segment(self, image, classes):
        self.calls.append(("segment", image.size, list(classes)))
        return self.mask


def test_a_text_task_asks_chat_batch_with_its_answer_length(tmp_path):
    task = get_task("vqa")
    sample = _sample("vqa", tmp_path, answers=["red"])
    images = [task.inputs(sample)]
    assert [im.size for im in images[0]] == [(8, 6)]
    pipe = Recorder(answers=["red\nand more"])
    raw = task.predict(pipe, [_job(task, sample)], images, tmp_path)
    assert raw == ["red\nand more"]  # cached as the model said it
    assert pipe.calls == [("chat", ["<image>\nWhat?"], [1], task.max_new_tokens, 0.0)]
    assert task.prediction(raw[0], tmp_path) == "red"  # scored: the first line
    assert task.unsupported(object()) is None
    with pytest.raises(RuntimeError, match="returned 2 answers for 1 prompts"):
        task.predict(Recorder(answers=["a", "b"]), [_job(task, sample)], images, tmp_path)


def test_text_tasks_batch_by_settings_image_tasks_do_not():
    vqa, seg = get_task("vqa"), get_task("segmentation")
    assert vqa.batch_key({"max_new_tokens": 8}) != vqa.batch_key({"max_new_tokens": 16})
    assert vqa.batch_key({"a": 1, "b": 2}) == vqa.batch_key({"b": 2, "a": 1})
    assert seg.batch_key({"classes": ["a"]}) == seg.batch_key({"classes": ["b"]})


def test_segmentation_writes_a_mask_png_with_unknown_labels_as_255(tmp_path):
    task = get_task("segmentation")
    sample = _sample("segmentation", tmp_path, mask="m.png", classes=["background", "circle"])
    job = _job(task, sample, key="key/1")
    pipe = Recorder(mask=np.array([[0, 1, 7], [-1, 1, 0]]))
    [rel] = task.predict(pipe, [job], [task.inputs(sample)], tmp_path / "out")
    assert rel == "masks/key1.png" and pipe.calls == [("segment", (8, 6), ["background", "circle"])]
    path = task.prediction(rel, tmp_path / "out")
    assert path == str(tmp_path / "out" / rel)
    assert np.asarray(Image.open(path)).tolist() == [[0, 1, 255], [255, 1, 0]]
    with pytest.raises(RuntimeError, match="expected HxW"):
        task.predict(Recorder(mask=np.zeros(3)), [job], [task.inputs(sample)], tmp_path / "out")
    with pytest.raises(ImageError, match="segmentation sample has no image"):
        task.inputs(_sample("segmentation", tmp_path, image=False))


def test_segmentation_needs_a_segmenting_pipe():
    task = get_task("segmentation")

    class NoHead:
        can_generate_images = True

    class Off(Recorder):
        can_segment = False

    assert "dense-prediction head" in task.unsupported(NoHead())
    assert "dense-prediction head" in task.unsupported(Off())
    assert task.unsupported(Recorder()) is None


def test_generation_asks_the_prompt_without_its_prefix_and_has_no_input_image(tmp_path):
    task = get_task("generation")
    sample = _sample("generation", tmp_path, objects=[{"shape": "circle"}])
    sample["conversations"][0]["value"] = IMAGE_PROMPT.format("a red circle")
    assert task.prompt(sample) == "a red circle"
    assert task.prompt({**sample, "meta": {"prompt": "a blue square"}}) == "a blue square"
    assert task.inputs(sample) == [] and not task.input_images  # the sample's image is the target
    job = _job(task, sample)
    pipe = Recorder()
    [rel] = task.predict(pipe, [job], [[]], tmp_path)
    assert rel == "generations/key.png" and Image.open(tmp_path / rel).getpixel((0, 0)) == (1, 2, 3)
    assert pipe.calls == [("generate_image", "a red circle", job.settings)]
    assert job.settings["seed"] == task.settings(dict(sample), None)["seed"]  # stable per sample
    assert job.settings["seed"] != task.settings({**sample, "id": "other"}, None)["seed"]

    class CannotDraw:
        can_generate_images = False

    assert "cannot generate images" in task.unsupported(CannotDraw())


def test_ground_truth_is_checked_before_any_model_call(tmp_path):
    with pytest.raises(EvalError, match=r"meta\['answers'\]"):
        get_task("vqa").validate(_sample("vqa", tmp_path))
    with pytest.raises(EvalError, match=r"meta\['boxes'\] must be a list"):
        get_task("grounding").validate(_sample("grounding", tmp_path, boxes=[[1, 2, 3]]))
    with pytest.raises(EvalError, match="known tasks: .*vqa"):
        get_task("nope")
    assert {"vqa", "caption", "grounding", "reg", "ocr", "chart", "doc", "segmentation", "generation",
            "receipt", "multi_count", "change", "video_qa"} == set(TASKS)
