"""Video clips in every source: WebDataset clip members (a video file or frames), the HF `videos` column, writing
them (synthetic video_qa in every format, conversions carrying clips byte for byte) and the bad cases."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.clips import frame, frame_index, write_clip
from tests.data.sources.helpers import image_bytes, jbytes, read_all, write_tar
from vlkit.config.video import VideoConfig
from vlkit.data.sources import DataError, DataWarning, ReadStats, load_sample_videos, read_samples, write_samples
from vlkit.data.sources.base import png_bytes
from vlkit.data.synth import generate_dataset
from vlkit.images import load_image
from vlkit.video import VideoError

ALL = VideoConfig(max_frames=1000, max_total_pixels=0)  # every frame as it is


def _read(path, **kw):
    stats = ReadStats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return list(read_samples(path, stats=stats, **kw)), stats


def _pixels(frames):
    return [np.asarray(f.convert("RGB")) for f in frames]


def _stored(sample):
    """The bytes of a sample's clips: held as data (tar, HF read lazily) or in its files (JSONL)."""
    if "video_bytes" in sample:
        return sample["video_bytes"]
    return [Path(c).read_bytes() if isinstance(c, str) else [Path(f).read_bytes() for f in c] for c in sample["videos"]]


def _conv(q="Where does it go?", n=1):
    return [{"from": "human", "value": "<video>\n" * n + q}, {"from": "gpt", "value": "left"}]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The same synthetic video_qa (+ vqa) samples as JSONL, WebDataset shards and an HF dataset."""
    root = tmp_path_factory.mktemp("vsynth")
    kw = dict(n=6, tasks=["video_qa", "video_qa", "vqa"], video_frames=5, seed=1, progress=False)
    return {fmt: generate_dataset(root / fmt, fmt=fmt, shard_size=4, **kw) for fmt in ("jsonl", "webdataset", "hf")}


@pytest.mark.parametrize("fmt", ["webdataset", "hf"])
def test_synth_video_qa_round_trips_pixel_equal(synth, fmt):
    ref = {s["id"]: s for s in _read(synth["jsonl"])[0]}
    for decode in (True, False):
        got, stats = _read(synth[fmt], decode_images=decode)
        assert stats.n_skipped == 0 and sorted(s["id"] for s in got) == sorted(ref)
        videos = [s for s in got if s["task"] == "video_qa"]
        assert len(videos) == 4
        for s in got:
            r = ref[s["id"]]
            assert (s["conversations"], s["meta"], s["task"]) == (r["conversations"], r["meta"], r["task"])
            assert len(s.get("videos", [])) == len(r.get("videos", []))
        for s in videos:
            want = _pixels(load_image(p) for p in ref[s["id"]]["videos"][0])
            assert len(want) == 5
            if decode:  # decoded at read: every frame, as written
                assert [len(c) for c in s["video_objects"]] == [5]
                assert all(np.array_equal(a, b) for a, b in zip(_pixels(s["video_objects"][0]), want))
            else:  # the frames' bytes, decoded when the sample is encoded
                assert "video_objects" not in s and all(isinstance(b, bytes) for b in s["video_bytes"][0])
            clip = load_sample_videos(s, ALL)[0]
            assert len(clip) == 5 and all(np.array_equal(a, b) for a, b in zip(_pixels(clip), want))


def test_synth_writes_video_qa_in_every_format_from_the_command_line(tmp_path):
    from vlkit.apps.cli import main

    for fmt in ("webdataset", "hf"):
        assert main(["data", "synth", "--out", str(tmp_path / fmt), "--n", "3", "--tasks", "video_qa", "--format", fmt,
                     "--video-frames", "4"]) == 0
        got, stats = _read(tmp_path / fmt)
        assert stats.n_skipped == 0 and [len(s["video_objects"][0]) for s in got] == [4, 4, 4]


def test_hf_column_only_with_videos(synth, tmp_path):
    datasets = pytest.importorskip("datasets")
    assert "videos" in datasets.load_from_disk(str(synth["hf"])).column_names
    out = generate_dataset(tmp_path / "img", n=3, tasks=["vqa"], fmt="hf", progress=False)
    assert "videos" not in datasets.load_from_disk(str(out)).column_names  # image datasets keep their columns
    got, stats = _read(out)
    assert stats.n_skipped == 0 and all("videos" not in s and "video_objects" not in s for s in got)


def test_a_video_file_member_decodes_and_frame_members_are_no_images(tmp_path):
    mp4 = write_clip(tmp_path / "c.mp4", n=12, fps=6).read_bytes()  # 2 s
    shard = write_tar(tmp_path / "wds" / "s.tar", [
        ("a.json", jbytes({"conversations": _conv()})),
        ("a.video.mp4", mp4),
        ("b.json", jbytes({"conversations": [{"from": "human", "value": "<image> then <video> then <video>?"},
                                             {"from": "gpt", "value": "red"}]})),
        ("b.png", image_bytes("red")),
        ("b.video.mp4", mp4),
        *[(f"b.video1.{t:03d}.png", png_bytes(frame(t))) for t in (0, 1, 2)],
    ])
    got, stats = _read(shard)
    assert stats.n_skipped == 0 and [s["id"] for s in got] == ["a", "b"]
    a, b = got
    assert a["videos"] == ["a.video.mp4"] and a["images"] == []
    assert [frame_index(f) for f in a["video_objects"][0]] == [0, 3, 6, 9]  # read at the default 2 fps
    assert len(b["image_objects"]) == 1 and b["videos"] == ["b.video.mp4", [f"b.video1.{t:03d}.png" for t in range(3)]]
    assert [frame_index(f) for f in b["video_objects"][1]] == [0, 1, 2]
    lazy, _ = _read(shard, decode_images=False)
    assert lazy[0]["video_bytes"] == [mp4]  # the file's bytes, sampled when the sample is encoded
    assert [frame_index(f) for f in load_sample_videos(lazy[0], VideoConfig(fps=3))[0]] == [0, 2, 4, 6, 8, 10]
    assert [frame_index(f) for f in load_sample_videos(lazy[1], ALL)[1]] == [0, 1, 2]


def test_bad_clip_members_are_skipped_and_counted(tmp_path):
    mp4 = write_clip(tmp_path / "c.mp4", n=4, fps=4).read_bytes()
    f0, f1 = png_bytes(frame(0)), png_bytes(frame(1))
    shard = write_tar(tmp_path / "wds" / "bad.tar", [
        ("ok.json", jbytes({"conversations": _conv()})), ("ok.video.000.png", f0), ("ok.video.001.png", f1),
        ("junk.json", jbytes({"conversations": _conv()})), ("junk.video.mp4", b"\x00\x00\x00 not a video at all"),
        ("badframe.json", jbytes({"conversations": _conv()})), ("badframe.video.000.png", f0),
        ("badframe.video.001.png", f1[:40]),
        ("two.json", jbytes({"conversations": _conv(n=2)})), ("two.video.mp4", mp4),
        ("none.json", jbytes({"conversations": _conv(), "videos": ["x.mp4"]})),
        ("gap.json", jbytes({"conversations": _conv(n=2)})), ("gap.video.mp4", mp4), ("gap.video2.mp4", mp4),
        ("holes.json", jbytes({"conversations": _conv()})), ("holes.video.000.png", f0), ("holes.video.002.png", f1),
        ("both.json", jbytes({"conversations": _conv()})), ("both.video.mp4", mp4), ("both.video.000.png", f0),
    ])
    got, stats = _read(shard)
    assert [s["id"] for s in got] == ["ok"]
    assert dict(stats.skipped) == {"corrupt_video": 2, "video_placeholders": 1, "missing_video": 3,
                                   "malformed_sample": 1}
    text = "\n".join(stats.messages)
    assert "bad.tar:junk: skipped sample (corrupt_video): video 0 cannot be decoded" in text
    assert "bad.tar:badframe: skipped sample (corrupt_video): video 0: frame 1 cannot be decoded" in text
    assert "bad.tar:two: skipped sample (video_placeholders): 2 <video> placeholders but 1 videos" in text
    assert "bad.tar:none: skipped sample (missing_video): 1 videos listed, 0 clips" in text
    assert "clips [0, 2]" in text and "numbered [0, 2]" in text
    assert "clip 0 must be one video file member or frame members" in text
    # read lazily, a corrupt file is found when the sample is encoded: a VideoError naming the clip
    lazy, stats = _read(shard, decode_images=False)
    junk = next(s for s in lazy if s["id"] == "junk")
    with pytest.raises(VideoError, match="video 0 cannot be decoded"):
        load_sample_videos(junk)
    with pytest.raises(DataError, match="junk: skipped sample \\(corrupt_video\\)"):
        list(read_samples(shard, strict=True))


def test_hf_videos_column_of_paths_and_of_video_values(tmp_path):
    datasets = pytest.importorskip("datasets")
    media = tmp_path / "media"
    media.mkdir()
    mp4 = write_clip(media / "c.mp4", n=6, fps=6)
    (media / "frames").mkdir()
    for t in range(3):
        frame(t).save(media / "frames" / f"f{t}.png")
    # paths (relative to image_folder), as an external dataset may hold them; kept as paths, checked to exist
    datasets.Dataset.from_dict({"conversations": [_conv(), _conv(n=2)], "videos": [["c.mp4"], ["c.mp4", "frames"]]}
                               ).save_to_disk(str(tmp_path / "paths"))
    got, stats = read_all({"path": str(tmp_path / "paths"), "image_folder": str(media)})
    assert stats.n_skipped == 0 and got[0]["videos"] == [str(mp4)]
    assert [frame_index(f) for f in load_sample_videos(got[1], ALL)[1]] == [0, 1, 2]
    datasets.Dataset.from_dict({"conversations": [_conv()], "videos": [[["frames/f2.png", "frames/f1.png"]]]}
                               ).save_to_disk(str(tmp_path / "lists"))
    got, stats = read_all({"path": str(tmp_path / "lists"), "image_folder": str(media)})
    assert [frame_index(f) for f in load_sample_videos(got[0], ALL)[0]] == [2, 1]
    with pytest.raises(DataError, match="missing_video=1"):  # relative to the dataset folder they do not exist
        read_all({"path": str(tmp_path / "lists")})
    # {bytes, path} values (datasets.Video's storage) hold the file
    datasets.Dataset.from_dict({"conversations": [_conv()],
                                "videos": [[{"bytes": mp4.read_bytes(), "path": "c.mp4"}]]}
                               ).save_to_disk(str(tmp_path / "values"))
    got, stats = read_all({"path": str(tmp_path / "values")})
    assert stats.n_skipped == 0 and got[0]["videos"] == ["c.mp4"] and len(got[0]["video_objects"][0]) == 2


def test_conversions_carry_clips_byte_for_byte(tmp_path):
    src = tmp_path / "src"
    (src / "clips").mkdir(parents=True)
    (src / "frames").mkdir()
    mp4 = write_clip(src / "clips" / "c.mp4", n=6, fps=6)
    for t in range(3):
        frame(t).save(src / "frames" / f"f_{t}.png")
    rows = [{"id": "file", "videos": ["clips/c.mp4"], "conversations": _conv()},
            {"id": "folder", "videos": ["frames"], "conversations": _conv()},
            {"id": "two", "videos": ["clips/c.mp4", ["frames/f_2.png", "frames/f_0.png"]], "conversations": _conv(n=2)}]
    (src / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frames = [(src / "frames" / f"f_{t}.png").read_bytes() for t in range(3)]
    want = {"file": [mp4.read_bytes()], "folder": [frames], "two": [mp4.read_bytes(), [frames[2], frames[0]]]}
    path = src
    for k, fmt in enumerate(("webdataset", "hf", "jsonl", "webdataset")):  # each read lazily (bytes), written again
        samples, stats = _read(path, decode_images=False)
        path = write_samples(samples, tmp_path / f"{k}-{fmt}", fmt=fmt)
        got, stats = _read(path, decode_images=False)
        assert stats.n_skipped == 0
        assert {s["id"]: _stored(s) for s in got} == want, fmt
    decoded, _ = _read(path)
    assert [[frame_index(f) for f in c] for c in decoded[2]["video_objects"]][1] == [2, 0]
    # a decoded read writes its frames as PNGs (pixel-equal)
    out = write_samples(decoded, tmp_path / "frames-jsonl")
    again, _ = _read(out)
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(load_sample_videos(again[1], ALL)[0]),
                                                     _pixels(decoded[1]["video_objects"][0])))


def test_eval_runner_reads_video_qa_from_shards(synth, tmp_path):
    from tests.eval.test_multi_tasks import ClipPipe, clip_key
    from vlkit.eval.runner import load_samples, run_eval
    from vlkit.eval.tasks import get_task

    task = get_task("video_qa")
    samples = [s for s in load_samples(synth["jsonl"]) if s["task"] == "video_qa"]
    truth = {clip_key(task.inputs(s)): s["meta"]["answers"][0] for s in samples}
    pipe = ClipPipe(truth)
    scores = run_eval(pipe, synth["webdataset"], tasks=["video_qa"], out_dir=tmp_path / "out", blind=True,
                      progress=False, resamples=20)
    v = scores["tasks"]["video_qa"]
    assert v["blind"]["n"] == 4 and (v["blind"]["with_images"], v["blind"]["blind"]) == (1.0, 0.0)
    assert len(pipe.videos) == 8 and all(len(clip) == 5 for clip in pipe.videos)


def test_a_train_stage_reads_video_qa_from_shards(synth, tokenizer, tmp_path):
    from tests.train.test_trainer import make_pipe
    from vlkit.config import DataConfig, Recipe, StageConfig, TrainConfig
    from vlkit.train import stage_data
    from vlkit.train.trainer import train

    pipe = make_pipe(tokenizer)
    data = DataConfig(train=[{"path": str(synth["webdataset"])}], max_length=400)
    stats = stage_data.EncodeStats()
    feed = stage_data.load_feed(pipe, data, 0, stats=stats)
    batch = feed.next_batch(6, 0, 1)
    per_frame = pipe.model.tokens_per_image(64, 64)
    clips = [ex for ex in batch if len(ex.images) == 5]  # video_qa: 5 frames, each filling image pads
    assert len(clips) == 4 and not stats.skipped
    assert all(ex.input_ids.count(tokenizer.image_pad_id) == 5 * per_frame for ex in clips)
    # a corrupt video file member, read lazily as training does, is skipped when its sample is encoded
    junk = write_tar(tmp_path / "junk" / "s.tar", [("j.json", jbytes({"conversations": _conv()})),
                                                    ("j.video.mp4", b"\x00\x00\x00 not a video")])
    stats = stage_data.EncodeStats()
    with pytest.warns(UserWarning, match="sample j: video 0 cannot be decoded"):
        assert stage_data.sample_encoder(pipe, data, 0)(_read(junk, decode_images=False)[0], stats) == []
    assert stats.skipped == {"VideoError": 1}
    recipe = Recipe(model={}, tokenizer={}, train=TrainConfig(out=str(tmp_path / "run"), precision="fp32", log_every=1),
                    stages=[StageConfig(name="v", train="multitask", steps=2, lr=3e-3, warmup_steps=1, batch_size=3,
                                        data=data)])
    train(recipe, pipe=pipe)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
