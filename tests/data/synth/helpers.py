"""Shared by the task-generator tests: make one sample (and its decoded image), read its turns."""
import io
import json

from PIL import Image

from vlkit.data.synth import SynthConfig, make_sample

TRAIN = SynthConfig(split="train")
TEST = SynthConfig(split="test")


def make(task, i, cfg=TRAIN, seed=0):
    sample, files = make_sample(task, i, seed, cfg)
    img = Image.open(io.BytesIO(files[sample["images"][0]]))
    img.load()
    return sample, files, img


def human(sample):
    return sample["conversations"][0]["value"]


def gpt(sample):
    return sample["conversations"][1]["value"]


def mentions(sample, pairs):
    """Does the sample show or name one of the (color, shape) pairs?"""
    text = " ".join(t["value"] for t in sample["conversations"]) + " " + json.dumps(sample["meta"])
    shown = {(o.get("color"), o.get("shape")) for o in sample["meta"].get("objects", [])}
    return any(f"{c} {s}" in text for c, s in pairs) or bool(shown & set(pairs))