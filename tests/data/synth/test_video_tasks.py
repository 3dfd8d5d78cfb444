"""video_qa clips: the sample format, answers that follow from the drawn frames, and questions that need time."""
import functools
import io
import json

import numpy as np
import pytest
from PIL import Image

from vlkit.data.synth import DEFAULT_HELDOUT_PAIRS, SynthConfig, make_sample
from vlkit.data.synth.tasks import make_memory_sample
from vlkit.data.synth.video_tasks import VIDEO_TYPES, Track, clip_answer
from vlkit.data.synth.world import COLORS

CFG = SynthConfig()


def tracks_of(sample):
    return [Track(t["shape"], t["color"], t["size"], 0.0, [None if c is None else tuple(c) for c in t["centers"]])
            for t in sample["meta"]["tracks"]]


@functools.lru_cache(maxsize=1)
def by_type(n=80, cfg=CFG):
    out = {}
    for i in range(n):
        sample, files = make_sample("video_qa", i, 0, cfg)
        out.setdefault(sample["meta"]["question_type"], []).append((sample, files))
    assert set(out) == set(VIDEO_TYPES)
    return out


def test_sample_format():
    cfg = SynthConfig(video_frames=12)
    for i in range(6):
        sample, files = make_sample("video_qa", i, 0, cfg)
        sid = sample["id"]
        assert set(sample) == {"id", "videos", "conversations", "task", "meta"}
        assert sample["videos"] == [[f"videos/{sid}/{t:03d}.png" for t in range(12)]]
        assert set(files) == set(sample["videos"][0])
        human, gpt = (t["value"] for t in sample["conversations"])
        assert human.startswith("<video>\n") and human.count("<video>") == 1 and "<image>" not in human
        assert gpt in sample["meta"]["answers"] and sample["meta"]["single_frame_answerable"] is False
        assert all(Image.open(io.BytesIO(files[p])).size == (64, 64) for p in sample["videos"][0])
        assert make_sample("video_qa", i, 0, cfg) == (sample, files)  # deterministic
        json.dumps(sample)
    mem = make_memory_sample("video_qa", 0, 0, cfg)
    assert mem["image_objects"] == [] and len(mem["video_objects"]) == 1 and len(mem["video_objects"][0]) == 12


def test_answer_follows_from_the_tracks_and_the_tracks_from_the_pixels():
    for qtype, samples in by_type().items():
        for sample, files in samples:
            tracks = tracks_of(sample)
            assert clip_answer(qtype, tracks, sample["meta"]["subjects"]) == sample["conversations"][1]["value"]
            for t, path in enumerate(sample["videos"][0]):
                frame = np.asarray(Image.open(io.BytesIO(files[path])).convert("RGB"))
                for track in tracks:  # every object present is drawn at its center, in its color
                    if track.centers[t] is not None:
                        x, y = (int(v) for v in track.centers[t])
                        assert tuple(frame[y, x]) == COLORS[track.color], (sample["id"], t, track.name)
                colors = {tuple(c) for c in frame.reshape(-1, 3)}
                shown = {COLORS[k.color] for k in tracks if k.centers[t] is not None}
                assert shown <= colors and not ({COLORS[k.color] for k in tracks} - shown) & colors


@pytest.mark.parametrize("qtype", VIDEO_TYPES)
def test_no_single_frame_answers_it(qtype):
    """The clip played backwards shows exactly the same frames, yet its answer differs: so no single frame (nor the
    set of all frames) determines the answer; the order of frames, time, is needed."""
    for sample, files in by_type()[qtype]:
        tracks, subjects = tracks_of(sample), sample["meta"]["subjects"]
        backwards = [t.reversed() for t in tracks]
        assert sorted(map(repr, backwards[0].centers)) == sorted(map(repr, tracks[0].centers))
        assert clip_answer(qtype, backwards, subjects) != clip_answer(qtype, tracks, subjects), sample["id"]


def test_first_frame_does_not_tell_the_direction():
    """Two clips that start with the same frame but move apart have different answers."""
    sample, _ = by_type()["direction"][0]
    mover = tracks_of(sample)[sample["meta"]["subjects"][0]]
    x0, y0 = mover.centers[0]
    mirrored = Track(mover.shape, mover.color, mover.size, 0.0,
                     [(2 * x0 - x, 2 * y0 - y) for x, y in mover.centers])
    assert mirrored.centers[0] == mover.centers[0]
    assert clip_answer("direction", [mirrored], [0]) != clip_answer("direction", [mover], [0])


def test_heldout_pairs():
    held = set(DEFAULT_HELDOUT_PAIRS)
    for i in range(40):
        sample, _ = make_sample("video_qa", i, 0, CFG)
        assert not sample["meta"]["heldout"] and not {(t.color, t.shape) for t in tracks_of(sample)} & held
    marks = [make_sample("video_qa", i, 0, SynthConfig(split="test"))[0]["meta"] for i in range(60)]
    assert all(m["heldout"] == any((t["color"], t["shape"]) in held for t in m["tracks"]) for m in marks)
    assert any(m["heldout"] for m in marks)
