"""Samples with videos: read (paths resolved, missing clips counted), encoded (frames in sequence order, one vision
block per clip), accepted by the model, and trained on for a step."""
import json
import warnings

import pytest
import torch

from tests.clips import frame, frame_index, write_clip
from vlkit.chat import ChatProcessor
from vlkit.config import DataConfig, StageConfig, TrainConfig, tiny_model_config
from vlkit.data.collate import Collator, EncodeStats, encode_samples
from vlkit.data.sources import DataWarning, ReadStats, read_samples
from vlkit.data.visuals import sample_visuals
from vlkit.images import ImageProcessor, normalize_pixels, pixels_to_pil
from vlkit.models.vlm import VisionLanguageModel

TOKENS = 4  # tokens per image of the stub geometry below


def _layout(root, with_file=False):
    (root / "clip").mkdir(parents=True)
    for k in range(3):
        frame(k).save(root / "clip" / f"{k}.png")
    frame(7).save(root / "still.png")
    lines = [
        {"id": "frames", "videos": [["clip/0.png", "clip/1.png", "clip/2.png"]], "images": ["still.png"],
         "conversations": [{"from": "human", "value": "<video>\nWhere does the square go? <image>"},
                           {"from": "gpt", "value": "right"}]},
        {"id": "folder", "videos": ["clip"], "conversations": [{"from": "human", "value": "<video> moves?"},
                                                              {"from": "gpt", "value": "yes"}]},
        {"id": "missing", "videos": ["nope.mp4"], "conversations": [{"from": "human", "value": "<video>"},
                                                                   {"from": "gpt", "value": "x"}]},
        {"id": "count", "videos": ["clip"], "conversations": [{"from": "human", "value": "no placeholder"},
                                                             {"from": "gpt", "value": "x"}]},
        {"id": "bad", "videos": [[]], "conversations": [{"from": "human", "value": "<video>"},
                                                       {"from": "gpt", "value": "x"}]},
    ]
    if with_file:
        write_clip(root / "clip.mp4", n=12, fps=6)
        lines.append({"id": "file", "videos": ["clip.mp4"], "conversations": [
            {"from": "human", "value": "<video> what moves?"}, {"from": "gpt", "value": "a square"}]})
    (root / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def _read(root):
    stats = ReadStats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return list(read_samples(root, stats=stats)), stats


def test_videos_are_resolved_and_bad_ones_counted(tmp_path):
    got, stats = _read(_layout(tmp_path))
    assert [s["id"] for s in got] == ["frames", "folder"]
    assert got[0]["videos"] == [[str(tmp_path / "clip" / f"{k}.png") for k in range(3)]]
    assert got[1]["videos"] == [str(tmp_path / "clip")] and got[1]["images"] == []
    assert dict(stats.skipped) == {"missing_video": 1, "video_placeholders": 1, "malformed_sample": 1}


def test_frames_reach_the_model_in_sequence_order(tokenizer, tmp_path):
    got, _ = _read(_layout(tmp_path))
    proc = ImageProcessor.default(32)
    vis = sample_visuals(got[0], ChatProcessor(tokenizer), proc, lambda h, w: TOKENS)
    order = [frame_index(im) for im in pixels_to_pil(normalize_pixels(torch.stack(vis.pixels)))]
    assert order == [0, 1, 2, 7]  # the video's frames, then the image (text order)
    assert vis.tokens_per_image == [TOKENS] and vis.tokens_per_video == [3 * TOKENS]


def test_encoded_video_samples_run_through_the_model(tokenizer, tmp_path):
    got, _ = _read(_layout(tmp_path, with_file=True))
    torch.manual_seed(0)
    cfg = tiny_model_config("mlp", vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_pad_id
    model = VisionLanguageModel(cfg).eval()
    stats = EncodeStats()
    ex = encode_samples(got, ChatProcessor(tokenizer), cfg.vision.image_size, model.tokens_per_image, 512,
                        strict=True, stats=stats)
    assert [e.sample_id for e in ex] == ["frames", "folder", "file"]
    assert [len(e.images) for e in ex] == [4, 3, 4]  # the mp4 (2 s) sampled at 2 fps: 4 frames
    n = model.tokens_per_image(cfg.vision.image_size, cfg.vision.image_size)
    assert ex[2].input_ids.count(tokenizer.image_pad_id) == 4 * n
    assert ex[2].input_ids.count(tokenizer.vision_start_id) == 1  # one block for the clip
    batch = Collator(tokenizer.pad_id, cfg.vision.image_mean, cfg.vision.image_std)(ex)
    with torch.no_grad():
        out = model(batch.input_ids, batch.images, **batch.model_inputs())
    assert torch.isfinite(out["loss"] if isinstance(out, dict) else out.loss)


def test_a_video_sample_trains_a_step(tokenizer, tmp_path):
    from vlkit.pipeline import Pipeline
    from vlkit.train.stage_data import load_examples
    from vlkit.train.trainer import Trainer

    root = _layout(tmp_path / "data")
    torch.manual_seed(0)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_pad_id
    pipe = Pipeline(VisionLanguageModel(cfg), tokenizer)
    st = StageConfig(name="sft", train="multitask", steps=1, lr=1e-3, warmup_steps=0, batch_size=2,
                     data=DataConfig(train=[{"path": str(root), "max_skip": 0.9}], max_length=400))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        examples = load_examples(pipe, st.data, 0)
    assert sorted(e.sample_id for e in examples) == ["folder", "frames"]
    before = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    Trainer(pipe, TrainConfig(precision="fp32", log_every=1), tmp_path / "run").run_stage(0, st, examples)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in pipe.model.state_dict().items())


def test_a_corrupt_video_file_is_skipped_at_encoding(tokenizer, tmp_path):
    pytest.importorskip("av")
    (tmp_path / "bad.mp4").write_bytes(b"\x00garbage" * 100)
    sample = {"id": "bad", "videos": [str(tmp_path / "bad.mp4")],
              "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "x"}]}
    stats = EncodeStats()
    with pytest.warns(UserWarning, match="skipped 1"):
        assert encode_samples([sample], ChatProcessor(tokenizer), 32, lambda h, w: TOKENS, 64, stats=stats) == []
    assert stats.skipped == {"VideoError": 1} and "cannot be decoded" in stats.examples[0]


@pytest.mark.parametrize("native", [False, True])
def test_with_a_video_token_a_clip_is_one_tensor_filling_its_video_pads_and_trains(tokenizer, tmp_path, native):
    """A model with a video token (every model trained with a fresh tokenizer): a clip reaches the model whole,
    (T, 3, H, W), in text order among the images, as tokens_per_clip <|video_pad|> tokens; a training step runs
    (learned-position tower: frame by frame; rope2d + temporal patches of 2: the packed encoder)."""
    from vlkit.pipeline import Pipeline
    from vlkit.train.stage_data import load_examples
    from vlkit.train.trainer import Trainer

    root = _layout(tmp_path / "data")
    torch.manual_seed(0)
    cfg = tiny_model_config("spatial_merge", vocab_size=len(tokenizer), video_token_id=tokenizer.video_pad_id)
    cfg.image_token_id = tokenizer.image_pad_id
    if native:
        cfg.vision.position, cfg.vision.temporal_patch_size = "rope2d", 2
    pipe = Pipeline(VisionLanguageModel(cfg), tokenizer)
    assert pipe.processor.video_clips
    st = StageConfig(name="sft", train="multitask", steps=1, lr=1e-3, warmup_steps=0, batch_size=2,
                     data=DataConfig(train=[{"path": str(root), "max_skip": 0.9}], max_length=400))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        examples = sorted(load_examples(pipe, st.data, 0), key=lambda e: e.sample_id)
    frames, folder = examples[1], examples[0]
    assert [tuple(im.shape) for im in frames.images] == [(3, 3, 64, 64), (3, 64, 64)]  # the clip, then the image
    assert [frame_index(im) for im in pixels_to_pil(normalize_pixels(frames.images[0]))] == [0, 1, 2]
    n_clip = pipe.model.tokens_per_clip(3, 64, 64)
    assert n_clip == (2 if native else 3) * pipe.model.tokens_per_image(64, 64)
    assert frames.input_ids.count(tokenizer.video_pad_id) == n_clip == folder.input_ids.count(tokenizer.video_pad_id)
    assert frames.input_ids.count(tokenizer.image_pad_id) == pipe.model.tokens_per_image(64, 64)
    before = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    Trainer(pipe, TrainConfig(precision="fp32", log_every=1), tmp_path / "run").run_stage(0, st, examples)
    assert any(not torch.equal(before[k], v) for k, v in pipe.model.state_dict().items())


def test_frames_of_one_clip_must_share_a_size(tokenizer, tmp_path):
    from vlkit.video import VideoError

    frame(0).save(tmp_path / "a.png")
    frame(1).resize((48, 20)).save(tmp_path / "b.png")
    sample = {"id": "mixed", "videos": [[str(tmp_path / "a.png"), str(tmp_path / "b.png")]],
              "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "x"}]}
    cfg = tiny_model_config("mlp")
    cfg.vision.processor.min_pixels, cfg.vision.processor.max_pixels = 16 * 16, 64 * 64
    proc = ImageProcessor.from_vision(cfg.vision)  # native sizes: each frame keeps its aspect
    native = ChatProcessor(tokenizer, tokenizer.video_pad_id)
    with pytest.raises(VideoError, match="different sizes"):
        sample_visuals(sample, native, proc, lambda h, w: TOKENS, tokens_per_clip=lambda t, h, w: t * TOKENS)
