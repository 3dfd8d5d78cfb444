"""Every recipe shipped in recipes/ builds its model, so a typo there fails CI rather than a user's run."""
from pathlib import Path

import pytest

from vlkit.config import VQConfig, from_dict, load_yaml
from vlkit.models.vq import VisualTokenizer, check_vq_config
from vlkit.train.trainer import Recipe, build_pipeline

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
CORPUS = ["Draw: a red circle above a blue square", "Segment the image. Classes: circle, square.", "What is 12?"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_builds(path, tmp_path):
    text = path.read_text().replace("{data}", str(tmp_path / "data")).replace("{vq}", str(tmp_path / "vq"))
    (tmp_path / path.name).write_text(text)
    spec = load_yaml(tmp_path / path.name)
    if "stages" not in spec:  # a visual tokenizer recipe (vlkit train recipes/vq.yaml)
        check_vq_config(from_dict(VQConfig, spec["vq"], "vq"))
        return
    recipe = Recipe.from_dict(spec)  # typed train/stage configs: unknown keys and bad values raise here
    if recipe.init:  # composed from real backbones (vlkit build), which tests cannot download
        assert recipe.stages and not recipe.model
        return
    if recipe.model.get("vision_target") == "codes":  # a tokenizer whose code grid is the recipe's patch grid
        VisualTokenizer(VQConfig(hidden_size=16, num_layers=0, downsample=recipe.model["vision"].get("patch_size", 8))
                        ).save_pretrained(tmp_path / "vq")
    pipe = build_pipeline(recipe, lambda: CORPUS)  # raises ConfigError on a bad value or a code-grid mismatch
    assert pipe.model.cfg.vision_target == recipe.model.get("vision_target", "none")
