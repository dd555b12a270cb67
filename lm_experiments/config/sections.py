"""The sections of the LM pipeline config (one frozen dataclass each; each validates itself).

A preset file (``configs/lm/*.yaml``) maps 1:1 onto :class:`PipelineConfig`; the stage
sections carry the protocol's stage names (``pre``, ``post``, ``ft``, as in the theory
configs and :data:`early_exposure.frontier.STAGES`)::

    data:   DataConfig (lm_experiments.data): corpora of the three roles, tokenizer, seq_len
    model:  {preset}
    pre:    pretraining on D_pre with a fraction mix_fraction (the paper's lambda) of D_post
            mixed in (Sec. 4.1): {tokens, batch_size, mix_fraction: [...], optim, checkpoint_every}
    post:   post-training sweep on D_post (Secs. 4.1-4.4): {sweep: {axis: [values]}, extra,
            optim, early stopping, compute_matched, LoRA shape, checkpoint_every}
    ft:     fine-tuning on D_ft over an LR sweep for a fixed token budget:
            {lr: [...], tokens, batch_size, optim, checkpoint_every, save_checkpoints}
    eval:   {batch_size}
    seeds, device, precision, pipeline, data_fallback, fallback_set, micro_batch, threads

Every stage has the same optimizer section (:class:`OptimSection`: lr, min_lr or
min_lr_ratio, warmup_steps, weight_decay). A stage's sweep lists values of some fields:
the post-training axes that name an optimizer field (``lr``, ``weight_decay``) and the
fine-tuning ``lr`` list override that stage's ``optim`` value run by run.

The post-training axes are the fields of :class:`lm_experiments.config.post_axes.PostSetting`, and
nothing else (a new axis is one field there).

:func:`load_config` reads the file, applies ``--set a.b=value`` overrides and builds the
dataclasses with ``early_exposure.configs.from_dict`` (unknown keys and wrong types are
errors naming the field; the loader prefixes each section's path). Keys of the earlier
layout (``stage1``, ``stage2.lr``, ``stage3.lrs``, ...) are refused with a message naming
the new key. Checks that need the prepared data live in :func:`lm_experiments.protocol.plan.check_budgets`.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from early_exposure.configs import (
    check_int, check_list, check_range, join_path,
)
from early_exposure.errors import ConfigError
from lm_experiments.config.models import MODEL_PRESETS
from lm_experiments.config.post_axes import POST_AXES, PostSetting, axis_values


#: upper bounds of the budget fields: far above any run of this pipeline (the paper pretrains
#: on 8.7e9 tokens), so a value beyond them is a typo (an extra zero, 1e15 for 1e5)
MAX_TOKENS = 10**12
MAX_BATCH = 2**20
MAX_EPOCHS = 10_000


def check_budget(path: str, value: int, hi: int, unit: str) -> None:
    """An integer in [1, hi]; above ``hi`` the message says why the bound exists and what to do."""
    check_int(path, value, 1)
    if value > hi:
        raise ConfigError(path, f"{value:.3g} {unit} is beyond the sane maximum {hi:.0e} "
                          f"(the paper's largest budget is 8.7e9 tokens); lower it")


@dataclass(frozen=True)
class ModelSection:
    """Which architecture (a key of :data:`lm_experiments.config.models.MODEL_PRESETS`)."""

    preset: str = "tiny-1m"
    #: the decoder implementation: ``hf`` (Hugging Face's ``LlamaForCausalLM``, the reference) or
    #: ``fast`` (``lm_experiments.engine.fast_llama``: fused QKV and gate/up, SDPA, bf16 residual
    #: stream; same weights, same checkpoints). ``fast`` trains pretraining and fine-tuning;
    #: post-training (its dropout and LoRA arms) keeps the reference block.
    block: Literal["hf", "fast"] = "hf"

    def __post_init__(self) -> None:
        if self.preset not in MODEL_PRESETS:
            raise ConfigError("preset", f"unknown preset {self.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
        if self.block not in ("hf", "fast"):
            raise ConfigError("block", f"must be 'hf' or 'fast', got {self.block!r}")


@dataclass(frozen=True)
class OptimSection:
    """AdamW (0.9, 0.95) with linear warmup and cosine decay, the same words in every stage.

    Attributes:
        lr: peak learning rate (a stage's sweep may list several; they override it).
        min_lr: floor of the cosine decay (absolute).
        min_lr_ratio: floor as a fraction of each run's peak lr instead (for LR sweeps);
            when set, ``min_lr`` must be left at 0.
        warmup_steps: linear warmup, capped at 10% of the run's steps.
        weight_decay: decoupled weight decay.
    """

    lr: float = 1e-3
    min_lr: float = 0.0
    min_lr_ratio: float | None = None
    warmup_steps: int = 0
    weight_decay: float = 0.1

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0.0, None, lo_open=True)
        check_range("min_lr", self.min_lr, 0.0, None)
        if self.min_lr_ratio is not None:
            check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
            if self.min_lr:
                raise ConfigError("min_lr", "set either min_lr or min_lr_ratio, not both")
        check_int("warmup_steps", self.warmup_steps, 0)
        check_range("weight_decay", self.weight_decay, 0.0, None)

    def floor(self, lr: float) -> float:
        """The cosine floor of a run with peak ``lr``."""
        return self.min_lr_ratio * lr if self.min_lr_ratio is not None else self.min_lr


@dataclass(frozen=True)
class PreSection:
    """Pretraining on D_pre with ``mix_fraction`` of D_post mixed in (Sec. 4.1, at most one pass).

    Attributes:
        tokens: token budget of each pretraining run (rounded down to full batches).
        batch_size: sequences per step.
        mix_fraction: the lambdas to pretrain with (each seed pretrains once per lambda).
        optim: optimizer and schedule over the budget.
        checkpoint_every: steps between resumable checkpoints (0 = none).
    """

    tokens: int = 600_000
    batch_size: int = 16
    mix_fraction: tuple[float, ...] = (0.0, 1.0)
    optim: OptimSection = OptimSection(lr=2e-3, min_lr=2e-4, warmup_steps=50)
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        check_budget("tokens", self.tokens, MAX_TOKENS, "tokens")
        check_budget("batch_size", self.batch_size, MAX_BATCH, "sequences")
        check_list("mix_fraction", self.mix_fraction, 0.0, 1.0)
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError("optim.min_lr", f"must be in [0, {self.optim.lr}] (optim.lr), got {self.optim.min_lr}")
        check_int("checkpoint_every", self.checkpoint_every, 0)


# Paper Table 9: LoRA on the attention output projection, the MLP and the head; not Q/K/V.
LORA_TARGETS: tuple[str, ...] = ("o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
#: every module name LoRA may target (``post.lora_targets``)
LORA_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@dataclass(frozen=True)
class PostSection:
    """Post-training on D_post from every theta_pre (Secs. 4.1-4.4, App. A.5-A.6).

    The sweep is the grid of ``sweep`` (``{axis: [values]}``, axes of :class:`PostSetting`;
    an axis left out takes its :class:`PostSetting` default, which for the optimizer axes
    ``lr``/``weight_decay`` means ``optim``'s value) plus the ``extra`` settings (partial settings;
    unset axes take the grid's first values). Every setting runs from every theta_pre
    with early stopping on D_post validation loss (evaluated every ``eval_every_epochs``
    epochs, ``patience`` evaluations without improvement, best weights restored), for at
    most ``max_epochs`` epochs and ``max_tokens`` tokens.

    Attributes:
        sweep, extra: the settings (above).
        optim: schedule over the longest allowed run (``min_lr`` at most the lowest lr).
        max_epochs, max_tokens, eval_every_epochs, patience: early-stopping protocol.
        post_train_tokens: use only this many D_post training tokens (a fixed subset, the
            same for every seed; the paper's |D_post|); None = all of D_post.
        compute_matched: lambdas of the compute-matched study (Sec. 4.2): lambda of D_post
            in pretraining, the disjoint rest in ONE post-training epoch with the base setting
            (the grid's first values), no early stopping.
        lora_rank, lora_alpha: LoRA shape (paper: 64, 128).
        lora_targets: the modules LoRA adapts (paper Table 9: o_proj and the MLP and the head,
            not q/k/v); any of ``LORA_MODULES``.
        checkpoint_every: steps between resumable checkpoints (0 = none).
    """

    sweep: dict[str, Any] = field(default_factory=dict)
    extra: tuple[dict[str, Any], ...] = ()
    optim: OptimSection = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=20)
    max_epochs: int = 6
    max_tokens: int | None = None
    eval_every_epochs: float = 0.5
    patience: int = 2
    post_train_tokens: int | None = None
    compute_matched: tuple[float, ...] = ()
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_targets: tuple[str, ...] = LORA_TARGETS
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        grid = axis_values("sweep", dict(self.sweep), lists=True)
        meta = {f.name: f.metadata for f in dataclasses.fields(PostSetting)}
        for name, values in grid.items():
            m = meta[name]
            check_list(join_path("sweep", name), values, m["lo"], m["hi"], lo_open=m["lo_open"], hi_open=m["hi_open"])
        object.__setattr__(self, "sweep", grid)
        extra = tuple(axis_values(f"extra[{i}]", dict(s), lists=False) for i, s in enumerate(self.extra))
        object.__setattr__(self, "extra", extra)
        settings = self._checked_settings()
        lowest = min(self.optim.lr if s.lr is None else s.lr for s in settings)
        if self.optim.min_lr > lowest:
            raise ConfigError("optim.min_lr", f"must be in [0, {lowest}] (the lowest post-training lr), "
                              f"got {self.optim.min_lr}")
        check_budget("max_epochs", self.max_epochs, MAX_EPOCHS, "epochs")
        if self.max_tokens is not None:
            check_budget("max_tokens", self.max_tokens, MAX_TOKENS, "tokens")
        check_range("eval_every_epochs", self.eval_every_epochs, 0.0, float(self.max_epochs), lo_open=True)
        check_int("patience", self.patience, 1)
        if self.post_train_tokens is not None:
            check_budget("post_train_tokens", self.post_train_tokens, MAX_TOKENS, "tokens")
        if self.compute_matched:
            check_list("compute_matched", self.compute_matched, 0.0, 1.0)
        check_int("lora_rank", self.lora_rank, 1)
        check_int("lora_alpha", self.lora_alpha, 1)
        targets = tuple(self.lora_targets) if isinstance(self.lora_targets, (list, tuple)) else ()
        bad = [t for t in targets if t not in LORA_MODULES]
        if not targets or bad or len(set(targets)) != len(targets):
            raise ConfigError("lora_targets", f"must be a non-empty list of distinct module names from "
                              f"{list(LORA_MODULES)}, got {self.lora_targets!r}")
        object.__setattr__(self, "lora_targets", targets)
        check_int("checkpoint_every", self.checkpoint_every, 0)

    def _axis_grid(self) -> list[tuple[Any, ...]]:
        """The values of every axis in :data:`POST_AXES` order (unlisted axes: one value)."""
        defaults = {f.name: f.default for f in dataclasses.fields(PostSetting)}
        return [tuple(self.sweep.get(a, (defaults[a],))) for a in POST_AXES]

    def _checked_settings(self) -> list[PostSetting]:
        out: list[PostSetting] = []
        for values in itertools.product(*self._axis_grid()):
            try:
                out.append(PostSetting(**dict(zip(POST_AXES, values))))
            except ConfigError as exc:
                raise ConfigError(join_path("sweep", exc.field), exc.message) from None
        base = out[0]
        for i, partial in enumerate(self.extra):
            try:
                out.append(dataclasses.replace(base, **partial))
            except ConfigError as exc:
                raise ConfigError(join_path(f"extra[{i}]", exc.field), exc.message) from None
        unique: list[PostSetting] = []
        for s in out:
            if s not in unique:
                unique.append(s)
        return unique

    @property
    def base(self) -> PostSetting:
        """The base setting: the first value of every axis."""
        return PostSetting(**dict(zip(POST_AXES, (v[0] for v in self._axis_grid()))))

    def settings(self) -> list[PostSetting]:
        """All distinct sweep settings (grid in axis order, then extras)."""
        return self._checked_settings()


@dataclass(frozen=True)
class FtSection:
    """Fine-tuning every theta_post on D_ft at each learning rate for a fixed budget
    (the paper's fixed 200M tokens over an LR sweep, scaled).

    Attributes:
        lr: peak learning rates of the sweep (override ``optim.lr``).
        tokens: fixed token budget per run (rounded down to full batches).
        batch_size: sequences per step.
        optim: schedule (``min_lr_ratio``: the floor scales with each lr).
        checkpoint_every: steps between resumable checkpoints (0 = none).
        save_checkpoints: also save theta_ft (off by default: results keep losses only).
    """

    lr: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    tokens: int = 100_000
    batch_size: int = 16
    optim: OptimSection = OptimSection(min_lr_ratio=0.1, warmup_steps=10)
    checkpoint_every: int = 200
    save_checkpoints: bool = False

    def __post_init__(self) -> None:
        check_list("lr", self.lr, 0.0, None, lo_open=True)
        check_budget("tokens", self.tokens, MAX_TOKENS, "tokens")
        check_budget("batch_size", self.batch_size, MAX_BATCH, "sequences")
        check_int("checkpoint_every", self.checkpoint_every, 0)


@dataclass(frozen=True)
class MatchedSection:
    """Retention at matched immediate loss (claim (b) tested without the L_im confound).

    With ``enabled``, every base (non-compute-matched, first-setting) post-training run saves
    its model at each evaluation along stage 2 (``upstream/post-<id>/trajectory/``); one
    extra unit per such run then fine-tunes up to ``max_checkpoints`` of those checkpoints
    (evenly spaced, up to and including the early-stopping one) at ``ft_lr`` with the
    ``ft`` section's budget and schedule, and ``matched.csv`` lists (L_im of the checkpoint,
    L_ret, L_ft, L_pre after fine-tuning) per checkpoint: L_ret as a function of L_im per arm.

    Attributes:
        enabled: run the study.
        ft_lr: fine-tuning lr of the study (None = the gentlest of ``ft.lr``).
        max_checkpoints: checkpoints fine-tuned per post-training run.
    """

    enabled: bool = False
    ft_lr: float | None = None
    max_checkpoints: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("enabled", f"expected true/false, got {self.enabled!r}")
        if self.ft_lr is not None:
            check_range("ft_lr", self.ft_lr, 0.0, None, lo_open=True)
        check_int("max_checkpoints", self.max_checkpoints, 2)


@dataclass(frozen=True)
class EvalSection:
    """Evaluation of the fixed held-out sets (mean token cross-entropy, nats).

    Attributes:
        batch_size: sequences per evaluation batch.
        report_split: the split every *recorded* loss is measured on. ``test`` (default;
            the validation split when the data have no test split): what the results and
            the paper checks report. ``val``: calibration runs only, so that a knob search
            reads validation losses and nothing of the test split (the n-gram baselines of
            the regime table follow the same split); such a run set gets its own run ids
            and the paper checks do not judge it.
    """

    batch_size: int = 64
    report_split: str = "test"

    def __post_init__(self) -> None:
        check_budget("batch_size", self.batch_size, MAX_BATCH, "sequences")
        if self.report_split not in ("test", "val"):
            raise ConfigError("report_split", f"must be 'test' or 'val' (calibration runs), got {self.report_split!r}")


@dataclass(frozen=True)
class TrainSection:
    """Speed options of the training engine (``lm_experiments.engine.train.train``), one section for all stages.

    Results do not depend on them beyond float tolerance, so they are not part of any run
    key (``lm_experiments.protocol.plan``): a run may be resumed or rerun with other values. The
    defaults keep the plain path: on CPU the results are bitwise those without this section.

    Attributes:
        compile: ``torch.compile`` the training forward (the model with ``plain``
            cross-entropy, the decoder body otherwise); evaluation stays eager.
        cross_entropy: ``plain`` (Hugging Face's loss over the full logits), ``chunked``
            (head + cross-entropy over chunks of ``ce_chunk_tokens`` tokens in plain torch,
            forward and backward; the full fp32 logits never exist), ``fused`` (Liger's or
            cut-cross-entropy's fused kernel when installed, on CUDA; else ``chunked``),
            ``auto`` (``plain`` off CUDA, ``fused``/``chunked`` on CUDA). A LoRA-wrapped head
            always uses ``plain``.
        ce_chunk_tokens: tokens per chunk of ``chunked`` (8192 x vocab 49152 = 1.5 GiB of fp32
            logits at a time).
        procs_per_run: processes per run: > 1 runs every unit of the sweep data-parallel with
            ``torchrun --nproc_per_node procs_per_run`` (:mod:`lm_experiments.runner.launch`; GPUs on
            CUDA, gloo processes on CPU), as one multi-GPU task under ``--executor ray``.
            1 = the run in the executor's own process. Under an outer ``torchrun`` it must be 1.
    """

    compile: bool = False
    cross_entropy: Literal["auto", "plain", "chunked", "fused"] = "auto"
    ce_chunk_tokens: int = 8192
    procs_per_run: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.compile, bool):
            raise ConfigError("compile", f"expected true/false, got {self.compile!r}")
        if self.cross_entropy not in ("auto", "plain", "chunked", "fused"):
            raise ConfigError("cross_entropy", f"must be one of 'auto', 'plain', 'chunked', 'fused', "
                              f"got {self.cross_entropy!r}")
        check_int("ce_chunk_tokens", self.ce_chunk_tokens, 1)
        check_int("procs_per_run", self.procs_per_run, 1, 1024)
