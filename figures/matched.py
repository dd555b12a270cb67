"""Retention at matched immediate loss: L_ret against L_im along the stage-2 trajectory.

One panel per pipeline of every ``matched.csv`` (``results/theory/matched/`` and
``results/lm/<preset>/``): one curve per arm (its lambda in the legend), one thin line per
seed and, with several seeds, the mean over seeds on a common L_im grid with a band of
+- one standard deviation. The mixed arm retaining better at the same L_im shows as its
curve lying below the unmixed one where both exist (``paper_checks.checks_matched``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from early_exposure.runs import ResultsRoot
from figures.common import COLOURS, Logger, safe_name, save


def _tables(results: Path) -> list[tuple[str, pd.DataFrame]]:
    paths = [("theory", ResultsRoot(results).theory("matched") / "matched.csv")]
    paths += [(f"lm-{p.parent.name}", p) for p in sorted((results / "lm").glob("*/matched.csv"))]
    out = []
    for tag, p in paths:
        if p.is_file():
            try:
                out.append((tag, pd.read_csv(p)))
            except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
    return out


def _panel(ax: plt.Axes, df: pd.DataFrame) -> None:
    df = df.loc[~df["diverged"].astype(bool)]
    lr = min(set(df.loc[df["method"] == "unmixed", "ft_lr"]) & set(df.loc[df["method"] == "mixed", "ft_lr"]),
             default=df["ft_lr"].min())
    df = df.loc[df["ft_lr"] == lr]
    for method in ("unmixed", "mixed"):
        arm = df.loc[df["method"] == method]
        if arm.empty:
            continue
        lam = float(arm["mix_fraction"].max())
        arm = arm.loc[arm["mix_fraction"] == lam]
        colour = COLOURS.get(method, "gray")
        curves = []
        for _, g in arm.groupby("seed"):
            g = g.groupby("L_im", as_index=False)["L_ret"].mean().sort_values("L_im")
            ax.plot(g["L_im"], g["L_ret"], color=colour, lw=0.8, alpha=0.45, marker=".", ms=3)
            curves.append(g)
        label = f"{method} (lambda={lam:g}, {len(curves)} seed{'s' if len(curves) > 1 else ''})"
        if len(curves) > 1:
            lo = max(c["L_im"].min() for c in curves)
            hi = min(c["L_im"].max() for c in curves)
            if hi > lo:
                grid = np.linspace(lo, hi, 40)
                ys = np.array([np.interp(grid, c["L_im"], c["L_ret"]) for c in curves])
                m, sd = ys.mean(0), ys.std(0, ddof=1)
                ax.plot(grid, m, color=colour, lw=2, label=label)
                ax.fill_between(grid, m - sd, m + sd, color=colour, alpha=0.18, lw=0)
                continue
        ax.plot([], [], color=colour, lw=2, label=label)
    ax.set_xlabel("immediate post-training loss L_im")
    ax.set_ylabel("retained post-training loss L_ret")
    ax.set_title(f"{df['pipeline'].iloc[0] if len(df) else ''} (fine-tuning lr {lr:g})", fontsize=9)
    ax.legend(fontsize=7)


def matched_figures(results: Path, out: Path, log: Logger = print) -> list[Path]:
    """One figure per matched table (a panel per pipeline); none when there is no table."""
    paths: list[Path] = []
    tables = _tables(Path(results))
    if not tables:
        log("skip matched: no matched.csv under theory/matched or lm/<preset>")
    for tag, df in tables:
        pipes = sorted(df["pipeline"].unique())
        fig, axes = plt.subplots(1, len(pipes), figsize=(4.6 * len(pipes), 3.8), squeeze=False)
        for ax, pipe in zip(axes[0], pipes):
            _panel(ax, df.loc[df["pipeline"] == pipe])
        fig.suptitle(f"Retention at matched immediate loss ({tag}): L_ret against L_im along post-training\n"
                     "thin: one seed's stage-2 checkpoints, each fine-tuned alike; thick + band: mean +- sd over seeds")
        paths += save(fig, Path(out), f"matched_{safe_name(tag)}")
    return paths
