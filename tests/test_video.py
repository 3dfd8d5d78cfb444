import builtins
import wave

import pytest
from PIL import Image

from tests.clips import frame, frame_index, write_clip
from vlkit.config.video import VideoConfig
from vlkit.images import ImageError
from vlkit.video import VideoError, load_video

@pytest.mark.parametrize("name, codec", [("clip.mp4", "mpeg4"), ("clip.mp4", "libx264"), ("clip.webm", "libvpx")])
def test_file_sampled_at_fps(tmp_path, name, codec):
    path = write_clip(tmp_path / name, n=12, fps=6, codec=codec)  # 2 s
    frames = load_video(path, VideoConfig(fps=2))
    assert [frame_index(f) for f in frames] == [0, 3, 6, 9]  # t = 0, 0.5, 1, 1.5 s
    assert all(f.mode == "RGB" and f.size == (128, 32) for f in frames)


def test_bytes_decode_like_the_file(tmp_path):
    path = write_clip(tmp_path / "c.mp4")
    a = [frame_index(f) for f in load_video(path.read_bytes(), VideoConfig(fps=3))]
    assert a == [frame_index(f) for f in load_video(path, VideoConfig(fps=3))] == [0, 2, 4, 6, 8, 10]


def test_max_frames_spreads_over_the_whole_clip(tmp_path):
    path = write_clip(tmp_path / "c.mp4", n=12, fps=6)
    idx = [frame_index(f) for f in load_video(path, VideoConfig(fps=6, max_frames=3))]
    assert idx == [0, 4, 8]


def test_frame_budget_holds_without_a_duration(tmp_path, monkeypatch):
    import vlkit.video as video

    monkeypatch.setattr(video, "_duration", lambda container, stream: 0.0)  # e.g. a stream without headers
    idx = [frame_index(f) for f in load_video(write_clip(tmp_path / "c.mp4", n=12, fps=6),
                                              VideoConfig(fps=6, max_frames=5))]
    assert len(idx) <= 5 and idx[0] == 0 and idx == sorted(idx) and idx[-1] >= 6


def test_even_count_for_temporal_patches(tmp_path):
    frames = load_video(write_clip(tmp_path / "c.mp4", n=12, fps=6), VideoConfig(fps=1.5, temporal_patch_size=2))
    assert [frame_index(f) for f in frames] == [0, 4, 8, 8]  # 3 sampled, the last one repeated


def test_total_pixel_budget_keeps_aspect(tmp_path):
    frames = load_video([frame(k) for k in range(4)], VideoConfig(max_total_pixels=4 * 64 * 16))
    assert [f.size for f in frames] == [(64, 16)] * 4
    assert [frame_index(f) for f in frames] == [0, 1, 2, 3]


def test_frame_folder_in_natural_order_without_pyav(tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "c.mp4")
    for k in range(11):
        frame(k).save(tmp_path / f"f_{k}.png")
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **kw: (_ for _ in ()).throw(ImportError(name))
                        if name == "av" else real_import(name, *a, **kw))
    frames = load_video(tmp_path, VideoConfig(max_frames=4))
    assert [frame_index(f) for f in frames] == [0, 2, 5, 8]  # 11 frames thinned evenly to 4
    paths = [str(tmp_path / f"f_{k}.png") for k in range(3)]
    assert [frame_index(f) for f in load_video(paths)] == [0, 1, 2]
    with pytest.raises(VideoError, match=r"pip install 'vlkit\[video\]'"):
        load_video(clip)


@pytest.mark.parametrize("data, match", [
    (b"", "empty"), (b"\x00not a video at all" * 50, "cannot be decoded"), (None, "no video stream")])
def test_bad_files_are_clear_errors(tmp_path, data, match):
    if data is None:  # a valid container holding only audio
        pytest.importorskip("av")
        with wave.open(str(tmp_path / "a.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(b"\x00\x00" * 800)
        data = (tmp_path / "a.wav").read_bytes()
    with pytest.raises(VideoError, match=match) as info:
        load_video(data)
    assert isinstance(info.value, ImageError)  # reported wherever a bad image is


def test_truncated_file(tmp_path):
    data = write_clip(tmp_path / "c.mp4").read_bytes()
    with pytest.raises(VideoError):
        load_video(data[: len(data) // 3])


def test_limits(tmp_path):
    path = write_clip(tmp_path / "c.mp4")
    with pytest.raises(VideoError, match="bytes; the limit is 100"):
        load_video(path, VideoConfig(max_bytes=100))
    with pytest.raises(VideoError, match="max_decoded_frames=5"):
        load_video(path, VideoConfig(max_decoded_frames=5))
    with pytest.raises(VideoError, match="does not exist"):
        load_video(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="no frames"):
        load_video([])
    with pytest.raises(VideoError, match="no frame images"):
        load_video(tmp_path.joinpath("empty_dir").mkdir() or tmp_path / "empty_dir")
    with pytest.raises(VideoError, match="frame 1 must be"):
        load_video([Image.new("RGB", (4, 4)), 3])
