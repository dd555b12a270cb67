"""The whole LM pipeline config (:class:`PipelineConfig`) and its loading.

:func:`load_config` reads a preset file (``configs/lm/*.yaml``), applies ``--set a.b=value``
overrides and builds the dataclasses with ``early_exposure.configs.from_dict`` (unknown keys
and wrong types are errors naming the field; the loader prefixes each section's path). Keys
of the earlier layout (``stage1``, ``stage2.lr``, ``stage3.lrs``, ...) are refused with a
message naming the new key. The sections are in :mod:`lm_experiments.config.sections`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from early_exposure.configs import apply_overrides, check_int, from_dict, load_mapping, to_dict
from early_exposure.errors import ConfigError
from lm_experiments.config.sections import (
    EvalSection, FtSection, MatchedSection, ModelSection, PostSection, PreSection, TrainSection,
)
from lm_experiments.data import DataConfig


@dataclass(frozen=True)
class PipelineConfig:
    """One preset of the three-stage LM pipeline (configs/lm/*.yaml).

    Attributes:
        data: corpora, tokenizer and packing (``lm_experiments.data.DataConfig``).
        data_fallback: used instead of ``data`` when a corpus of ``data`` cannot be loaded
            (e.g. the Hugging Face hub is unreachable): the GPU presets fall back to the
            embedded offline corpora. The fallback in use is recorded in every result.
        model, pre, post, ft, eval: the sections above.
        seeds: root seeds; every run is repeated for each.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
        precision: ``fp32`` or ``bf16`` (autocast on accelerators; fp32 on CPU).
        pipeline: label of the frontier rows (default ``PRE>POST>FT`` corpus names).
        micro_batch: sequences per forward/backward pass (gradient accumulation up to each
            stage's batch size; 0 = the whole batch at once). Results do not depend on it.
        fallback_set: ``--set``-style overrides applied together with ``data_fallback``
            (budgets sized for the online corpora rarely fit the small offline ones). A field
            given on the command line with ``--set`` keeps the command line's value.
        threads: CPU threads for torch (``torch.set_num_threads``; 0 = torch's default).
            On a small shared CPU, 1 thread can be several times faster than 2 for tiny
            models (no oversubscription). Not part of any run key.
        train: the engine's speed options (:class:`TrainSection`: compile, cross-entropy
            implementation); not part of any run key.
        matched: the matched-L_im study (:class:`MatchedSection`; off by default).
    """

    data: DataConfig
    model: ModelSection = ModelSection()
    pre: PreSection = PreSection()
    post: PostSection = PostSection()
    ft: FtSection = FtSection()
    eval: EvalSection = EvalSection()
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    pipeline: str | None = None
    data_fallback: DataConfig | None = None
    micro_batch: int = 0
    threads: int = 0
    fallback_set: tuple[str, ...] = ()
    train: TrainSection = TrainSection()
    matched: MatchedSection = MatchedSection()

    def __post_init__(self) -> None:
        check_int("micro_batch", self.micro_batch, 0)
        check_int("threads", self.threads, 0)
        if len(self.seeds) == 0 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"must list at least one distinct integer seed, got {list(self.seeds)}")
        for i, s in enumerate(self.seeds):
            check_int(f"seeds[{i}]", s, 0)
        if self.fallback_set and self.data_fallback is None:
            raise ConfigError("fallback_set", "only meaningful with a data_fallback section")
        for i, item in enumerate(self.fallback_set):
            if "=" not in item or item.split("=", 1)[0].split(".")[0] == "data":
                raise ConfigError(f"fallback_set[{i}]",
                                  f"expected KEY=VALUE outside data (use data_fallback), got {item!r}")
        if self.pipeline is not None and not self.pipeline.strip():
            raise ConfigError("pipeline", "must be a non-empty label such as 'general>music>chem' or null")

    def pipeline_label(self, data: DataConfig | None = None) -> str:
        """``PRE>POST>FT`` from the corpus names (hub ids shortened to the dataset name)."""
        if self.pipeline:
            return self.pipeline
        d = data or self.data
        return ">".join(spec.name.rstrip("/").split("/")[-1] for spec in (d.pre, d.post, d.ft))

    @property
    def pre_fractions(self) -> tuple[float, ...]:
        """Every lambda that needs a pretraining run (mix fractions and compute-matched)."""
        out = list(self.pre.mix_fraction)
        out += [f for f in self.post.compute_matched if f not in out]
        return tuple(out)


#: keys of the earlier layout -> where they live now (refused with this message)
_MOVED: dict[str, str] = {
    "stage1": "pre", "stage2": "post", "stage3": "ft",
    "pre.mix_fractions": "pre.mix_fraction",
    "ft.lrs": "ft.lr", "ft.min_lr_ratio": "ft.optim.min_lr_ratio",
    **{f"pre.{k}": f"pre.optim.{k}" for k in ("lr", "min_lr", "warmup_steps", "weight_decay")},
    **{f"post.{k}": f"post.optim.{k}" for k in ("min_lr", "warmup_steps", "weight_decay")},
    **{f"post.{k}": f"post.sweep.{k}" for k in ("lr", "dropout", "batch_size", "replay", "lora")},
    **{f"ft.{k}": f"ft.optim.{k}" for k in ("warmup_steps", "weight_decay")},
}


def moved_key(key: str) -> str | None:
    """Where a key of the earlier layout lives now (``stage2.lr`` -> ``post.sweep.lr``), or None."""
    head, _, tail = key.partition(".")
    if head in ("stage1", "stage2", "stage3"):
        head = _MOVED[head]
        return moved_key(f"{head}.{tail}") or f"{head}.{tail}" if tail else head
    for old, new in _MOVED.items():
        if "." in old and (key == old or key.startswith(old + ".")):
            return new + key[len(old):]
    return None


def _refuse_moved_keys(data: dict[str, Any]) -> None:
    for head, node in data.items():
        keys = [head] + ([f"{head}.{k}" for k in node] if isinstance(node, dict) else [])
        for key in keys:
            new = moved_key(key)
            if new is not None:
                raise ConfigError(key, f"renamed: this is now {new} (see docs/lm_pipeline.md, 'Config')")
    for i, item in enumerate(data.get("fallback_set") or []):
        new = moved_key(_override_key(item)) if isinstance(item, str) else None
        if new is not None:
            raise ConfigError(f"fallback_set[{i}]", f"{_override_key(item)} is now {new} "
                              "(see docs/lm_pipeline.md, 'Config')")


def config_from_mapping(data: dict[str, Any]) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from a plain mapping."""
    if isinstance(data, dict):
        _refuse_moved_keys(data)
    return from_dict(PipelineConfig, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a preset file, apply ``--set`` overrides, validate (``ConfigError`` on problems).

    A field set explicitly with ``--set`` also wins over the preset's ``fallback_set``: its
    ``fallback_set`` entries for that field are dropped, so the value the user asked for holds
    whichever corpora end up in use.
    """
    for item in overrides or []:
        new = moved_key(_override_key(item))
        if new is not None:
            raise ConfigError("--set", f"{_override_key(item)} is now {new} (see docs/lm_pipeline.md, 'Config')")
    mapping = apply_overrides(load_mapping(path), overrides)
    user_keys = {_override_key(o) for o in overrides or []}
    if user_keys and isinstance(mapping.get("fallback_set"), list):
        mapping["fallback_set"] = [o for o in mapping["fallback_set"]
                                   if not (isinstance(o, str) and _override_key(o) in user_keys)]
    return config_from_mapping(mapping)


def _override_key(item: str) -> str:
    """``'pre.tokens'`` of ``'pre.tokens=3e7'``."""
    return item.split("=", 1)[0].strip()


def fallback_config(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with ``data`` replaced by ``data_fallback`` and ``fallback_set`` applied."""
    if cfg.data_fallback is None:
        raise ConfigError("data_fallback", "no fallback configured")
    d = to_dict(cfg)
    d["data"], d["data_fallback"], d["fallback_set"] = d["data_fallback"], None, []
    return config_from_mapping(apply_overrides(d, list(cfg.fallback_set)))


def config_to_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (inverse of :func:`config_from_mapping`)."""
    return to_dict(cfg)
