"""Theory figures.

- Spectrum trajectories (Theorem C.9's staircase of sequential learning): the mean
  strength diag(U^T theta V) of each feature block (invariant [0, n-2k), inconsistent
  [n-2k, n-k), specialized [n-k, n)) through pre-, post- and fine-tuning, mixed vs unmixed
  (from ``theory/trajectories/<name>/trajectory.csv`` + ``result.json``).
- The mix_fraction (the paper's alpha) x beta phase diagram of Delta = L_ret - L_im with the region where the
  paper's assumptions hold outlined (from ``theory/sweep/sweep.parquet``).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from figures.common import Logger, NotComparable, Skip, describe, plain, rel, save
from figures.style import ALPHA_SEED, LW_MAIN, LW_SEED, arm_colour, fig_name, loss_label, styled

STAGES = ("pre", "post", "ft")


def _block_slices(n: int, k: int) -> dict[str, slice]:
    return {"invariant": slice(0, n - 2 * k), "inconsistent": slice(n - 2 * k, n - k), "specialized": slice(n - k, n)}


def _load_trajectory(d: Path) -> tuple[pd.DataFrame, int, int]:
    csv, res = d / "trajectory.csv", d / "result.json"
    if not csv.is_file():
        raise Skip(f"{csv} not found")
    t = pd.read_csv(csv)
    cols = [c for c in t.columns if c.startswith("s_")]
    n = len(cols)
    k = None
    if res.is_file():
        cfg = json.loads(res.read_text(encoding="utf-8")).get("config", {})
        k = cfg.get("task", {}).get("k")
        n_cfg = cfg.get("task", {}).get("n")
        if n_cfg is not None and int(n_cfg) != n:
            raise NotComparable(f"{d}: trajectory has {n} modes, config says n={n_cfg}")
    if k is None:
        raise Skip(f"{res}: no task.k, cannot split the spectrum into feature blocks")
    if "global_step" not in t.columns:  # steps restart at each stage: make a global axis
        order = {s: i for i, s in enumerate(STAGES)}
        t = t.sort_values(["stage", "step"], key=lambda c: c.map(order) if c.name == "stage" else c, kind="stable")
        offset, g = 0, []
        for s in STAGES:
            steps = t.loc[t["stage"] == s, "step"].to_numpy()
            g.append(steps + offset)
            offset += (steps.max() + 1) if len(steps) else 0
        t = t.assign(global_step=np.concatenate(g))
    return t, n, int(k)


@styled
def spectra_figure(results: Path, out: Path, log: Logger = print) -> list[Path]:
    root = results / "theory" / "trajectories"
    runs = {}
    for name in ("unmixed", "mixed"):
        try:
            runs[name] = _load_trajectory(root / name)
        except Skip as s:
            log(f"skip spectra ({name}): {s}")
    if not runs:
        return []
    shapes = {(n, k) for _, n, k in runs.values()}
    if len(shapes) != 1:
        raise NotComparable(f"mixed and unmixed trajectories have different (n, k): {sorted(shapes)}")
    n, k = shapes.pop()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharey=True, layout="constrained")
    for ax, (block, sl) in zip(axes, _block_slices(n, k).items()):
        for name, (t, _, _) in runs.items():
            s = t[[f"s_{i}" for i in range(n)]].to_numpy()[:, sl]
            colour = arm_colour(name)
            ax.plot(t["global_step"], s, lw=LW_SEED, alpha=ALPHA_SEED, color=colour)
            ax.plot(t["global_step"], s.mean(axis=1), lw=LW_MAIN, color=colour, label=f"{name}: block mean")
        t0 = next(iter(runs.values()))[0]
        for stage in STAGES[1:]:
            gs = t0.loc[t0["stage"] == stage, "global_step"]
            if len(gs):
                ax.axvline(gs.min(), color="gray", lw=0.8, ls=":")
        ax.set_title(f"{block} block ({sl.stop - sl.start} modes)")
        ax.set_xlabel("training step (pre | post | fine-tuning)")
        ax.legend()
    axes[0].set_ylabel("feature strength diag($U^T\\theta V$)")
    fig.suptitle("Theory: spectrum trajectories, the staircase of sequential learning")
    cap = ("Theory: the strength diag(U^T theta V) of each feature mode through pretraining, post-training and "
           "fine-tuning (dotted lines: start of post-training and of fine-tuning), one panel per feature block. "
           "Thin lines: single modes; thick: the block mean; black unmixed, purple mixed pretraining. "
           "One run per arm (deterministic).")
    srcs = [rel(results, root / nm / f) for nm in runs for f in ("trajectory.csv", "result.json")]
    describe(out, fig_name("theory", "spectra", "staircase"), cap, "spectra", srcs)
    return save(fig, out, fig_name("theory", "spectra", "staircase"))


#: the assumption flags of a theory sweep, in order of preference: the region where the
#: pretraining assumptions hold (``assumptions_hold`` is False everywhere as printed: C.3/C.4
#: and C.6 exclude each other, ``linear_theory.sweep.flags``)
_FLAGS = ("C5_C6_hold", "assumptions_hold")


def _flag_column(df: pd.DataFrame) -> str | None:
    for c in _FLAGS:
        if c in df.columns and df[c].dropna().isin([True, False, 0, 1]).all():
            return c
    for c in df.columns:
        lc = c.lower()
        if ("assum" in lc or "feasib" in lc or lc.endswith("hold") or lc.endswith("holds")) and \
                df[c].dropna().isin([True, False, 0, 1]).all():
            return c
    return None


@styled
def phase_figure(results: Path, out: Path, log: Logger = print) -> list[Path]:
    f = results / "theory" / "sweep" / "sweep.parquet"
    if not f.is_file():
        log(f"skip phase diagram: {f} not found")
        return []
    df = pd.read_parquet(f)
    # the sweep names grid axes by their config path; accept the short names too
    names = {"alpha": ("mix_fraction", "stages.pre.mix_fraction"), "beta": ("beta", "task.beta"), "Delta": ("Delta",)}
    found = {k: next((c for c in cands if c in df.columns), None) for k, cands in names.items()}
    need = [k for k, c in found.items() if c is None]
    if need:
        log(f"skip phase diagram: {f} lacks columns {need}")
        return []
    df = df.rename(columns={c: k for k, c in found.items()})
    if "diverged" in df.columns:
        df = df.loc[~df["diverged"].astype(bool)]
    flag = _flag_column(df)
    cols = ["Delta"] + ([flag] if flag else [])
    g = df.groupby(["alpha", "beta"])[cols].mean().reset_index()  # other grid axes (if any) averaged
    alphas, betas = np.sort(g["alpha"].unique()), np.sort(g["beta"].unique())
    grid = g.pivot(index="beta", columns="alpha", values="Delta").reindex(index=betas, columns=alphas)
    fig, ax = plt.subplots(figsize=(6, 4.6), layout="constrained")
    m = ax.pcolormesh(alphas, betas, grid.to_numpy(), shading="nearest", cmap="viridis")
    fig.colorbar(m, ax=ax, label=loss_label("Delta", "theory"))
    if flag:
        fl = g.pivot(index="beta", columns="alpha", values=flag).reindex(index=betas, columns=alphas).to_numpy()
        what = plain(flag)
        if np.nanmin(fl) < 0.5 < np.nanmax(fl):
            ax.contour(alphas, betas, fl, levels=[0.5], colors="white", linewidths=2)
            note = f"white line: boundary of the region where {what}"
        else:
            where = "everywhere" if np.nanmin(fl) >= 0.5 else "nowhere"
            note = f"{what[:1].upper() + what[1:]} {where} on this grid"
    else:
        note = "the sweep records no assumption flags"
    ax.set_xlabel("mixing fraction $\\alpha$ (= $\\lambda$)")
    ax.set_ylabel("$\\beta$")
    ax.set_title("Theory: phase diagram of $\\Delta = L_{ret} - L_{im}$\n" + note, fontsize=10)
    cap = ("Theory: forgetting Delta = L_ret - L_im (expected squared error) over the mixing fraction alpha "
           f"(the paper's alpha, lambda elsewhere) and beta, mean over any other sweep axis. {note}.")
    describe(out, fig_name("theory", "phase", "delta"), cap, "phase", (rel(results, f),))
    return save(fig, out, fig_name("theory", "phase", "delta"))
