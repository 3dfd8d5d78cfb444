"""The synthetic visual world: scenes of shapes, text, charts and documents, with exact ground truth, and
generators for every task vlkit trains and evaluates (see docs/data.md).

    from vlkit.data.synth import generate_dataset, inspect_dataset
    generate_dataset("data/train", n=5000, tasks=["vqa", "grounding"], split="train", seed=0)
"""
from vlkit.data.sources import corpus_text
from vlkit.data.synth.dataset import generate_dataset, inspect_dataset, parse_heldout, task_plan, task_weights
from vlkit.config.synth import DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES, SynthConfig
from vlkit.data.synth.base import RELATION_PHRASES, RELATIONS, VQA_TYPES
from vlkit.data.synth.tasks import DEFAULT_TASKS, TASKS, make_sample
from vlkit.data.synth.world import COLORS, SEG_CLASSES, SHAPES, SIZES, Scene, SceneObject, compose_scene, sample_scene

__all__ = [
    "COLORS", "DEFAULT_HELDOUT_PAIRS", "DEFAULT_TASKS", "DEFAULT_HELDOUT_PHRASES", "RELATIONS", "RELATION_PHRASES", "SEG_CLASSES",
    "SHAPES", "SIZES", "TASKS", "VQA_TYPES", "Scene", "SceneObject", "SynthConfig", "compose_scene", "corpus_text",
    "generate_dataset", "inspect_dataset", "make_sample", "parse_heldout", "sample_scene", "task_plan",
    "task_weights",
]
