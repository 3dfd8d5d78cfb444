"""vlkit.data.synth.stream: the endless synthetic stream, a function of (seed, index); its spec's checks, dense
labels and question-first prompts."""
import numpy as np
import pytest

from vlkit.config import ConfigError
from vlkit.data.sources import DataError
from vlkit.data.synth.stream import synth_stream


def _key(sample: dict) -> tuple:
    return (sample["id"], sample["image_objects"][0].tobytes(), str(sample["conversations"]))


def test_stream_is_a_function_of_seed_and_index():
    a, b = synth_stream({"tasks": ["vqa", "ocr"]}, 0), synth_stream({"tasks": ["vqa", "ocr"]}, 0)
    assert [_key(a(g)) for g in (0, 5, 1234, 7)] == [_key(b(g)) for g in (0, 5, 1234, 7)]  # any order
    other = synth_stream({"tasks": ["vqa", "ocr"], "seed": 1})
    assert _key(a(3)) != _key(other(3))
    ids = [a(g)["id"] for g in range(200)]
    assert len(set(ids)) == 200  # no sample repeats
    tasks = [a(g)["task"] for g in range(1000)]
    assert tasks.count("vqa") == tasks.count("ocr") == 500  # exact proportions per block


def test_stream_rejects_unknown_keys_and_tasks():
    with pytest.raises(DataError, match="taks"):
        synth_stream({"taks": ["vqa"]})
    with pytest.raises(DataError, match="unknown synthetic task"):
        synth_stream({"tasks": ["vqq"]})
    with pytest.raises(DataError, match="split"):
        synth_stream({"split": "val"})


def test_dense_labels_give_scene_samples_color_and_shape_targets(tokenizer):
    from vlkit.chat import ChatProcessor
    from vlkit.data.collate import TargetSpec, encode_samples
    from vlkit.data.synth.world import LABEL_CLASSES

    stream = synth_stream({"tasks": ["vqa", "ocr"], "dense_labels": True, "dense_text": True}, 0)
    samples = [stream(g) for g in range(40)]
    plain = synth_stream({"tasks": ["vqa", "ocr"], "dense_labels": True}, 0)
    assert all(plain(g)["mask_object"] is None for g in range(40) if samples[g]["task"] == "ocr")  # scenes only
    scene = [s for s in samples if s["task"] == "vqa"]
    assert scene and all(s["meta"]["classes"] == LABEL_CLASSES and s["mask_object"] is not None for s in scene)
    assert synth_stream({"tasks": ["vqa"]}, 0)(0)["mask_object"] is None  # off by default
    ex = encode_samples(scene[:1], ChatProcessor(tokenizer), 64, lambda h, w: 16, 200, spec=TargetSpec(dense=True))[0]
    objects = scene[0]["meta"]["objects"]
    first = lambda w: tokenizer.encode(" " + w)[0]  # noqa: E731
    targets = {t for _, pos in ex.dense for t in pos}
    assert len(ex.dense) == 16  # one target set per image token
    big = max(objects, key=lambda o: (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1]))
    assert {first(big["color"]), first(big["shape"]), first(big["size"])} <= targets  # the largest object's words
    assert tokenizer.encode(" background")[0] in targets
    # text images: each text's ink box is labelled with the text, every token of it
    ocr = [s for s in samples if s["task"] == "ocr"]
    assert ocr and all(s["meta"]["classes"][1:] == [s["meta"]["answers"][0]] or s["meta"]["category"] == "box"
                       for s in ocr)
    one = next(s for s in ocr if s["meta"]["category"] != "box")
    mask = np.asarray(one["mask_object"])
    assert 0.02 < (mask == 1).mean() < 0.9 and set(np.unique(mask)) == {0, 1}
    ex = encode_samples([one], ChatProcessor(tokenizer), 64, lambda h, w: 16, 200, spec=TargetSpec(dense=True))[0]
    text = one["meta"]["answers"][0]
    want = {t for word in text.split() for t in tokenizer.encode(" " + word)}
    assert any(want <= set(pos) for _, pos in ex.dense)


def test_question_first_puts_that_share_of_questions_before_the_image():
    def prompts(share):
        stream = synth_stream({"tasks": ["vqa", "caption"], "question_first": share, "seed": 4}, 0)
        return [stream(g)["conversations"][0]["value"] for g in range(200)]

    assert all(p.startswith("<image>\n") for p in prompts(0.0))
    assert all(p.endswith("\n<image>") and p.count("<image>") == 1 for p in prompts(1.0))
    half = sum(p.endswith("\n<image>") for p in prompts(0.5))
    assert 70 < half < 130 and prompts(0.5) == prompts(0.5)  # about half, the same for a seed
    assert [p.split("\n")[-1] for p in prompts(0.0)] == [p.split("\n")[0] for p in prompts(1.0)]  # same questions
    with pytest.raises(DataError, match="question_first"):
        synth_stream({"question_first": 1.5}, 0)


def test_canvas_keys_reach_the_samples():
    sample = synth_stream({"tasks": ["doc"], "size": 256, "aspect": "tall"}, 0)
    assert all(sample(g)["image_objects"][0].size == (96, 256) for g in range(4))
    square = synth_stream({"tasks": ["doc"], "size": 256}, 0)
    assert square(0)["image_objects"][0].size == (256, 256)


def test_bad_keys_and_values_are_named():
    with pytest.raises(DataError, match="unknown key"):
        synth_stream({"aspects": "wide"}, 0)
    with pytest.raises(ConfigError, match="synth.video_frames=0"):
        synth_stream({"video_frames": 0}, 0)


def test_turns_and_max_objects_reach_the_samples():
    many = synth_stream({"tasks": ["vqa"], "turns": 4, "max_objects": 2}, 0)
    one = synth_stream({"tasks": ["vqa"]}, 0)
    samples = [many(g) for g in range(30)]
    assert max(len(s["conversations"]) for s in samples) == 8
    assert all(len(s["meta"]["objects"]) <= 2 for s in samples)
    assert max(len(one(g)["meta"]["objects"]) for g in range(60)) > 2  # the default stays 1-6 objects
    with pytest.raises(ConfigError, match="synth.turns=0"):
        synth_stream({"turns": 0}, 0)
    with pytest.raises(ConfigError, match="synth.max_objects=7"):
        synth_stream({"max_objects": 7}, 0)


def test_ocr_kinds_restricts_what_ocr_samples_show():
    def kinds(spec, n):
        stream = synth_stream({"tasks": ["ocr"], **spec}, 0)
        return {stream(g)["meta"]["category"] for g in range(n)}

    assert kinds({"ocr_kinds": ["number"], "size": 128, "aspect": "wide"}, 40) == {"number"}
    assert kinds({"ocr_kinds": ["number", "box"]}, 60) == {"number", "box"}
    assert kinds({}, 200) == {"word", "number", "box"}  # the default; 64 px is too narrow for lines
    assert kinds({"size": 256, "aspect": "wide"}, 200) == {"word", "number", "box", "line"}
    with pytest.raises(ConfigError, match="ocr_kinds"):
        synth_stream({"tasks": ["ocr"], "ocr_kinds": ["digits"]}, 0)
