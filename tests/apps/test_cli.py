"""The `vlkit` command's parser: choices come from the registries, a user mistake is one line and exit code 2."""
import subprocess
import sys

import pytest

from vlkit.apps.cli import build_parser, main
from vlkit.apps.quickstart import VISION_TARGETS
from vlkit.data.sources import FORMATS
from vlkit.config.synth import ASPECTS
from vlkit.data.synth.tasks import SPLITS
from vlkit.models.connectors import CONNECTORS
from vlkit.hf.export import EXPORTERS


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, flag, registry", [
    (["build", "--vision", "v", "--lm", "l", "-o", "out", "--connector"], "connector", CONNECTORS),
    (["export", "ckpt", "-o", "out", "--format"], "format", EXPORTERS),
    (["data", "synth", "--out", "d", "--format"], "format", FORMATS),
    (["data", "synth", "--out", "d", "--split"], "split", SPLITS),
    (["data", "synth", "--out", "d", "--aspect"], "aspect", ASPECTS),
    (["quickstart", "--vision-target"], "vision_target", VISION_TARGETS),
])
def test_choices_are_the_registry_keys(argv, flag, registry, capsys):
    assert len(registry) > 0
    for key in registry:
        assert getattr(build_parser().parse_args(argv + [key]), flag) == key
    err = _error(argv + ["no-such-key"], capsys)
    assert "invalid choice: 'no-such-key'" in err
    assert all(repr(key) in err for key in registry)  # the error lists what is known


def test_vision_targets_are_the_model_configs():
    assert VISION_TARGETS == ("none", "codes")


def test_help_lists_the_connectors(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in CONNECTORS)


def test_building_the_parser_does_not_import_torch():
    code = "import sys; from vlkit.apps.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlkit: error: ") and err.count("\n") == 1 and "missing" in err


def test_data_synth_writes_the_aspect_and_video_frames_it_is_given(tmp_path):
    import json

    from PIL import Image

    out = tmp_path / "d"
    assert main(["data", "synth", "--out", str(out), "--n", "6", "--tasks", "ocr,video_qa", "--size", "96",
                 "--aspect", "wide", "--video-frames", "5"]) == 0
    samples = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    ocr = [s for s in samples if s["task"] == "ocr"]
    videos = [s for s in samples if s["task"] == "video_qa"]
    assert ocr and videos
    for s in ocr:  # wide: 96 x 96 / (8/3) = 96 x 36
        with Image.open(out / s["images"][0]) as im:
            assert im.size == (96, 36)
    for s in videos:
        clip = s["videos"][0]
        n = len(clip) if isinstance(clip, list) else len(list((out / clip).iterdir()))
        assert n == 5


def test_data_synth_refuses_a_bad_video_frame_count_in_one_line(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "2", "--video-frames", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlkit: error: ") and "video_frames" in err and err.count("\n") == 1
