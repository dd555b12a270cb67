"""Sections 4.1 and 4.2 analogues in the linear theory: how to spend a finite D_post.

Command::

    python -m linear_theory compute-matched --config configs/theory/sweep_compute_matched.yaml \
        --out results/theory/compute_matched

The mixing fraction ``mix_fraction`` is the paper's lambda of Sec. 4 (alpha in Appendix C).

- **Section 4.2 (compute-matched, Figure 3b)**: N post samples in total, one pass. A fraction
  mix_fraction is mixed into pretraining, the rest post-trains (one epoch of minibatch SGD). The
  paper finds L_im worsening with lambda and the best L_ret at an interior lambda.
- **Section 4.1 (more exposure, no fixed budget)**: mix_fraction N samples are mixed into
  pretraining *in addition* to post-training on all N samples for ``epochs`` passes (to
  convergence); for several N. The paper finds L_im flat and L_ret falling with lambda.

Both use :mod:`linear_theory.studies.finite` (seeded SGD, exact evaluation) over several seeds.

Outputs in ``--out``: ``frontier.csv`` (shared schema, side=theory; compute_matched=true for
4.2, false for 4.1; post_hparams holds N, batch, epochs, pre_pool),
``compute_matched.csv`` (tidy per-seed rows: study, N, mix_fraction, seed, epochs, n_mix,
post_steps, L_im, L_ret, L_ft, L_pre, diverged), ``compute_matched.json`` (configs, per-fraction
means, provenance) and ``compute_matched.png`` (L_im, L_ret vs mix_fraction, mean +- sd over seeds).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from early_exposure.configs import check_int, check_list, check_range, to_dict
from early_exposure.frontier import LOSS_COLUMNS, make_row, method_name, write_frontier
from early_exposure.io import atomic_write_bytes, atomic_write_figure, atomic_write_json, stable_hash
from early_exposure.provenance import provenance
from linear_theory.config import SimConfig, load_study_config, study_base_config
from linear_theory.studies.finite import FiniteSpec, run_finite

__all__ = ["ComputeMatchedConfig", "Sec41Config", "study_rows", "frontier_from", "summarize",
           "run_compute_matched", "load_cm_config", "base_config"]

_MAX_N = 10_000_000


@dataclass(frozen=True)
class Sec41Config:
    """Section 4.1 analogue: mix_fraction N extra samples in pretraining, post-training on all N."""

    enabled: bool = True
    mix_fraction: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_samples: tuple[int, ...] = (200, 1000)
    epochs: int = 10

    def __post_init__(self) -> None:
        check_list("mix_fraction", self.mix_fraction, 0.0, 1.0)
        check_list("n_samples", self.n_samples, 1, _MAX_N, distinct=False)
        check_int("epochs", self.epochs, 1, 100_000)


@dataclass(frozen=True)
class ComputeMatchedConfig:
    """``configs/theory/sweep_compute_matched.yaml``."""

    #: renamed keys (old -> new), refused by :func:`load_cm_config` naming the new key
    RENAMED: ClassVar[dict[str, str]] = {"lambdas": "mix_fraction", "sec41.lambdas": "sec41.mix_fraction"}

    base: str | None = None  # SimConfig file; None -> linear_theory.default_config()
    set: tuple[str, ...] = ()
    n_samples: int = 1000  # N = |D_post| of the compute-matched study
    mix_fraction: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pre_pool: float = 1000.0  # D_pre samples per pretraining run: mixing share f N / (f N + pre_pool)
    batch: int = 16
    pipeline: str = "pre>post>ft"
    sec41: Sec41Config = field(default_factory=Sec41Config)

    def __post_init__(self) -> None:
        check_int("n_samples", self.n_samples, 1, _MAX_N)
        check_list("mix_fraction", self.mix_fraction, 0.0, 1.0)
        check_list("seeds", self.seeds, 0, None, distinct=False)
        check_range("pre_pool", self.pre_pool, 0.0, None, lo_open=True)
        check_int("batch", self.batch, 1, 1_000_000)


def load_cm_config(path: str | Path | None, overrides: list[str] | None = None) -> ComputeMatchedConfig:
    """The study config file (``None``: the defaults) with ``--set`` overrides, validated."""
    return load_study_config(ComputeMatchedConfig, path, overrides)


def base_config(cm: ComputeMatchedConfig) -> SimConfig:
    """The SimConfig the study starts from (``base`` + ``set``)."""
    return study_base_config(cm.base, cm.set)


def study_rows(cm: ComputeMatchedConfig, *, progress: bool = False) -> pd.DataFrame:
    """Tidy per-(study, N, mix_fraction, seed) rows of both studies."""
    from tqdm import tqdm

    cfg = base_config(cm)
    jobs: list[tuple[str, int, int, list[FiniteSpec], list[float]]] = []
    for seed in cm.seeds:  # 4.2: f N in pretraining, (1 - f) N once in post-training
        specs = [FiniteSpec(cm.n_samples, f, seed, cm.pre_pool, cm.batch, 1) for f in cm.mix_fraction]
        jobs.append(("4.2", cm.n_samples, 1, specs, list(cm.mix_fraction)))
    if cm.sec41.enabled:  # 4.1: f N extra in pretraining, all N post-trained for `epochs`
        for N in cm.sec41.n_samples:
            for seed in cm.seeds:
                # the pretraining mix draws f N of a set of N + f N; post-training uses the other N
                specs = [FiniteSpec(N + int(round(f * N)), f * N / (N + int(round(f * N))) if f else 0.0,
                                    seed, cm.pre_pool, cm.batch, cm.sec41.epochs) for f in cm.sec41.mix_fraction]
                jobs.append(("4.1", N, cm.sec41.epochs, specs, list(cm.sec41.mix_fraction)))
    rows: list[dict[str, Any]] = []
    for study, N, epochs, specs, fracs in tqdm(jobs, desc="compute-matched", unit="seed", disable=not progress):
        for spec, f, res in zip(specs, fracs, run_finite(cfg, specs)):
            rows.append({"study": study, "N": N, "mix_fraction": f, "seed": spec.seed, "epochs": epochs,
                         "n_mix": res["n_mix"], "post_steps": res["post_steps"],
                         "L_post_stage1": res["L_post_stage1"],
                         **{k: res[k] for k in (*LOSS_COLUMNS, "diverged")}})
    return pd.DataFrame(rows)


def frontier_from(df: pd.DataFrame, cm: ComputeMatchedConfig, cfg: SimConfig) -> list[dict[str, Any]]:
    """Shared-schema rows (one per run; ft settings are those of the base config)."""
    out = []
    d = to_dict(cfg)
    for r in df.to_dict("records"):
        frac = float(r["mix_fraction"])
        hp = {"N": int(r["N"]), "batch": cm.batch, "epochs": int(r["epochs"]), "pre_pool": cm.pre_pool,
              "lr": cfg.stages.post.lr, "reg": cfg.stages.post.reg, "replay": cfg.stages.post.replay,
              "dropout": cfg.stages.post.dropout}
        upstream = {"task": d["task"], "model": d["model"], "pre": d["stages"]["pre"], "post": hp,
                    "study": r["study"], "mix_fraction": frac, "seed": int(r["seed"])}
        out.append(make_row(
            side="theory", pipeline=cm.pipeline,
            method=method_name(frac > 0, replay=cfg.stages.post.replay > 0, dropout=cfg.stages.post.dropout > 0),
            mix_fraction=frac, compute_matched=r["study"] == "4.2", upstream_id=stable_hash(upstream),
            # lambda = 0 rows also carry theta_pre's D_post loss (paper_checks: can the testbed pose (c)?)
            post_hparams={**hp, "L_post_stage1": float(r["L_post_stage1"])} if frac == 0 else hp,
            ft_lr=cfg.stages.ft.lr, ft_budget=float(cfg.stages.ft.steps), seed=int(r["seed"]),
            **{k: float(r[k]) for k in LOSS_COLUMNS},
            diverged=bool(r["diverged"]), run_id=stable_hash({**upstream, "ft": d["stages"]["ft"]})))
    return out


def summarize(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per ``study/N=..``: mean L_im, L_ret per mix_fraction over the seeds (diverged runs left
    out) and the best fraction for each."""
    summary = {}
    for (s, N), g in df[~df["diverged"]].groupby(["study", "N"]):
        mean = g.groupby("mix_fraction")[["L_im", "L_ret"]].mean()
        summary[f"{s}/N={N}"] = {"mix_fraction": mean.index.tolist(), "L_im_mean": mean["L_im"].tolist(),
                                 "L_ret_mean": mean["L_ret"].tolist(),
                                 "best_mix_fraction_L_ret": float(mean["L_ret"].idxmin()),
                                 "best_mix_fraction_L_im": float(mean["L_im"].idxmin())}
    return summary


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(s, N) for s, N in df[["study", "N"]].drop_duplicates().itertuples(index=False)]
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, q in zip(axs, ("L_im", "L_ret")):
        for s, N in groups:
            g = df[(df["study"] == s) & (df["N"] == N)].groupby("mix_fraction")[q]
            m, sd = g.mean(), g.std().fillna(0.0)
            ax.errorbar(m.index, m.to_numpy(), yerr=sd.to_numpy(), marker="o", capsize=3,
                        label=f"Sec {s} N={N}" + (" (compute-matched)" if s == "4.2" else ""))
        ax.set_xlabel("mix_fraction (fraction of D_post mixed into pretraining)")
        ax.set_ylabel(q)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_figure(path, fig, dpi=110)
    plt.close(fig)


def run_compute_matched(cm: ComputeMatchedConfig, out: str | Path, *,
                        progress: bool = True) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Run both studies; write ``frontier.csv``, ``compute_matched.csv``/``.json``/``.png`` into ``out``.

    Returns the tidy rows and :func:`summarize` of them.
    """
    cfg = base_config(cm)  # validates the base before anything is written
    df = study_rows(cm, progress=progress)
    out = Path(out)
    write_frontier(frontier_from(df, cm, cfg), out / "frontier.csv")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_bytes(out / "compute_matched.csv", buf.getvalue().encode("utf-8"))
    summary = summarize(df)
    _plot(df, out / "compute_matched.png")
    atomic_write_json(out / "compute_matched.json", {"config": to_dict(cm), "base_config": to_dict(cfg),
                                                     "summary": summary, "provenance": provenance()})
    return df, summary
