"""Sections 4.1 and 4.2 analogues in the linear theory: how to spend a finite D_post.

Command::

    python -m linear_theory compute-matched --config configs/theory/sweep_compute_matched.yaml \
        --out results/theory/compute_matched

- **Section 4.2 (compute-matched, Figure 3b)**: N post samples in total, one pass. A fraction
  lambda is mixed into pretraining, the rest post-trains (one epoch of minibatch SGD). The paper
  finds L_im worsening with lambda and the best L_ret at an interior lambda.
- **Section 4.1 (more exposure, no fixed budget)**: lambda N samples are mixed into pretraining
  *in addition* to post-training on all N samples for ``epochs`` passes (to convergence); for
  several N. The paper finds L_im flat and L_ret falling with lambda.

Both use :mod:`linear_theory.finite` (seeded SGD, exact evaluation) over several seeds.

Outputs in ``--out``: ``frontier.csv`` (shared schema, side=theory; compute_matched=true for
4.2, false for 4.1; mix_fraction = lambda; post_hparams holds N, batch, epochs, pre_pool),
``compute_matched.csv`` (tidy per-seed rows: study, N, lambda, seed, L_im, L_ret, L_ft, L_pre,
diverged), ``compute_matched.json`` (configs, per-lambda means, provenance) and
``compute_matched.png`` (L_im, L_ret vs lambda, mean +- sd over seeds).
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure.configs import check_range, to_dict
from early_exposure.errors import ConfigError
from early_exposure.frontier import make_row, method_name, write_frontier
from early_exposure.io import atomic_write_bytes, atomic_write_figure, atomic_write_json, stable_hash
from early_exposure.provenance import provenance
from linear_theory.config import SimConfig, load_study_config, study_base_config
from linear_theory.finite import FiniteSpec, run_finite

__all__ = ["ComputeMatchedConfig", "Sec41Config", "study_rows", "run_compute_matched_cli"]


def _lams(path: str, values: tuple[float, ...]) -> None:
    if not values:
        raise ConfigError(path, "must list at least one lambda in [0, 1]")
    if len(set(values)) != len(values):
        raise ConfigError(path, f"values must be distinct, got {list(values)}")
    for i, v in enumerate(values):
        check_range(f"{path}[{i}]", v, 0.0, 1.0)


@dataclass(frozen=True)
class Sec41Config:
    """Section 4.1 analogue: lambda N extra samples in pretraining, post-training on all N."""

    enabled: bool = True
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_samples: tuple[int, ...] = (200, 1000)
    epochs: int = 10

    def __post_init__(self) -> None:
        _lams("sec41.lambdas", self.lambdas)
        if not self.n_samples:
            raise ConfigError("sec41.n_samples", "must list at least one N >= 1")
        for i, v in enumerate(self.n_samples):
            check_range(f"sec41.n_samples[{i}]", v, 1, 10_000_000)
        check_range("sec41.epochs", self.epochs, 1, 100_000)


@dataclass(frozen=True)
class ComputeMatchedConfig:
    """``configs/theory/sweep_compute_matched.yaml``."""

    base: str | None = None  # SimConfig file; None -> linear_theory.default_config()
    set: tuple[str, ...] = ()
    n_samples: int = 1000  # N = |D_post| of the compute-matched study
    lambdas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pre_pool: float = 1000.0  # D_pre samples per pretraining run: mixing share lambda N / (lambda N + pre_pool)
    batch: int = 16
    pipeline: str = "pre>post>ft"
    sec41: Sec41Config = field(default_factory=Sec41Config)

    def __post_init__(self) -> None:
        check_range("n_samples", self.n_samples, 1, 10_000_000)
        _lams("lambdas", self.lambdas)
        if not self.seeds:
            raise ConfigError("seeds", "must list at least one seed")
        check_range("pre_pool", self.pre_pool, 0.0, None, lo_open=True)
        check_range("batch", self.batch, 1, 1_000_000)


def load_cm_config(path: str | None, overrides: list[str] | None = None) -> ComputeMatchedConfig:
    return load_study_config(ComputeMatchedConfig, path, overrides)


def base_config(cm: ComputeMatchedConfig) -> SimConfig:
    return study_base_config(cm.base, cm.set)


def study_rows(cm: ComputeMatchedConfig, *, progress: bool = False) -> pd.DataFrame:
    """Tidy per-(study, N, lambda, seed) rows of both studies."""
    from tqdm import tqdm

    cfg = base_config(cm)
    jobs: list[tuple[str, int, int, list[FiniteSpec], list[float]]] = []
    for seed in cm.seeds:  # 4.2: lambda N in pretraining, (1 - lambda) N once in post-training
        specs = [FiniteSpec(cm.n_samples, lam, seed, cm.pre_pool, cm.batch, 1) for lam in cm.lambdas]
        jobs.append(("4.2", cm.n_samples, 1, specs, list(cm.lambdas)))
    if cm.sec41.enabled:  # 4.1: lambda N extra in pretraining, all N post-trained for `epochs`
        for N in cm.sec41.n_samples:
            for seed in cm.seeds:
                # the pretraining mix draws lambda N of a set of 2N; post-training uses the other N
                specs = [FiniteSpec(N + int(round(lam * N)), lam * N / (N + int(round(lam * N))) if lam else 0.0,
                                    seed, cm.pre_pool, cm.batch, cm.sec41.epochs) for lam in cm.sec41.lambdas]
                jobs.append(("4.1", N, cm.sec41.epochs, specs, list(cm.sec41.lambdas)))
    rows: list[dict[str, Any]] = []
    for study, N, epochs, specs, lams in tqdm(jobs, desc="compute-matched", unit="seed", disable=not progress):
        for spec, lam, res in zip(specs, lams, run_finite(cfg, specs)):
            rows.append({"study": study, "N": N, "lambda": lam, "seed": spec.seed, "epochs": epochs,
                         "n_mix": res["n_mix"], "post_steps": res["post_steps"],
                         **{k: res[k] for k in ("L_im", "L_ret", "L_ft", "L_pre", "diverged")}})
    return pd.DataFrame(rows)


def frontier_from(df: pd.DataFrame, cm: ComputeMatchedConfig, cfg: SimConfig) -> list[dict[str, Any]]:
    """Shared-schema rows (one per run; ft settings are those of the base config)."""
    out = []
    d = to_dict(cfg)
    for r in df.to_dict("records"):
        lam = float(r["lambda"])
        hp = {"N": int(r["N"]), "batch": cm.batch, "epochs": int(r["epochs"]), "pre_pool": cm.pre_pool,
              "lr": cfg.stages.post.lr, "reg": cfg.stages.post.reg, "replay": cfg.stages.post.replay,
              "dropout": cfg.stages.post.dropout}
        upstream = {"task": d["task"], "model": d["model"], "pre": d["stages"]["pre"], "post": hp,
                    "study": r["study"], "lambda": lam, "seed": int(r["seed"])}
        out.append(make_row(
            side="theory", pipeline=cm.pipeline,
            method=method_name(lam > 0, cfg.stages.post.replay > 0, cfg.stages.post.dropout > 0),
            mix_fraction=lam, compute_matched=r["study"] == "4.2", upstream_id=stable_hash(upstream),
            post_hparams=hp, ft_lr=cfg.stages.ft.lr, ft_budget=float(cfg.stages.ft.steps), seed=int(r["seed"]),
            L_im=float(r["L_im"]), L_ret=float(r["L_ret"]), L_ft=float(r["L_ft"]), L_pre=float(r["L_pre"]),
            diverged=bool(r["diverged"]), run_id=stable_hash({**upstream, "ft": d["stages"]["ft"]})))
    return out


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(s, N) for s, N in df[["study", "N"]].drop_duplicates().itertuples(index=False)]
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, q in zip(axs, ("L_im", "L_ret")):
        for s, N in groups:
            g = df[(df["study"] == s) & (df["N"] == N)].groupby("lambda")[q]
            m, sd = g.mean(), g.std().fillna(0.0)
            ax.errorbar(m.index, m.to_numpy(), yerr=sd.to_numpy(), marker="o", capsize=3,
                        label=f"Sec {s} N={N}" + (" (compute-matched)" if s == "4.2" else ""))
        ax.set_xlabel("lambda (fraction of D_post mixed into pretraining)")
        ax.set_ylabel(q)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_figure(path, fig, dpi=110)
    plt.close(fig)


def run_compute_matched_cli(args: argparse.Namespace) -> int:
    """``python -m linear_theory compute-matched --config FILE --out DIR``."""
    cm = load_cm_config(args.config, args.set)
    cfg = base_config(cm)
    df = study_rows(cm, progress=True)
    out = Path(args.out)
    write_frontier(frontier_from(df, cm, cfg), out / "frontier.csv")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_bytes(out / "compute_matched.csv", buf.getvalue().encode("utf-8"))
    summary = {}
    for (s, N), g in df[~df["diverged"]].groupby(["study", "N"]):
        mean = g.groupby("lambda")[["L_im", "L_ret"]].mean()
        summary[f"{s}/N={N}"] = {"lambda": mean.index.tolist(), "L_im_mean": mean["L_im"].tolist(),
                                 "L_ret_mean": mean["L_ret"].tolist(),
                                 "best_lambda_L_ret": float(mean["L_ret"].idxmin()),
                                 "best_lambda_L_im": float(mean["L_im"].idxmin())}
    _plot(df, out / "compute_matched.png")
    atomic_write_json(out / "compute_matched.json", {"config": to_dict(cm), "base_config": to_dict(cfg),
                                                     "summary": summary, "provenance": provenance()})
    for key, s in summary.items():
        print(f"Sec {key}: best lambda for L_ret {s['best_lambda_L_ret']:g}, for L_im {s['best_lambda_L_im']:g}")
    print(f"wrote {len(df)} runs to {out}")
    return 0
