"""Configuration of the LM pipeline: what a run is, validated once, before any work.

- :mod:`~lm_experiments.config.sections`  -- one frozen dataclass per section (``model``,
  ``pre``, ``post``, ``ft``, ``eval``, ``train``, ``matched``, the optimizer section); each
  checks its own fields in ``__post_init__`` (errors name the field).
- :mod:`~lm_experiments.config.post_axes` -- :class:`PostSetting`: the post-training sweep
  axes (one field each), built from the stage-2 intervention registry
  (:mod:`early_exposure.interventions`).
- :mod:`~lm_experiments.config.pipeline`  -- :class:`PipelineConfig`, ``load_config``,
  ``--set`` overrides, the data fallback.

Imports only :mod:`lm_experiments.data` and :mod:`early_exposure` (no torch).
"""

from lm_experiments.config.pipeline import (
    PipelineConfig, config_from_mapping, config_to_dict, fallback_config, load_config, moved_key,
)
from lm_experiments.config.sections import (
    LORA_MODULES, LORA_TARGETS, MAX_BATCH, MAX_EPOCHS, MAX_TOKENS, EvalSection, FtSection, MatchedSection,
    ModelSection, OptimSection, PostSection, PreSection, TrainSection, check_budget,
)

__all__ = [
    "PipelineConfig", "config_from_mapping", "config_to_dict", "fallback_config", "load_config", "moved_key",
    "LORA_MODULES", "LORA_TARGETS", "MAX_BATCH", "MAX_EPOCHS", "MAX_TOKENS", "EvalSection", "FtSection",
    "MatchedSection", "ModelSection", "OptimSection", "PostSection", "PreSection", "TrainSection", "check_budget",
]
