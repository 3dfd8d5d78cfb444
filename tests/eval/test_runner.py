"""The eval runner against a fake pipe: batching, cache + resume after a crash, scores, reports, errors."""
import json

import numpy as np
import pytest
from PIL import Image

from vlkit.eval.metrics import EvalError
from vlkit.eval.report import scores_table
from vlkit.eval.runner import PREDICTIONS_FILE, run_eval

RED = (220, 30, 30)


def _png(path, size=16, color=RED):
    Image.new("RGB", (size, size), color).save(path)


def build_dataset(root):
    """A tiny test set of every task. `truth[prompt]` is the right answer; the fake pipe answers right for
    some samples and wrong for others, so expected scores follow from the construction."""
    (root / "images").mkdir(parents=True)
    _png(root / "images" / "a.png")
    samples, truth = [], {}

    def add(task, i, question, answer, meta, image="images/a.png"):
        sid = f"{task}-{i}"
        prompt = f"<image>\n[{sid}] {question}"
        meta = {"heldout": i % 4 == 0, "category": "shapes" if i % 2 else "colors", **meta}
        samples.append({"id": sid, "image": image, "task": task, "meta": meta,
                        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer},
                                          {"from": "human", "value": "and another turn?"}]})
        truth[prompt] = answer

    qtypes = ["color", "shape", "count"]
    for i in range(12):
        add("vqa", i, "What color?", "red", {"answers": ["red"] * 10, "question_type": qtypes[i % 3]})
    for i in range(6):
        add("caption", i, "Describe.", f"a red square number {i}", {"captions": [f"a red square number {i}",
                                                                                  f"red square {i}"]})
    for i in range(6):
        add("grounding", i, "Where is the square?", "<ref>square</ref><box>(0,0),(100,100)</box>",
            {"boxes": [[0, 0, 100, 100]], "phrase": "square"})
    for t in ("reg", "ocr", "chart", "doc"):
        for i in range(4):
            add(t, i, "Read it.", f"ANSWER{i}", {"answers": [f"ANSWER{i}"]})
    (root / "masks").mkdir()
    for i in range(3):
        gt = np.zeros((16, 16), np.uint8)
        gt[:4, :4] = 1
        Image.fromarray(gt, "L").save(root / "masks" / f"{i}.png")
        add("segmentation", i, "Segment.", "", {"mask": f"masks/{i}.png", "classes": ["background", "circle"]})
    for i in range(3):
        samples.append({"id": f"generation-{i}", "task": "generation", "images": ["images/a.png"],  # the target
                        "conversations": [{"from": "human", "value": f"Draw: thing {i}"}, {"from": "gpt", "value": "<image>"}],
                        "meta": {"prompt": f"thing {i}", "objects": [{"shape": "square", "color": "red" if i else "blue",
                                                                       "box": [0, 0, 999, 999]}],
                                 "relation": None, "heldout": False, "category": "gen"}})
    with open(root / "test.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    return samples, truth


def wrong(prompt):
    """Deterministic rule: samples whose index (inside the [task-i] tag) is divisible by 3 get a wrong answer."""
    return int(prompt.split("]")[0].rsplit("-", 1)[1]) % 3 == 0


class FakePipe:
    def __init__(self, truth, fingerprint="model-A", path=None, can_generate_images=True, fail_after=None):
        self.truth, self.fp, self.path = truth, fingerprint, path
        self.can_generate_images = can_generate_images
        self.fail_after = fail_after
        self.chat_calls, self.gen_calls, self.seg_calls = [], [], 0

    def fingerprint(self):
        return self.fp

    def chat_batch(self, prompts, images, max_new_tokens=64, temperature=0.0):
        if self.fail_after is not None and len(self.chat_calls) >= self.fail_after:
            raise KeyboardInterrupt("killed mid-eval")
        assert len(prompts) == len(images) and temperature == 0.0
        assert all(isinstance(im, Image.Image) for ims in images for im in ims)
        self.chat_calls.append((list(prompts), max_new_tokens))
        out = []
        for p in prompts:
            ans = self.truth[p]
            if wrong(p):
                ans = "no box here" if "<box>" in ans else "blue"
            out.append(ans)
        return out

    def generate_image(self, prompt, cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0, seed=0):
        self.gen_calls.append((prompt, seed))
        return Image.new("RGB", (16, 16), RED)

    def segment(self, image, classes):
        self.seg_calls += 1
        return np.ones((image.height, image.width), dtype=np.int64)  # everything "circle"


@pytest.fixture
def fake_verify(monkeypatch):
    """A stand-in for vlkit.data.synth.verify.check_generation: correct iff the image is red and the first object
    is red."""
    from vlkit.data.synth import verify

    def check_generation(image, objects, relation):
        return {"correct": image.getpixel((0, 0)) == RED and objects[0]["color"] == "red"}

    monkeypatch.setattr(verify, "check_generation", check_generation)
    return check_generation


@pytest.fixture
def dataset(tmp_path):
    samples, truth = build_dataset(tmp_path / "data")
    return tmp_path / "data", samples, truth


def _value(scores, task, metric):
    return scores["tasks"][task]["metrics"][metric]["value"]


def test_scores_follow_from_construction(dataset, tmp_path, fake_verify):
    data, samples, truth = dataset
    pipe = FakePipe(truth)
    scores = run_eval(pipe, data, batch_size=5, out_dir=tmp_path / "out", resamples=200, progress=False)
    # wrong answers for indices 0, 3, 6, 9: vqa 8/12 right (ten identical answers: 1 or 0 each)
    assert _value(scores, "vqa", "vqa_acc") == pytest.approx(8 / 12)
    assert scores["tasks"]["vqa"]["n"] == 12
    # grounding: indices 0 and 3 wrong -> no box (parse failure), 4/6 exact boxes
    g = scores["tasks"]["grounding"]
    assert g["metrics"]["acc@0.5"]["value"] == pytest.approx(4 / 6)
    assert g["metrics"]["miou"]["value"] == pytest.approx(4 / 6)
    assert g["parse_failures"] == {"count": 2, "rate": pytest.approx(2 / 6)}
    for t in ("ocr", "chart", "doc"):  # indices 0 and 3 of 4 wrong
        assert _value(scores, t, scores["tasks"][t]["primary"]) == pytest.approx(0.5)
    # segmentation: all-"circle" prediction; per image circle I=16, U=256, background I=0 -> mIoU = (1/16 + 0) / 2
    assert _value(scores, "segmentation", "miou") == pytest.approx(1 / 32)
    assert scores["tasks"]["segmentation"]["extra"]["per_class_iou"] == {"background": 0.0, "circle": 1 / 16}
    # generation: objects red for i = 1, 2
    assert _value(scores, "generation", "gen_correct") == pytest.approx(2 / 3)
    # breakdowns: question type 'color' holds indices 0, 3, 6, 9 -> all wrong
    qt = scores["tasks"]["vqa"]["breakdown"]["question_type"]
    assert qt["color"]["n"] == 4 and qt["color"]["metrics"]["vqa_acc"]["value"] == 0.0
    assert qt["shape"]["metrics"]["vqa_acc"]["value"] == 1.0
    held = scores["tasks"]["vqa"]["breakdown"]["heldout"]
    assert held["heldout"]["n"] == 3 and held["seen"]["n"] == 9
    # the prompt is the first human turn; chat batches respect batch_size
    asked = [p for call, _ in pipe.chat_calls for p in call]
    assert all("another turn" not in p for p in asked)
    assert max(len(c) for c, _ in pipe.chat_calls) <= 5
    assert len(asked) == len(set(asked)) == 12 + 6 + 6 + 16
    # files
    out = tmp_path / "out"
    assert json.loads((out / "scores.json").read_text())["tasks"]["vqa"]["n"] == 12
    md = (out / "scores.md").read_text()
    assert "| vqa | vqa_acc * | 0.667 |" in md and "### vqa: vqa_acc by group" in md
    assert len((out / PREDICTIONS_FILE).read_text().splitlines()) == len(samples)
    assert len(list((out / "generations").glob("*.png"))) == 3 and len(list((out / "masks").glob("*.png"))) == 3


def test_kill_and_resume_does_not_recompute(dataset, tmp_path, fake_verify):
    data, samples, truth = dataset
    ref = run_eval(FakePipe(truth), data, batch_size=4, out_dir=tmp_path / "ref", resamples=200, progress=False)

    out = tmp_path / "out"
    crashing = FakePipe(truth, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_eval(crashing, data, batch_size=4, out_dir=out, resamples=200, progress=False)
    done = {p for call, _ in crashing.chat_calls for p in call}
    assert len(done) == 12  # three full batches of 4 were saved before the kill
    lines = (out / PREDICTIONS_FILE).read_text().splitlines()
    assert len(lines) == 12
    with open(out / PREDICTIONS_FILE, "a") as f:
        f.write('{"key": "torn-wri')  # a crash in the middle of a write

    counting = FakePipe(truth)
    scores = run_eval(counting, data, batch_size=4, out_dir=out, resamples=200, progress=False)
    asked = [p for call, _ in counting.chat_calls for p in call]
    assert not done & set(asked)                       # finished predictions are not recomputed
    assert len(asked) + len(done) == 12 + 6 + 6 + 16   # only the remaining samples were asked
    assert scores["predictions"] == {"total": 46, "reused": 12, "new": 34}  # the run says what it reused
    assert _without_cache_counts(scores) == {**_without_cache_counts(ref), "data": scores["data"]}
    assert scores["tasks"] == ref["tasks"]

    again = FakePipe(truth)
    rerun = run_eval(again, data, batch_size=4, out_dir=out, resamples=200, progress=False)
    assert _without_cache_counts(rerun) == _without_cache_counts(scores)
    assert again.chat_calls == [] and again.gen_calls == [] and again.seg_calls == 0
    assert rerun["predictions"] == {"total": 46, "reused": 46, "new": 0}
    assert "Predictions: 46 of 46 reused from the cache, 0 new." in (out / "scores.md").read_text()


def _without_cache_counts(scores):
    return {k: v for k, v in scores.items() if k != "predictions"}


def test_cache_key_includes_model_and_settings(dataset, tmp_path):
    data, _, truth = dataset
    out = tmp_path / "out"
    run_eval(FakePipe(truth), data, tasks=["vqa"], out_dir=out, progress=False, resamples=50)
    p = FakePipe(truth)
    run_eval(p, data, tasks=["vqa"], out_dir=out, max_new_tokens=7, progress=False, resamples=50)
    assert sum(len(c) for c, _ in p.chat_calls) == 12 and {m for _, m in p.chat_calls} == {7}
    q = FakePipe(truth, fingerprint="model-B")
    run_eval(q, data, tasks=["vqa"], out_dir=out, progress=False, resamples=50)
    assert sum(len(c) for c, _ in q.chat_calls) == 12


def test_limit_tasks_and_default_out_dir(dataset, tmp_path):
    data, _, truth = dataset
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    scores = run_eval(FakePipe(truth, path=str(ckpt)), data, tasks=["vqa", "ocr"], limit=2, progress=False,
                      resamples=50)
    assert set(scores["tasks"]) == {"vqa", "ocr"}
    assert scores["tasks"]["vqa"]["n"] == 2 and scores["tasks"]["ocr"]["n"] == 2
    assert (ckpt / "eval" / "scores.json").exists()


def test_generation_skipped_without_image_head(dataset, tmp_path):
    data, _, truth = dataset
    pipe = FakePipe(truth, can_generate_images=False)
    scores = run_eval(pipe, data, tasks=["vqa", "generation"], out_dir=tmp_path / "o", progress=False, resamples=50)
    assert "generation" not in scores["tasks"] and "generation" in scores["skipped"]["tasks"]
    assert pipe.gen_calls == []
    assert "Skipped: generation" in scores_table(scores)


def test_user_errors(dataset, tmp_path):
    data, samples, truth = dataset
    pipe = FakePipe(truth)
    with pytest.raises(EvalError, match="unknown eval task 'vqa2'"):
        run_eval(pipe, data, tasks=["vqa2"], out_dir=tmp_path / "o")
    with pytest.raises(EvalError, match="out_dir is required"):
        run_eval(pipe, data)
    with pytest.raises(EvalError, match="batch_size"):
        run_eval(pipe, data, batch_size=0, out_dir=tmp_path / "o")
    with pytest.raises(EvalError, match="does not exist"):
        run_eval(pipe, tmp_path / "nope", out_dir=tmp_path / "o")
    bad = data / "bad.jsonl"  # beside the images, so the sample itself is readable
    s = dict(samples[0])
    s["meta"] = {"question_type": "color"}
    bad.write_text(json.dumps(s) + "\n")
    with pytest.raises(EvalError, match="no meta\\['answers'\\]"):
        run_eval(pipe, bad, out_dir=tmp_path / "o", progress=False)
    assert pipe.chat_calls == []  # data errors are found before any model call


def test_unreadable_image_is_reported_not_cached(dataset, tmp_path):
    data, samples, truth = dataset
    (data / "images" / "broken.png").write_bytes(b"not a png")
    s = dict(samples[0], id="vqa-broken", image="images/broken.png")
    (data / "test.jsonl").write_text("\n".join(json.dumps(x) for x in [s] + samples[1:12]) + "\n")
    out = tmp_path / "o"
    scores = run_eval(FakePipe(truth), data, tasks=["vqa"], out_dir=out, progress=False, resamples=50)
    assert scores["tasks"]["vqa"]["n"] == 11 and scores["tasks"]["vqa"]["errors"] == 1
    assert "vqa-broken" in scores["tasks"]["vqa"]["error_examples"]
    assert len((out / PREDICTIONS_FILE).read_text().splitlines()) == 11


def test_changed_images_or_questions_are_asked_again_not_served_from_the_cache(tmp_path, caplog):
    """Issue 17 item 7: samples that kept their ids but got new images and questions were scored with the old
    answers. Predictions are keyed on the prompt text and the image bytes."""
    from tests.eval.helpers import ColorPipe, write_color_data

    data, out = tmp_path / "data", tmp_path / "out"
    colors = ["red", "green", "blue", "yellow"] * 5
    write_color_data(data, colors)
    first = ColorPipe()
    assert run_eval(first, data, out_dir=out, progress=False, resamples=50)["predictions"]["new"] == 20
    # the case: the same 20 ids, new images and new questions
    new_colors = colors[1:] + colors[:1]
    write_color_data(data, new_colors, questions=[f"Which colour, {i}?" for i in range(20)])
    second = ColorPipe()
    with caplog.at_level("INFO", logger="vlkit.eval"):
        scores = run_eval(second, data, out_dir=out, progress=False, resamples=50)
    assert len(second.calls) == 20 and scores["predictions"] == {"total": 20, "reused": 0, "new": 20}
    assert "0 of 20 predictions reused" in caplog.text
    assert _value(scores, "vqa", "vqa_acc") == 1.0  # the stale answers would score 0
    # one change at a time: a new image (same file name, same question), a new question (same image)
    new_colors[0] = "blue" if new_colors[0] != "blue" else "red"
    questions = [f"Which colour, {i}?" for i in range(20)]
    questions[1] = "Name the colour."
    write_color_data(data, new_colors, questions=questions)
    third = ColorPipe()
    scores = run_eval(third, data, out_dir=out, progress=False, resamples=50)
    assert sorted(p.split("\n")[1] for p, _ in third.calls) == ["Name the colour.", "Which colour, 0?"]
    assert scores["predictions"] == {"total": 20, "reused": 18, "new": 2}
    assert _value(scores, "vqa", "vqa_acc") == 1.0
