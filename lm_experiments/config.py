"""Typed configuration of the LM three-stage pipeline (one frozen dataclass per section).

A preset file (``configs/lm/*.yaml``) maps 1:1 onto :class:`PipelineConfig`::

    data:      DataConfig (lm_experiments.data): corpora of the three roles, tokenizer, seq_len
    model:     {preset}
    stage1:    pretraining on D_pre with a fraction lambda of D_post (Sec. 4.1)
    stage2:    post-training sweep on D_post (grid of lr x dropout x batch x replay x lora,
               plus extra settings), early stopping, compute-matched fractions (Sec. 4.2-4.4)
    stage3:    fine-tuning on D_ft at each learning rate for a fixed token budget
    eval:      {batch_size}
    seeds, device, precision, pipeline, data_fallback, micro_batch, threads

:func:`load_config` reads the file, applies ``--set a.b=value`` overrides and builds the
dataclasses with ``early_exposure.configs.from_dict`` (unknown keys and wrong types are
errors naming the field). Each dataclass checks its ranges on construction and raises
``ConfigError("stage1.mix_fractions[2]", "must be in [0, 1] ...")``. Checks that need the
prepared data (is D_post big enough for the budget?) live in
:func:`lm_experiments.pipeline.check_budgets` and run before any training.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from early_exposure.configs import apply_overrides, check_range, from_dict, load_mapping, to_dict
from early_exposure.errors import ConfigError
from lm_experiments.data import DataConfig


def _check_list(path: str, values: tuple, lo: float | None, hi: float | None, *, hi_open: bool = False,
                lo_open: bool = False) -> None:
    if len(values) == 0:
        raise ConfigError(path, "must list at least one value")
    if len(set(values)) != len(values):
        raise ConfigError(path, f"values must be distinct, got {list(values)}")
    for i, v in enumerate(values):
        check_range(f"{path}[{i}]", v, lo, hi, lo_open=lo_open, hi_open=hi_open)


def _check_int(path: str, value: int, lo: int) -> None:
    if value < lo:
        raise ConfigError(path, f"must be an integer >= {lo}, got {value!r}")


@dataclass(frozen=True)
class ModelSection:
    """Which architecture (a key of ``lm_experiments.model.MODEL_PRESETS``)."""

    preset: str = "tiny-1m"


@dataclass(frozen=True)
class Stage1Config:
    """Pretraining on D_pre with lambda of D_post mixed in (Sec. 4.1, at most one pass).

    Attributes:
        tokens: token budget of each pretraining run (rounded down to full batches).
        lr, min_lr, warmup_steps, weight_decay: AdamW (0.9, 0.95) with linear warmup and
            cosine decay to ``min_lr`` over the budget.
        batch_size: sequences per step.
        mix_fractions: the lambdas to pretrain with (each seed pretrains once per lambda).
        checkpoint_every: steps between resumable checkpoints (0 = none).
    """

    tokens: int = 600_000
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 50
    batch_size: int = 16
    weight_decay: float = 0.1
    mix_fractions: tuple[float, ...] = (0.0, 1.0)
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        _check_int("stage1.tokens", self.tokens, 1)
        check_range("stage1.lr", self.lr, 0.0, None, lo_open=True)
        check_range("stage1.min_lr", self.min_lr, 0.0, self.lr)
        _check_int("stage1.warmup_steps", self.warmup_steps, 0)
        _check_int("stage1.batch_size", self.batch_size, 1)
        check_range("stage1.weight_decay", self.weight_decay, 0.0, None)
        _check_list("stage1.mix_fractions", self.mix_fractions, 0.0, 1.0)
        _check_int("stage1.checkpoint_every", self.checkpoint_every, 0)


@dataclass(frozen=True)
class Stage2Setting:
    """One extra point of the post-training sweep; unset fields take the grid's first value."""

    lr: float | None = None
    dropout: float | None = None
    batch_size: int | None = None
    replay: float | None = None
    lora: bool | None = None


