"""vlkit.data.synth.tasks: the registry and sample assembly (the sample format, held-out compositions across
every task, the PNG encoder)."""
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from vlkit.data.synth import DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES, DEFAULT_TASKS
from vlkit.data.synth.tasks import encode_png, text_mask
from tests.data.synth.helpers import TRAIN, gpt, human, make, mentions


@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_sample_format(task):
    for i in range(15):
        sample, files, img = make(task, i)
        assert set(sample) == {"id", "images", "conversations", "task", "meta"}
        assert sample["task"] == task and sample["id"] == f"{task}-train-0-{i:06d}"
        assert sample["images"] == [f"images/{sample['id']}.png"] and sample["images"][0] in files
        assert [t["from"] for t in sample["conversations"]] == ["human", "gpt"]
        text = " ".join(t["value"] for t in sample["conversations"])
        assert text.count("<image>") == 1
        if task == "generation":
            assert gpt(sample) == "<image>" and human(sample).startswith("Draw: ")
        else:
            assert human(sample).startswith("<image>\n")
        assert isinstance(sample["meta"]["heldout"], bool) and isinstance(sample["meta"]["category"], str)
        assert img.size == (64, 64) and img.mode == "RGB"
        json.dumps(sample)  # JSON-able


def test_heldout_compositions_stay_out_of_train():
    pairs = set(DEFAULT_HELDOUT_PAIRS)
    for task in DEFAULT_TASKS:  # multi-image and video tasks: their own test files
        for i in range(120 if task in ("vqa", "generation", "caption") else 40):
            sample, _, img = make(task, i, TRAIN)
            assert not sample["meta"]["heldout"]
            assert not mentions(sample, pairs), sample
            text = " ".join(t["value"] for t in sample["conversations"]) + sample["meta"].get("prompt", "")
            for phrase in DEFAULT_HELDOUT_PHRASES:  # short forms never appear without "to the"
                assert not re.search(rf"(?<!to the ){phrase}", text), text

@pytest.mark.parametrize("shape", [(5, 7, 3), (6, 4)])
def test_encode_png_round_trips_through_pillow(shape):
    arr = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(arr)
    assert data == encode_png(Image.fromarray(arr))                      # an array or a PIL image: the same bytes
    back = Image.open(io.BytesIO(data))
    assert back.mode == ("RGB" if len(shape) == 3 else "L") and back.size == (shape[1], shape[0])
    assert (np.asarray(back) == arr).all()
    with pytest.raises(ValueError, match="4 channels"):
        encode_png(np.zeros((2, 2, 4), dtype=np.uint8))


def test_text_mask_labels_each_text_box_in_order():
    mask = text_mask([("ab", (1, 0, 3, 2)), ("c", (-2, 3.5, 2, 5))], (4, 5))
    assert mask.dtype == np.uint8 and mask.shape == (5, 4)
    assert mask.tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [2, 2, 0, 0], [2, 2, 0, 0]]


MULTI_TURN = ("vqa", "grounding", "reg", "chart", "doc")


@pytest.mark.parametrize("task", MULTI_TURN)
def test_follow_up_turns_ask_about_the_same_image_without_repeating(task):
    from vlkit.config.synth import SynthConfig
    from vlkit.data.synth.tasks import make_memory_sample
    from vlkit.grounding import parse_boxes

    lengths = []
    for i in range(20):
        one = make_memory_sample(task, i, 0, SynthConfig())
        many = make_memory_sample(task, i, 0, SynthConfig(turns=5))
        # the first turn, its meta and its image are the single-turn sample's
        assert many["conversations"][:2] == one["conversations"] and many["meta"] == one["meta"]
        assert np.array_equal(np.asarray(many["image_objects"][0]), np.asarray(one["image_objects"][0]))
        conv = many["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and 2 <= len(conv) <= 10
        assert " ".join(t["value"] for t in conv).count("<image>") == 1
        lengths.append(len(conv) // 2)
        meta, turns = many["meta"], list(zip(conv[2::2], conv[3::2]))
        for q, a in turns:  # every follow-up answer is true of this image
            q, a = q["value"], a["value"]
            if task == "doc":
                key = re.search(r"(?:the value of |form say for |the )(\w+)\?", q).group(1)
                assert meta["fields"][key] == a
            elif task == "chart" and q.startswith(("What is the value of", "What value", "How high")):
                label = re.search(r"(?:of|bar) (\w+)", q).group(1)
                assert str(meta["values"][meta["labels"].index(label)]) == a
            elif task == "grounding":
                assert list(parse_boxes(a)[0].box) in [o["box"] for o in meta["objects"]]
            elif task == "reg":
                box = list(parse_boxes(q)[0].box)
                assert any(o["box"] == box and a.endswith(f"{o['color']} {o['shape']}") for o in meta["objects"])
        # what each turn asks about is asked once: a later answer is never given away by an earlier one
        asked = [t["value"].replace("<image>\n", "") for t in conv[::2]]
        if task in ("grounding", "reg", "doc"):
            subjects = [a["value"] for a in conv[1::2]] if task != "reg" else [parse_boxes(q)[0].box for q in asked]
            assert len(subjects) == len(set(map(str, subjects)))
    assert max(lengths) == (3 if task == "doc" else 5)  # a 64-px form has 2-3 fields to ask about
