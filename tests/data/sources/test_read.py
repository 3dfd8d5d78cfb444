"""A recipe's source: max_skip, source keys, and `vlkit train` on LLaVA's layout end to end."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.data.sources.helpers import llava_layout, read_all, save_image
from vlkit.config import ConfigError
from vlkit.data.sources import DataError, DataWarning
from vlkit.train.stage_data import source_spec


def test_most_of_a_source_skipped_is_an_error(tmp_path):
    path, _ = llava_layout(tmp_path)
    # without image_folder the paths resolve against the JSON file's folder: 12 of 16 images are missing
    with pytest.raises(DataError) as err:
        read_all({"path": str(path)})
    msg = str(err.value)
    for part in (str(path), "12 of 16", "75.0%", "missing_image: 12", "max_skip=0.01", "image_folder",
                 "max_skip: 0.75"):
        assert part in msg, (part, msg)
    got, stats = read_all({"path": str(path), "max_skip": 0.75})  # the suggested value accepts the loss
    assert len(got) == 4 and stats.skipped["missing_image"] == 12


def test_max_skip_threshold(tmp_path):
    save_image(tmp_path / "images" / "ok.png", "red")

    def write(n_missing: int) -> None:
        rows = [{"id": str(k), "images": [f"images/gone{k}.png" if k < n_missing else "images/ok.png"],
                 "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]}
                for k in range(100)]
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(1)  # 1% is what the default allows
    got, stats = read_all({"path": str(tmp_path)})
    assert len(got) == 99 and stats.n_skipped == 1
    write(2)
    with pytest.raises(DataError, match=r"2 of 100 samples \(2.0%\).*max_skip=0.01.*missing_image: 2"):
        read_all({"path": str(tmp_path)})
    assert len(read_all({"path": str(tmp_path), "max_skip": 0.02})[0]) == 98
    with pytest.raises(DataError, match="1 of 100 .*max_skip=0"):
        write(1)
        read_all({"path": str(tmp_path), "max_skip": 0})


@pytest.mark.parametrize("key, hint", [("weigth", "weight"), ("taks", "tasks"), ("image_root", "image_folder"),
                                       ("max_skips", "max_skip"), ("shuffle", None)])
def test_unknown_source_keys_are_errors(tmp_path, key, hint):
    with pytest.raises(ConfigError, match=rf"data.train.3: unknown key\(s\) \['{key}'\]") as err:
        source_spec({"path": str(tmp_path), key: 1}, 3)
    assert (f"`{key}` -> `{hint}`?" in str(err.value)) == (hint is not None)
    assert "image_folder" in str(err.value) and "max_skip" in str(err.value)  # the allowed keys are listed


@pytest.mark.parametrize("value", [1.5, -0.1, "a lot"])
def test_bad_max_skip_is_an_error(tmp_path, value):
    with pytest.raises(ConfigError, match="data.train.0.max_skip"):
        source_spec({"path": str(tmp_path), "max_skip": value}, 0)


def llava_recipe(tmp_path: Path, source: dict) -> Path:
    import yaml

    recipe = {"model": {"preset": "tiny"}, "tokenizer": {"vocab_size": 300},
              "train": {"out": str(tmp_path / "run"), "precision": "fp32", "log_every": 1, "save_every": 0},
              "stages": [{"name": "sft", "train": "multitask", "steps": 3, "lr": 1e-3, "warmup_steps": 1,
                          "batch_size": 4, "data": {"train": [source], "max_length": 256}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_vlkit_train_on_llava_layout_uses_every_image(tmp_path, caplog):
    import logging

    import yaml

    from vlkit.apps.cli import main
    from vlkit.pipeline import load
    from vlkit.train.stage_data import load_examples
    from vlkit.train.trainer import Recipe

    path, folder = llava_layout(tmp_path / "data")
    recipe = llava_recipe(tmp_path, {"path": str(path), "image_folder": str(folder)})
    caplog.set_level(logging.INFO, logger="vlkit.train")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # not one sample skipped while reading
        assert main(["train", str(recipe)]) == 0
    assert any("16 records indexed" in r.getMessage() for r in caplog.records)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if r.strip()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    # the examples the stage trained on: every image sample with its image, decoded from the image folder
    pipe = load(tmp_path / "run" / "final")
    stage = Recipe.from_dict(yaml.safe_load(recipe.read_text())).stages[0]
    examples = load_examples(pipe, stage.data, 0)
    assert sorted(len(e.images) for e in examples) == [0] * 4 + [1] * 12


def test_vlkit_train_stops_cleanly_when_a_source_is_mostly_skipped(tmp_path, capsys):
    from vlkit.apps.cli import main

    path, _ = llava_layout(tmp_path / "data")
    recipe = llava_recipe(tmp_path, {"path": str(path)})  # no image_folder: 12 of 16 images missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlkit: error: source ") and "12 of 16 samples" in err and "max_skip" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "final").exists()
    # a typo in a source key is a clean error too
    recipe = llava_recipe(tmp_path, {"path": str(path), "image_root": str(tmp_path)})
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['image_root']" in err and "`image_root` -> `image_folder`?" in err
