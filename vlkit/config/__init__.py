"""Typed configuration, the lowest layer of vlkit: every config dataclass, validated in one place.

    base.py        the validator (field types and ranges), dict / YAML / JSON round trip, recipe overrides
    model.py       ModelConfig and its parts (vision, processor, connector, text, vq), presets
    train.py       Recipe, TrainConfig, StageConfig, DataConfig, TokenizerConfig, TargetSpec
    generation.py  GenerationConfig, ImageGenerationConfig, SamplingParams
    synth.py       SynthConfig (the synthetic world)

Every checkpoint carries its full ModelConfig as `config.json`; recipes are YAML files whose keys mirror these
dataclasses. Unknown keys and bad values raise `ConfigError` naming the key and what is allowed.
"""
from vlkit.config.base import (ConfigError, Range, apply_overrides, check_fields, from_dict, load_yaml, non_negative,
                               parse_override, positive, ranged, save_json, to_dict)
from vlkit.config.generation import SEED_RANGE, GenerationConfig, ImageGenerationConfig, SamplingParams
from vlkit.config.model import (CONNECTOR_TYPES, PRESETS, PROMPT_FORMAT_NAMES, ConnectorConfig, ImageProcessorConfig,
                                ModelConfig, TextConfig, VisionConfig, VQConfig, model_config_from_dict,
                                tiny_model_config)
from vlkit.config.synth import DEFAULT_HELDOUT_PAIRS, DEFAULT_HELDOUT_PHRASES, SynthConfig
from vlkit.config.train import (ANSWER_FORMAT_NAMES, STAGE_KINDS, DataConfig, GRPOConfig, Recipe, StageConfig,
                                TargetSpec, TokenizerConfig, TrainConfig)

__all__ = [
    "ANSWER_FORMAT_NAMES", "CONNECTOR_TYPES", "ConfigError", "ConnectorConfig", "DEFAULT_HELDOUT_PAIRS",
    "DEFAULT_HELDOUT_PHRASES", "DataConfig", "GRPOConfig", "GenerationConfig", "ImageGenerationConfig",
    "ImageProcessorConfig", "ModelConfig", "PRESETS",
    "PROMPT_FORMAT_NAMES", "Range", "Recipe", "SEED_RANGE", "STAGE_KINDS", "SamplingParams", "StageConfig",
    "SynthConfig", "TargetSpec", "TextConfig", "TokenizerConfig", "TrainConfig", "VQConfig", "VisionConfig",
    "apply_overrides", "check_fields", "from_dict", "load_yaml", "model_config_from_dict", "non_negative",
    "parse_override", "positive", "ranged", "save_json", "tiny_model_config", "to_dict",
]
