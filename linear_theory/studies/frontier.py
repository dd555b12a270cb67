"""Theory frontier table (``side=theory``) in the shared schema of ``early_exposure.frontier``.

Command::

    python -m linear_theory frontier --config configs/theory/sweep_frontier.yaml --out results/theory/frontier

For each method (``unmixed``, ``mixed``, ``+replay``, ``+dropout``; mixed at every mixing
fraction in ``mix_fraction``), the stage-2 settings (post steps x lr x reg) are swept, and for
each such upstream checkpoint the stage-3 settings (ft lr x steps). One row per
(upstream checkpoint x fine-tuning setting) with the paper's four losses
(:data:`early_exposure.frontier.LOSS_COLUMNS`: L_im = L(theta_post; D_post),
L_ret = L(theta_ft; D_post), L_ft, L_pre), computed exactly by the batched sweep engine
(:func:`linear_theory.sweep.engine.sweep_frame`).

Column mapping: ``mix_fraction`` = ``stages.pre.mix_fraction`` (the paper's alpha of Appendix C),
``ft_budget`` = ft steps, ``seed`` = task seed,
``upstream_id`` = stable hash of (task, model, pre, post) config, ``run_id`` = stable hash of
the whole config, ``post_hparams`` = JSON {steps, lr, reg, replay, dropout}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from early_exposure.configs import check_list, check_range, to_dict
from early_exposure.errors import ConfigError
from early_exposure.frontier import LOSS_COLUMNS, make_row, method_name, write_frontier
from early_exposure.io import atomic_write_json, stable_hash
from early_exposure.provenance import provenance
from linear_theory.config import SimConfig, load_study_config, study_base_config
from linear_theory.sweep.engine import sweep_frame
from linear_theory.sweep.grid import Axis, apply_values

__all__ = ["FrontierConfig", "PostGrid", "FtGrid", "frontier_rows", "run_frontier", "load_frontier_config",
           "base_config", "METHODS"]

METHODS = ("unmixed", "mixed", "mixed+replay", "mixed+dropout", "unmixed+replay", "unmixed+dropout")


@dataclass(frozen=True)
class PostGrid:
    """Stage-2 sweep (the upstream checkpoints)."""

    steps: tuple[int, ...] = (50, 100, 200)
    lr: tuple[float, ...] = (0.01,)
    reg: tuple[float, ...] = (0.0, 0.1)

    def __post_init__(self) -> None:
        check_list("steps", self.steps, 0)
        check_list("lr", self.lr, 0.0, lo_open=True)
        check_list("reg", self.reg, 0.0)


@dataclass(frozen=True)
class FtGrid:
    """Stage-3 sweep for every upstream checkpoint."""

    lr: tuple[float, ...] = (0.005, 0.01, 0.02)
    steps: tuple[int, ...] = (100, 200)

    def __post_init__(self) -> None:
        check_list("lr", self.lr, 0.0, lo_open=True)
        check_list("steps", self.steps, 0)


@dataclass(frozen=True)
class FrontierConfig:
    """``configs/theory/sweep_frontier.yaml``: the base simulation and the sweeps around it."""

    #: renamed keys (old -> new), refused by :func:`load_frontier_config` naming the new key
    RENAMED: ClassVar[dict[str, str]] = {"mixed_alpha": "mix_fraction"}

    base: str | None = None  # SimConfig file; None -> linear_theory.default_config()
    set: tuple[str, ...] = ()  # overrides of the base config (a.b=value)
    methods: tuple[str, ...] = METHODS
    mix_fraction: tuple[float, ...] = (0.5,)  # stages.pre.mix_fraction of the mixed methods
    replay: float = 0.01  # the paper's 1% of D_pre (Section 4.4)
    dropout: float = 0.1
    pipeline: str = "pre>post>ft"
    post: PostGrid = field(default_factory=PostGrid)
    ft: FtGrid = field(default_factory=FtGrid)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods", f"must list at least one of {', '.join(METHODS)}")
        for i, m in enumerate(self.methods):
            if m not in METHODS:
                raise ConfigError(f"methods[{i}]", f"must be one of {', '.join(METHODS)}, got {m!r}")
        check_list("mix_fraction", self.mix_fraction, 0.0, 1.0, lo_open=True)
        check_range("replay", self.replay, 0.0, 1.0, lo_open=True)
        check_range("dropout", self.dropout, 0.0, 1.0, lo_open=True, hi_open=True)


def load_frontier_config(path: str | Path | None, overrides: list[str] | None = None) -> FrontierConfig:
    """The study config file (``None``: the defaults) with ``--set`` overrides, validated."""
    return load_study_config(FrontierConfig, path, overrides)


def base_config(fc: FrontierConfig) -> SimConfig:
    """The SimConfig the study starts from (``base`` + ``set``)."""
    return study_base_config(fc.base, fc.set)


def _variants(fc: FrontierConfig) -> list[tuple[str, float, float, float]]:
    """(method, mix_fraction, replay, dropout) per pretraining/post-training recipe."""
    out = []
    for m in fc.methods:
        replay = fc.replay if "+replay" in m else 0.0
        dropout = fc.dropout if "+dropout" in m else 0.0
        fractions = fc.mix_fraction if m.startswith("mixed") else (0.0,)
        out.extend((m, a, replay, dropout) for a in fractions)
    return out


def frontier_rows(fc: FrontierConfig, *, progress: bool = False) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Frontier rows (shared schema) and the engine's full tidy rows behind them."""
    base = base_config(fc)
    axes = [Axis("stages.post.steps", tuple(fc.post.steps), "list"),
            Axis("stages.post.lr", tuple(fc.post.lr), "list"),
            Axis("stages.post.reg", tuple(fc.post.reg), "list"),
            Axis("stages.ft.lr", tuple(fc.ft.lr), "list"),
            Axis("stages.ft.steps", tuple(fc.ft.steps), "list")]
    rows, frames = [], []
    for method, frac, replay, dropout in _variants(fc):
        cfg = apply_values(base, {"stages.pre.mix_fraction": frac, "stages.post.replay": replay,
                                  "stages.post.dropout": dropout})
        df = sweep_frame(cfg, axes, progress=progress, desc=f"{method} mix_fraction={frac:g}")
        df.insert(0, "frontier_method", method)
        frames.append(df)
        for r in df.itertuples(index=False):
            vals = dict(zip(df.columns, r))
            point = apply_values(cfg, {a.path: vals[a.path] for a in axes})
            d = to_dict(point)
            upstream = {"task": d["task"], "model": d["model"], "pre": d["stages"]["pre"], "post": d["stages"]["post"]}
            post = d["stages"]["post"]
            rows.append(make_row(
                side="theory", pipeline=fc.pipeline, method=method_name(frac > 0, replay=replay > 0, dropout=dropout > 0),
                mix_fraction=float(frac), compute_matched=False, upstream_id=stable_hash(upstream),
                post_hparams={k: post[k] for k in ("steps", "lr", "reg", "replay", "dropout")},
                ft_lr=float(vals["stages.ft.lr"]), ft_budget=float(vals["stages.ft.steps"]),
                seed=int(point.task.seed), **{k: float(vals[k]) for k in LOSS_COLUMNS},
                diverged=bool(vals["diverged"]), run_id=stable_hash(d)))
    return rows, pd.concat(frames, ignore_index=True)


def run_frontier(fc: FrontierConfig, out: str | Path, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run the study and write ``out/frontier.csv`` (shared schema) and ``out/frontier.json``."""
    base = base_config(fc)  # validates the base before anything is written
    rows, _detail = frontier_rows(fc, progress=progress)
    out = Path(out)
    write_frontier(rows, out / "frontier.csv")
    atomic_write_json(out / "frontier.json", {"frontier_config": to_dict(fc), "base_config": to_dict(base),
                                              "rows": len(rows), "seed": base.task.seed,
                                              "provenance": provenance()})
    return rows
