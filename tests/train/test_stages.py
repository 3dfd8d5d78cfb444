"""vlkit.train.stages: the registry of stage kinds, what each freezes, and the per-module learning rates."""
import pytest

from vlkit.config import STAGE_KINDS, ConfigError, StageConfig, tiny_model_config
from vlkit.models.vlm import VisionLanguageModel
from vlkit.train.stages import STAGES, apply_stage, check_vision_stage, param_groups, stage_kind


@pytest.fixture(scope="module")
def model():
    return VisionLanguageModel(tiny_model_config("mlp"))


def _trainable_tops(model):
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_every_kind_config_accepts_has_an_entry():
    assert tuple(STAGES) == STAGE_KINDS
    assert [k for k, s in STAGES.items() if s.uses_lora] == ["lora"]
    assert [k for k, s in STAGES.items() if not s.runs_language] == ["vision"]
    assert [k for k, s in STAGES.items() if s.trains_everything] == ["multitask"]


@pytest.mark.parametrize("kind,tops", [("align", {"connector"}), ("sft", {"connector", "language"}),
                                       ("multitask", {"vision", "connector", "language"}),
                                       ("vision", {"vision", "connector", "language"})])
def test_apply_stage_freezes_what_the_kind_does_not_train(model, kind, tops):
    counts = apply_stage(model, StageConfig(train=kind))
    assert _trainable_tops(model) == tops
    assert counts["trainable"] + counts["frozen"] == sum(p.numel() for p in model.parameters())
    if kind == "vision":  # the LM's layers stay frozen; only its word embeddings (tied head) train
        assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("language.layers."))


def test_per_module_learning_rates_and_no_decay_on_norms(model):
    stage = StageConfig(train="multitask", lr=1e-3, lr_vision=1e-5)
    apply_stage(model, stage)
    groups = param_groups(model, stage, weight_decay=0.1)
    lrs = {(g["name"], g["weight_decay"]): g["lr"] for g in groups}
    assert lrs[("vision", 0.1)] == 1e-5 and lrs[("connector", 0.1)] == 1e-3 and ("vision", 0.0) in lrs
    n = sum(len(g["params"]) for g in groups)
    assert n == sum(1 for p in model.parameters() if p.requires_grad)


def test_a_vision_stage_needs_dense_labels_at_the_connector():
    stage = StageConfig(name="tower", train="vision")
    assert stage_kind(stage).dense_at_connector
    with pytest.raises(ConfigError, match="stage 'tower': train: vision learns per-patch labels at the connector"):
        check_vision_stage(stage, tiny_model_config())
    check_vision_stage(stage, tiny_model_config(dense_prediction=True, dense_from="connector"))
    check_vision_stage(StageConfig(train="sft"), tiny_model_config())  # other kinds need nothing
