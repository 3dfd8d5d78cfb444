"""Every recipe shipped in recipes/ builds its model, so a typo there fails CI rather than a user's run."""
import re
from pathlib import Path

import pytest

from vlkit.config import VQConfig, from_dict, load_yaml, tiny_model_config
from vlkit.models.vlm import VisionLanguageModel
from vlkit.models.vq import VisualTokenizer, check_vq_config
from vlkit.pipeline import Pipeline
from vlkit.train.stage_data import source_spec
from vlkit.train.stages import apply_stage, check_vision_stage, param_groups
from vlkit.train.trainer import Recipe, build_pipeline

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
CORPUS = ["Draw: a red circle above a blue square", "Segment the image. Classes: circle, square.", "What is 12?"]


def _tiny_init(text: str, tokenizer, directory: Path) -> str:
    """A recipe on top of `init:` (composed from real backbones by the `vlkit build` command its comment gives):
    a tiny checkpoint with the connector that command names, so the recipe's model side is built offline."""
    connector = re.search(r"--connector (\w+)", text)
    assert connector, "an init: recipe documents the `vlkit build ... --connector X` that makes its init"
    cfg = tiny_model_config(connector.group(1), vocab_size=len(tokenizer))
    cfg.image_token_id = tokenizer.image_pad_id
    Pipeline(VisionLanguageModel(cfg), tokenizer).save_pretrained(directory)
    return connector.group(1)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_builds(path, tmp_path, tokenizer):
    text = path.read_text().replace("{data}", str(tmp_path / "data")).replace("{vq}", str(tmp_path / "vq"))
    (tmp_path / path.name).write_text(text)
    spec = load_yaml(tmp_path / path.name)
    if "stages" not in spec:  # a visual tokenizer recipe (vlkit train recipes/vq.yaml)
        check_vq_config(from_dict(VQConfig, spec["vq"], "vq"))
        return
    recipe = Recipe.from_dict(spec)  # typed train/stage configs: unknown keys and bad values raise here
    connector = None
    if recipe.init:
        connector = _tiny_init(text, tokenizer, tmp_path / "init")
        recipe.init = str(tmp_path / "init")
    if recipe.model.get("vision_target") == "codes":  # a tokenizer whose code grid is the recipe's patch grid
        VisualTokenizer(VQConfig(hidden_size=16, num_layers=0, downsample=recipe.model["vision"].get("patch_size", 8))
                        ).save_pretrained(tmp_path / "vq")
    pipe = build_pipeline(recipe, lambda: CORPUS)  # raises ConfigError on a bad value or a code-grid mismatch
    assert pipe.model.cfg.vision_target == recipe.model.get("vision_target", "none")
    if connector is not None:
        assert pipe.config.connector.type == connector and len(pipe.tokenizer) == len(tokenizer)
    for i, stage in enumerate(recipe.stages):  # each stage can set up its model and read its sources
        for j, src in enumerate(stage.data.train):
            source_spec(src, j)
        check_vision_stage(stage, pipe.config)
        counts = apply_stage(pipe.model, stage)
        assert counts["trainable"] > 0, stage.name
        groups = param_groups(pipe.model, stage, recipe.train.weight_decay)
        if stage.lr_vision is not None:
            assert [g["lr"] for g in groups if g["name"] == "vision"] and \
                all(g["lr"] == stage.lr_vision for g in groups if g["name"] == "vision"), stage.name
