"""Config validation: every bad value a user can write is one `vlkit: error:` line naming the key, before any work."""
import subprocess
import sys

import pytest
import yaml

from vlkit import config as C
from vlkit.apps.cli import main
from vlkit.train.stages import STAGES

RECIPE = {"model": {"preset": "tiny"}, "tokenizer": {"vocab_size": 300},
          "train": {"out": "OUT", "precision": "fp32", "keep_last": 1},
          "stages": [{"name": "align", "train": "align", "steps": 2, "lr": 1.0e-3, "batch_size": 4,
                      "data": {"train": [{"path": "no-such-data"}]}}]}
VQ_RECIPE = {"vq": {"codebook_size": 16, "hidden_size": 16, "num_layers": 0}, "data": "no-such-data", "steps": 2,
             "out": "OUT"}

# (recipe, override, what the error line must contain). Items 8 (silently accepted) and 9 (crashed) of issue 17,
# then a sample of the other ranges the same validator enforces.
CASES = [
    (RECIPE, "stages.0.lr=-1.0", "stages.0.lr=-1.0 must be > 0"),
    (RECIPE, "train.precision=fp16", "train.precision='fp16' is not allowed; choose one of ['auto', 'bf16', 'fp32']"),
    (RECIPE, "stages.0.steps=-5", "stages.0.steps=-5 must be > 0"),
    (RECIPE, "stages.0.epochs=-1", "stages.0.epochs=-1.0 must be > 0"),
    (RECIPE, "stages.0.warmup_steps=-1", "stages.0.warmup_steps=-1 must be >= 0"),
    (RECIPE, "train.keep_last=-1", "train.keep_last=-1 must be >= 0"),
    (RECIPE, "stages.0.batch_size=0", "stages.0.batch_size=0 must be > 0"),
    (RECIPE, "stages.0.batch_size=-4", "stages.0.batch_size=-4 must be > 0"),
    (RECIPE, "stages.0.grad_accum=0", "stages.0.grad_accum=0 must be > 0"),
    (RECIPE, "train.log_every=0", "train.log_every=0 must be > 0"),
    (RECIPE, "tokenizer.vocab_size=abc", "tokenizer.vocab_size='abc' must be an integer"),
    (RECIPE, "train.out=A_FILE", "train.out="),
    (RECIPE, "stages.9.lr=0.1", "override 'stages.9.lr=0.1': stages has 1 entries (0..0), no '9'"),
    (RECIPE, "stages.x.lr=0.1", "override 'stages.x.lr=0.1': stages has 1 entries"),
    (RECIPE, "train.out.sub=1", "override 'train.out.sub=1': train.out='OUT' has no key 'sub'"),
    (RECIPE, "stages.0.lr=.nan", "stages.0.lr=nan must be"),
    (RECIPE, "stages.0.lr=.inf", "stages.0.lr=inf must be a finite number"),
    (RECIPE, "stages.0.lr_text=0", "stages.0.lr_text=0.0 must be > 0"),
    (RECIPE, "stages.0.train=everything", "stages.0.train='everything' is not allowed; choose one of"),
    (RECIPE, "stages.0.data.max_length=0", "stages.0.data.max_length=0 must be > 0"),
    (RECIPE, "stages.0.data.prompt_dropout=1.0", "stages.0.data.prompt_dropout=1.0 must be in [0, 1)"),
    (RECIPE, "stages.0.lora_dropout=-0.1", "stages.0.lora_dropout=-0.1 must be in [0, 1)"),
    (RECIPE, "stages.0.batch_size=2.5", "stages.0.batch_size=2.5 must be an integer"),
    (RECIPE, "train.seed=-1", "train.seed=-1 must be >= 0"),
    (RECIPE, "train.grad_clip=-1", "train.grad_clip=-1.0 must be >= 0"),
    (RECIPE, "train.save_every=-2", "train.save_every=-2 must be >= 0"),
    (RECIPE, "train.max_bad_steps=0", "train.max_bad_steps=0 must be > 0"),
    (RECIPE, "train.distributed=zero", "train.distributed='zero' is not allowed"),
    (RECIPE, "stages.0.data.packing=maybe", "stages.0.data.packing='maybe' must be true or false"),
    (VQ_RECIPE, "vq.ema_decay=1.5", "vq.ema_decay=1.5 must be in [0, 1)"),
    (VQ_RECIPE, "vq.num_layers=-1", "vq.num_layers=-1 must be >= 0"),
    (VQ_RECIPE, "vq.codebook_size=0", "vq.codebook_size=0 must be > 0"),
]