@dataclass(frozen=True)
class Stage2Config:
    """Post-training on D_post from every theta_pre (Secs. 4.1-4.4, App. A.5-A.6).

    The sweep is the grid ``lr x dropout x batch_size x replay x lora`` plus the ``extra``
    settings (e.g. one dropout and one replay variant without the full cross product).
    Every setting runs from every theta_pre with early stopping on D_post validation loss
    (evaluated every ``eval_every_epochs`` epochs, ``patience`` evaluations without
    improvement, best weights restored), for at most ``max_epochs`` epochs and
    ``max_tokens`` tokens.

    Attributes:
        lr, dropout, batch_size, replay, lora: the grid. ``dropout`` is real dropout in the
            network (LoRA runs: the LoRA dropout, paper Table 9); ``replay`` is the fraction
            of D_pre blocks mixed into post-training (paper: 1%).
        extra: settings added to the grid.
        min_lr, warmup_steps, weight_decay: AdamW schedule (warmup + cosine to ``min_lr``
            over the longest allowed run).
        max_epochs, max_tokens, eval_every_epochs, patience: early-stopping protocol.
        post_train_tokens: use only this many D_post training tokens (a fixed subset, the
            same for every seed; the paper's |D_post|); None = all of D_post.
        compute_matched: lambdas of the compute-matched study (Sec. 4.2): lambda of D_post
            in stage 1, the disjoint rest in ONE stage-2 epoch with the base setting (the
            grid's first values), no early stopping.
        lora_rank, lora_alpha: LoRA shape (paper: 64, 128).
        checkpoint_every: steps between resumable checkpoints (0 = none).
    """

    lr: tuple[float, ...] = (1e-3,)
    dropout: tuple[float, ...] = (0.0,)
    batch_size: tuple[int, ...] = (16,)
    replay: tuple[float, ...] = (0.0,)
    lora: tuple[bool, ...] = (False,)
    extra: tuple[Stage2Setting, ...] = ()
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    max_epochs: int = 6
    max_tokens: int | None = None
    eval_every_epochs: float = 0.5
    patience: int = 2
    post_train_tokens: int | None = None
    compute_matched: tuple[float, ...] = ()
    lora_rank: int = 64
    lora_alpha: int = 128
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        _check_list("stage2.lr", self.lr, 0.0, None, lo_open=True)
        _check_list("stage2.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _check_list("stage2.batch_size", self.batch_size, 1, None)
        _check_list("stage2.replay", self.replay, 0.0, 1.0, hi_open=True)
        if len(self.lora) == 0 or len(set(self.lora)) != len(self.lora):
            raise ConfigError("stage2.lora", f"must list distinct true/false values, got {list(self.lora)}")
        for i, s in enumerate(self.extra):
            p = f"stage2.extra[{i}]"
            if s.lr is not None:
                check_range(f"{p}.lr", s.lr, 0.0, None, lo_open=True)
            if s.dropout is not None:
                check_range(f"{p}.dropout", s.dropout, 0.0, 1.0, hi_open=True)
            if s.batch_size is not None:
                _check_int(f"{p}.batch_size", s.batch_size, 1)
            if s.replay is not None:
                check_range(f"{p}.replay", s.replay, 0.0, 1.0, hi_open=True)
        lowest = min([*self.lr, *(s.lr for s in self.extra if s.lr is not None)])
        check_range("stage2.min_lr", self.min_lr, 0.0, lowest)
        _check_int("stage2.warmup_steps", self.warmup_steps, 0)
        check_range("stage2.weight_decay", self.weight_decay, 0.0, None)
        _check_int("stage2.max_epochs", self.max_epochs, 1)
        if self.max_tokens is not None:
            _check_int("stage2.max_tokens", self.max_tokens, 1)
        check_range("stage2.eval_every_epochs", self.eval_every_epochs, 0.0, float(self.max_epochs), lo_open=True)
        _check_int("stage2.patience", self.patience, 1)
        if self.post_train_tokens is not None:
            _check_int("stage2.post_train_tokens", self.post_train_tokens, 1)
        if self.compute_matched:
            _check_list("stage2.compute_matched", self.compute_matched, 0.0, 1.0)
        _check_int("stage2.lora_rank", self.lora_rank, 1)
        _check_int("stage2.lora_alpha", self.lora_alpha, 1)
        _check_int("stage2.checkpoint_every", self.checkpoint_every, 0)

    @property
    def base(self) -> dict[str, Any]:
        """The base setting: the first value of every grid list."""
        return {"lr": self.lr[0], "dropout": self.dropout[0], "batch_size": self.batch_size[0],
                "replay": self.replay[0], "lora": self.lora[0]}

    def settings(self) -> list[dict[str, Any]]:
        """All distinct sweep settings (grid then extras), each a dict with the five keys."""
        out: list[dict[str, Any]] = []
        for lr, p, b, r, lo in itertools.product(self.lr, self.dropout, self.batch_size, self.replay, self.lora):
            out.append({"lr": lr, "dropout": p, "batch_size": b, "replay": r, "lora": lo})
        for s in self.extra:
            d = dict(self.base)
            d.update({k: v for k, v in dataclasses.asdict(s).items() if v is not None})
            out.append(d)
        unique: list[dict[str, Any]] = []
        for d in out:
            if d not in unique:
                unique.append(d)
        return unique


@dataclass(frozen=True)
class Stage3Config:
    """Fine-tuning every theta_post on D_ft at each learning rate for a fixed budget
    (the paper's fixed 200M tokens over an LR sweep, scaled).

    Attributes:
        lrs: peak learning rates of the sweep.
        tokens: fixed token budget per run (rounded down to full batches).
        batch_size, warmup_steps, weight_decay: AdamW schedule.
        min_lr_ratio: cosine decays to ``min_lr_ratio * lr``.
        checkpoint_every: steps between resumable checkpoints (0 = none).
        save_checkpoints: also save theta_ft (off by default: results keep losses only).
    """

    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    tokens: int = 100_000
    batch_size: int = 16
    warmup_steps: int = 10
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    checkpoint_every: int = 200
    save_checkpoints: bool = False

    def __post_init__(self) -> None:
        _check_list("stage3.lrs", self.lrs, 0.0, None, lo_open=True)
        _check_int("stage3.tokens", self.tokens, 1)
        _check_int("stage3.batch_size", self.batch_size, 1)
        _check_int("stage3.warmup_steps", self.warmup_steps, 0)
        check_range("stage3.weight_decay", self.weight_decay, 0.0, None)
        check_range("stage3.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_int("stage3.checkpoint_every", self.checkpoint_every, 0)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of the fixed held-out sets (mean token cross-entropy, nats)."""

    batch_size: int = 64

    def __post_init__(self) -> None:
        _check_int("eval.batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class PipelineConfig:
    """One preset of the three-stage LM pipeline (configs/lm/*.yaml).

    Attributes:
        data: corpora, tokenizer and packing (``lm_experiments.data.DataConfig``).
        data_fallback: used instead of ``data`` when a corpus of ``data`` cannot be loaded
            (e.g. the Hugging Face hub is unreachable): the GPU presets fall back to the
            embedded offline corpora. The fallback in use is recorded in every result.
        model, stage1, stage2, stage3, eval: the sections above.
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
    """

    data: DataConfig
    model: ModelSection = ModelSection()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    stage3: Stage3Config = Stage3Config()
    eval: EvalConfig = EvalConfig()
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    pipeline: str | None = None
    data_fallback: DataConfig | None = None
    micro_batch: int = 0
    threads: int = 0
    fallback_set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_int("micro_batch", self.micro_batch, 0)
        _check_int("threads", self.threads, 0)
        if len(self.seeds) == 0 or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"must list at least one distinct integer seed, got {list(self.seeds)}")
        for i, s in enumerate(self.seeds):
            _check_int(f"seeds[{i}]", s, 0)
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
    def stage1_fractions(self) -> tuple[float, ...]:
        """Every lambda that needs a pretraining run (mix fractions and compute-matched)."""
        out = list(self.stage1.mix_fractions)
        out += [f for f in self.stage2.compute_matched if f not in out]
        return tuple(out)


_YAML12_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_NUMERIC_SECTIONS = ("stage1", "stage2", "stage3", "eval")


def _yaml12_floats(node: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; read it as the float YAML 1.2 means."""
    if isinstance(node, dict):
        return {k: _yaml12_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_yaml12_floats(v) for v in node]
    if isinstance(node, str) and _YAML12_FLOAT.match(node.strip()):
        return float(node)
    return node


def config_from_mapping(data: dict[str, Any]) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from a plain mapping.

    In the numeric sections (stages, eval) exponent-only numbers such as ``1e-3``, which
    PyYAML leaves as strings, are read as floats.
    """
    if isinstance(data, dict):
        data = {k: (_yaml12_floats(v) if k in _NUMERIC_SECTIONS else v) for k, v in data.items()}
    return from_dict(PipelineConfig, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a preset file, apply ``--set`` overrides, validate (``ConfigError`` on problems).

    A field set explicitly with ``--set`` also wins over the preset's ``fallback_set``: its
    ``fallback_set`` entries for that field are dropped, so the value the user asked for holds
    whichever corpora end up in use.
    """
    mapping = apply_overrides(load_mapping(path), overrides)
    user_keys = {_override_key(o) for o in overrides or []}
    if user_keys and isinstance(mapping.get("fallback_set"), list):
        mapping["fallback_set"] = [o for o in mapping["fallback_set"]
                                   if not (isinstance(o, str) and _override_key(o) in user_keys)]
    return config_from_mapping(mapping)


def _override_key(item: str) -> str:
    """``'stage1.tokens'`` of ``'stage1.tokens=3e7'``."""
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
