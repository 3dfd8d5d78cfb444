"""A model trained with vlkit must see: on a task that only the image answers (the colour of the only object), a
tiny model trained for a few seconds beats its blind self by far, and cutting the image path takes that away."""
import numpy as np
import pytest
import torch
from PIL import Image

from vlkit.config import ConnectorConfig, DataConfig, ModelConfig, StageConfig, TextConfig, TrainConfig, VisionConfig
from vlkit.data.collate import encode_samples
from vlkit.data.synth.world import COLOR_NAMES, sample_scene
from vlkit.models.vlm import VisionLanguageModel
from vlkit.pipeline import Pipeline
from vlkit.tokenizer import Tokenizer
from vlkit.train.trainer import Trainer

QUESTION = "What color is the object?"


def _samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = sample_scene(rng, 32, n_objects=1, sizes=["large"])
        out.append({"id": f"s{seed}-{i}", "image_objects": [scene.image], "task": "vqa",
                    "conversations": [{"from": "human", "value": "<image>\n" + QUESTION},
                                      {"from": "gpt", "value": scene.objects[0].color}]})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.train([QUESTION] + COLOR_NAMES * 20, vocab_size=300)
    cfg = ModelConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                          num_layers=1, num_heads=2),
                      connector=ConnectorConfig(type="spatial_merge"), init="fan_in",
                      text=TextConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_layers=2,
                                      num_heads=2, num_kv_heads=1))
    cfg.image_token_id, cfg.pad_token_id = tok.image_pad_id, tok.pad_id
    pipe = Pipeline(VisionLanguageModel(cfg), tok)
    examples = encode_samples(_samples(4000, 0), pipe.processor, 32, pipe.model.tokens_per_image, 64)
    # with N(0, 0.02) init this model needs 1000-1500 steps, at a random point, to find its image path
    stage = StageConfig(name="m", train="multitask", steps=600, lr=3e-3, warmup_steps=10, batch_size=16,
                        data=DataConfig(max_length=64))
    Trainer(pipe, TrainConfig(precision="fp32", log_every=300), tmp_path_factory.mktemp("run")).run_stage(0, stage,
                                                                                                        examples)
    pipe.model.eval()
    return pipe


def _accuracy(pipe, samples, blank=False) -> float:
    images = [[Image.new("RGB", (32, 32), (128, 128, 128)) if blank else s["image_objects"][0]] for s in samples]
    answers = pipe.chat_batch([QUESTION] * len(samples), images, max_new_tokens=4)
    return float(np.mean([a == s["conversations"][1]["value"] for a, s in zip(answers, samples)]))


def test_tiny_model_beats_its_blind_self_on_a_task_only_the_image_answers(trained):
    test = _samples(96, 1)
    seeing, blind = _accuracy(trained, test), _accuracy(trained, test, blank=True)
    assert blind <= 0.3  # a blank image carries no colour: at best the most frequent colour
    assert seeing >= 0.8 and seeing - blind >= 0.5, (seeing, blind)


def test_cutting_the_image_path_takes_the_gain_away(trained, monkeypatch):
    test = _samples(96, 1)
    real = trained.model.encode_images
    monkeypatch.setattr(trained.model, "encode_images", lambda images: [torch.zeros_like(f) for f in real(images)])
    assert _accuracy(trained, test) <= 0.3
