"""vlkit.train.stage_data: a stage's sources checked, the tokenizer corpus, the target spec."""
import pytest
import torch

from vlkit.config import ConfigError, DataConfig, VQConfig
from vlkit.train import stage_data


def test_source_entries_are_checked_with_a_hint():
    assert stage_data.source_spec("data/x", 0) == {"path": "data/x"}
    with pytest.raises(ConfigError, match=r"data.train.1: unknown key\(s\) \['wieght'\] \(`wieght` -> `weight`\?\)"):
        stage_data.source_spec({"path": "d", "wieght": 2}, 1)
    with pytest.raises(ConfigError, match="needs exactly one of `path` or `synth`"):
        stage_data.source_spec({"path": "d", "synth": {}}, 0)
    with pytest.raises(ConfigError, match=r"data.train.0.weight=0 must be a number > 0"):
        stage_data.source_spec({"synth": {}, "weight": 0}, 0)
    with pytest.raises(ConfigError, match="either `synth:` streams or `path:` sources"):
        stage_data.stream_of(DataConfig(train=[{"synth": {}}, {"path": "d"}]), 0)


def test_codes_are_encoded_from_pixels_in_minus_one_to_one(tokenizer, make_model):
    """vision_target: codes: the trainer hands the visual tokenizer uint8 images scaled as its preprocess does."""
    from vlkit.models.vq import VisualTokenizer
    from vlkit.pipeline import Pipeline

    vq = VisualTokenizer(VQConfig(hidden_size=16, num_layers=0, codebook_size=16)).eval()
    seen = []
    real = vq.encode
    vq.encode = lambda pixels: seen.append(pixels) or real(pixels)
    pipe = Pipeline(make_model(), tokenizer, vq=vq)
    pipe.model.cfg.vision_target, pipe.model.cfg.text_vocab_size = "codes", len(tokenizer)
    spec = stage_data.target_spec(pipe, DataConfig(prompt_dropout=0.2), seed=5)
    assert spec.code_offset == len(tokenizer) and spec.prompt_dropout == 0.2 and spec.seed == 5
    image = torch.tensor([0, 255, 51], dtype=torch.uint8).repeat_interleave(64 * 64).reshape(3, 64, 64)
    codes = spec.encode_codes([image])
    assert codes.shape == (1, (64 // 8) ** 2, 1)
    torch.testing.assert_close(seen[0][0, :, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_a_fresh_tokenizer_learns_from_every_stages_data():
    """A first stage that sees only scenes (a `vision` stage) must not leave the OCR stage's words to bytes."""
    from vlkit.config import Recipe

    stage = {"train": "multitask", "steps": 1, "batch_size": 2, "data": {"max_length": 200}}
    recipe = Recipe.from_dict({"model": {"preset": "tiny"}, "stages": [
        {**stage, "name": "a", "data": {"train": [{"synth": {"tasks": ["vqa"]}}]}},
        {**stage, "name": "b", "data": {"train": [{"synth": {"tasks": ["ocr"]}}]}},
        {**stage, "name": "c", "data": {"train": [{"synth": {"tasks": ["ocr"]}}]}}]})
    text = list(stage_data.tokenizer_corpus(recipe.stages, seed=0))
    assert any("color" in t.lower() for t in text) and any("read" in t.lower() or "text" in t.lower() for t in text)
    assert len(text) == 2 * stage_data.TOKENIZER_CORPUS * 2  # two distinct stage data sets, two turns a sample
