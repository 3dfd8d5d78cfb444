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


def _native_pipe(tokenizer):
    from vlkit.config import ImageProcessorConfig, TextConfig, VisionConfig, tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline

    torch.manual_seed(0)
    vision = VisionConfig(position="rope2d", processor=ImageProcessorConfig(min_pixels=16 * 16, max_pixels=96 * 96,
                                                                            merge_size=2))
    cfg = tiny_model_config("spatial_merge", vision=vision, text=TextConfig(vocab_size=len(tokenizer)))
    cfg.image_token_id = tokenizer.image_pad_id
    return Pipeline(VisionLanguageModel(cfg), tokenizer)


MIXED = {"synth": {"tasks": ["ocr", "vqa"], "size": 96, "aspect": "mixed"}}


def test_a_samples_length_is_its_encoded_length_at_native_size(tokenizer):
    """Text + N pads per image, N at the processed (native) size: what the encoder gives, without encoding."""
    pipe = _native_pipe(tokenizer)
    data = DataConfig(train=[MIXED], max_length=400)
    stream, encode = stage_data.stream_of(data, 0), stage_data.sample_encoder(pipe, data, 0)
    grouping = stage_data.length_grouping(pipe, data.__class__(**{**vars(data), "group_by_length": True}), 0)
    samples = [stream(g) for g in range(12)]
    examples = encode(samples, stage_data.EncodeStats())
    assert len({tuple(im.shape) for ex in examples for im in ex.images}) > 1  # mixed sizes
    assert [grouping.measure(s) for s in samples] == [len(ex) for ex in examples]
    assert grouping.measure(None) == 0 and stage_data.length_grouping(pipe, data, 0) is None


def test_group_by_length_pads_less_on_mixed_native_sizes(tokenizer):
    from vlkit.data.grouping import padding_share

    pipe = _native_pipe(tokenizer)

    def share(group: bool) -> float:
        data = DataConfig(train=[MIXED], max_length=400, group_by_length=group, group_window=4)
        feed = stage_data.load_feed(pipe, data, 0)
        return padding_share([[len(e) for e in feed.next_batch(6, 0, 1)] for _ in range(8)])

    grouped, plain = share(True), share(False)
    assert grouped < 0.5 * plain, (grouped, plain)


def test_a_recipe_names_the_video_sampling_of_its_data(tokenizer):
    """data.video (VideoConfig): max_frames thins a clip, temporal_patch_size 2 evens it; the pads follow."""
    from vlkit.config import Recipe

    recipe = Recipe.from_dict({"model": {"preset": "tiny"}, "stages": [{"data": {
        "train": [{"synth": {"tasks": ["video_qa"], "video_frames": 5}}],
        "video": {"max_frames": 3, "temporal_patch_size": 2, "fps": 1.0, "max_total_pixels": 0}}}]})
    video = recipe.stages[0].data.video
    assert (video.max_frames, video.temporal_patch_size, video.fps, video.max_total_pixels) == (3, 2, 1.0, 0)
    with pytest.raises(ConfigError, match="temporal_patch_size"):
        Recipe.from_dict({"stages": [{"data": {"video": {"temporal_patch_size": 3}}}]})
    with pytest.raises(ConfigError, match="max_frmaes"):
        Recipe.from_dict({"stages": [{"data": {"video": {"max_frmaes": 3}}}]})
    pipe = stage_data_pipe(tokenizer)
    per_frame = pipe.model.tokens_per_image(64, 64)
    for data, frames in ((recipe.stages[0].data, 4), (DataConfig(train=recipe.stages[0].data.train), 5)):
        stream = stage_data.stream_of(data, 0)
        ex = stage_data.sample_encoder(pipe, data, 0)([stream(0)], stage_data.EncodeStats())[0]
        assert len(ex.images) == frames  # 5 frames -> 3 (max_frames) -> 4 (even); default: all 5
        assert ex.input_ids.count(tokenizer.image_pad_id) == frames * per_frame


def stage_data_pipe(tokenizer):
    from vlkit.config import tiny_model_config
    from vlkit.models.vlm import VisionLanguageModel
    from vlkit.pipeline import Pipeline

    torch.manual_seed(0)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_pad_id
    return Pipeline(VisionLanguageModel(cfg), tokenizer)