def _write(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    spec = yaml.safe_load(yaml.safe_dump(recipe).replace("OUT", str(tmp_path / "run")))
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("recipe,override,expected", CASES, ids=[c[1] for c in CASES])
def test_bad_value_is_one_error_line_naming_the_key(recipe, override, expected, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    override = override.replace("A_FILE", str(tmp_path / "a_file"))
    path = _write(tmp_path, recipe)
    assert main(["train", str(path), override]) == 2
    err = capsys.readouterr().err.replace(str(tmp_path / "run"), "OUT")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlkit: error: "), err
    assert expected.replace("A_FILE", str(tmp_path / "a_file")) in lines[0]
    assert not (tmp_path / "run").exists() or override.startswith("train.out")  # nothing ran


def test_the_recipes_of_the_table_are_valid_without_the_override(tmp_path):
    C.Recipe.from_dict(C.load_yaml(_write(tmp_path, RECIPE)))
    C.from_dict(C.VQConfig, VQ_RECIPE["vq"], "vq").validate()


def test_exit_code_and_single_line_from_the_command(tmp_path):
    path = _write(tmp_path, RECIPE)
    proc = subprocess.run([sys.executable, "-m", "vlkit", "train", str(path), "stages.0.lr=-1.0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["vlkit: error: stages.0.lr=-1.0 must be > 0"]


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(C.ConfigError, match=r"^stage.lr=-1.0 must be > 0$"):
        C.StageConfig(lr=-1)
    with pytest.raises(C.ConfigError, match=r"^data.prompt_noise=1.5 must be in \[0, 1\]$"):
        C.DataConfig(prompt_noise=1.5)
    with pytest.raises(C.ConfigError, match=r"^model.text.num_heads=0 must be > 0$"):
        C.model_config_from_dict({"text": {"num_heads": 0}})
    with pytest.raises(C.ConfigError, match=r"^vision.image_std=\(0.5, 0.0, 0.5\) must be > 0$"):
        C.VisionConfig(image_std=(0.5, 0.0, 0.5))
    cfg = C.tiny_model_config()
    cfg.text.num_kv_heads = -2  # changed after construction: validate() (run by the model) sees it
    with pytest.raises(C.ConfigError, match=r"^text.num_kv_heads=-2 must be > 0$"):
        cfg.validate()
    assert C.StageConfig(lr=1).lr == 1.0 and isinstance(C.StageConfig(lr=1).lr, float)
    assert C.from_dict(C.StageConfig, {"lr": "1e-3"}).lr == 1e-3  # YAML 1.1 reads 1e-3 as a string


def test_the_stage_kinds_are_the_registry_of_train_stages():
    """config names the kinds (it imports nothing above it); vlkit.train.stages gives each its properties."""
    assert C.STAGE_KINDS == tuple(STAGES)


def test_a_recipe_needs_stages_and_known_top_level_keys():
    with pytest.raises(C.ConfigError, match=r"^recipe: `stages` must be a non-empty list$"):
        C.Recipe.from_dict({"model": {}})
    with pytest.raises(C.ConfigError, match=r"unknown key\(s\) \['stage'\]"):
        C.Recipe.from_dict({"stage": [{}], "stages": [{}]})
    recipe = C.Recipe.from_dict({"stages": [{"train": "lora", "lr": 1}]})
    assert isinstance(recipe.stages[0], C.StageConfig) and recipe.stages[0].lr == 1.0


def test_target_spec_checks_its_shares():
    assert C.TargetSpec(prompt_dropout=0.5, dense=True).prompt_dropout == 0.5
    with pytest.raises(C.ConfigError, match=r"^target.prompt_dropout=1.0 must be in \[0, 1\)$"):
        C.TargetSpec(prompt_dropout=1.0)
