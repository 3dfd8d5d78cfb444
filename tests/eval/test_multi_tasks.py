"""multi_count, change and video_qa eval tasks on synthetic data: scoring of hand-written answers, the two images
and the clip reaching the model, and blind runs (every image, every frame blanked)."""
import hashlib

import numpy as np
import pytest

from vlkit.data.synth import generate_dataset
from vlkit.eval.runner import BLIND_FILL, load_samples, run_eval
from vlkit.eval.tasks import get_task
from tests.eval.helpers import ColorPipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "data"
    return generate_dataset(out, n=36, tasks=["multi_count", "change", "video_qa"], split="test", progress=False)


def _by_task(data, task):
    return [s for s in load_samples(data) if s["task"] == task]


def _score(task, samples, raw):
    t = get_task(task)
    return t.score(samples, [t.extract(r) for r in raw]).metrics["vqa_acc"].values


def test_multi_count_reads_any_way_of_naming_an_image(data):
    samples = _by_task(data, "multi_count")
    say = {"first": "The first image.", "second": "image 2"}
    assert _score("multi_count", samples, [say[s["meta"]["answers"][0]] for s in samples]) == [1.0] * len(samples)
    flip = {"first": "the second", "second": "First"}
    assert _score("multi_count", samples, [flip[s["meta"]["answers"][0]] for s in samples]) == [0.0] * len(samples)


def test_change_scores_the_exact_change(data):
    samples = _by_task(data, "change")
    right = [s["meta"]["answers"][0] for s in samples]
    assert _score("change", samples, right) == [1.0] * len(samples)
    wrong = [a.replace("removed", "added") if "removed" in a else "the red circle was removed" for a in right]
    assert _score("change", samples, wrong) == [0.0] * len(samples)


class PairPipe(ColorPipe):
    """Answers "first" when the first image has more bright pixels, "second" otherwise (and for blanks)."""

    def answer(self, prompt, images):
        assert prompt.count("<image>") == len(images) == 2
        bright = [int((np.asarray(im.convert("L")) > 150).sum()) for im in images]
        return "the first image" if bright[0] > bright[1] else "second"


def test_two_images_reach_the_model_and_blind_blanks_both(data, tmp_path):
    pipe = PairPipe()
    scores = run_eval(pipe, data, tasks=["multi_count", "change"], out_dir=tmp_path / "out", blind=True,
                      progress=False, resamples=50)
    assert all(len(ims) == 2 for _, ims in pipe.calls)
    blind = [ims for _, ims in pipe.calls if all(im.getpixel((0, 0)) == BLIND_FILL for im in ims)]
    assert len(blind) == len(pipe.calls) // 2  # each sample once with its images, once with two blanks
    mc = scores["tasks"]["multi_count"]
    assert mc["blind"]["n"] == len(_by_task(data, "multi_count")) and "question_type" in mc["breakdown"]
    assert set(scores["tasks"]["change"]["breakdown"]["question_type"]) <= {"added", "removed", "recolored", "moved"}


class ClipPipe(ColorPipe):
    """Knows each clip by its frames' pixels: answers a seen clip right, and a blank clip "unknown"."""

    def __init__(self, truth):
        super().__init__("clip-model")
        self.truth, self.videos = truth, []

    def chat_batch(self, prompts, images, videos=(), max_new_tokens=64, temperature=0.0):
        assert all(ims == [] for ims in images) and all(len(v) == 1 for v in videos)
        self.videos += [v[0] for v in videos]
        return [self.truth.get(clip_key(v[0]), "unknown") for v in videos]


def clip_key(frames):
    return hashlib.sha256(b"".join(im.convert("RGB").tobytes() for im in frames)).hexdigest()


def test_video_qa_gets_each_clip_and_beats_blind(data, tmp_path):
    from vlkit.eval.multi_tasks import VideoQATask

    samples = _by_task(data, "video_qa")
    task = get_task("video_qa")
    truth = {clip_key(task.inputs(s)): s["meta"]["answers"][0] for s in samples}
    assert len(truth) == len(samples)
    assert "no `videos` argument" in VideoQATask().unsupported(ColorPipe())
    pipe = ClipPipe(truth)
    scores = run_eval(pipe, data, tasks=["video_qa"], out_dir=tmp_path / "out", blind=True, progress=False,
                      resamples=50)
    v = scores["tasks"]["video_qa"]
    # every clip has its own cache key (same question, other frames): all right with frames, all wrong blind
    assert (v["blind"]["with_images"], v["blind"]["blind"]) == (1.0, 0.0)
    assert set(v["breakdown"]["question_type"]) <= {"direction", "appear", "disappear", "count", "order"}
    assert all(len(clip) == 8 for clip in pipe.videos) and len(pipe.videos) == 2 * len(samples)
    rerun = ClipPipe(truth)
    run_eval(rerun, data, tasks=["video_qa"], out_dir=tmp_path / "out", blind=True, progress=False, resamples=50)
    assert rerun.videos == []  # cached


def test_video_qa_without_video_ground_truth_is_a_data_error(data):
    from vlkit.eval.metrics import EvalError

    sample = dict(_by_task(data, "video_qa")[0], videos=[])
    with pytest.raises(EvalError, match="needs `videos`"):
        get_task("video_qa").validate(sample)
