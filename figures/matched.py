"""Retention at matched immediate loss: L_ret against L_im along the stage-2 trajectory.

One panel per pipeline of every ``matched.csv`` (``results/theory/matched/`` and
``results/lm/<preset>/``): one curve per arm (its lambda in the legend), one thin line per
seed and, with several seeds, the mean over seeds on a common L_im grid with its 95%
Student-t band (the convention of :mod:`figures.style`). The mixed arm retaining better at the same L_im shows as its
curve lying below the unmixed one where both exist (``paper_checks.checks_matched``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from early_exposure.runs import ResultsRoot
from figures.common import Logger, describe, rel, save
from figures.style import LW_MAIN, LW_SEED, ALPHA_SEED, arm_colour, band_note, fig_name, loss_label, seed_band, styled


def _tables(results: Path) -> list[tuple[str, pd.DataFrame, Path]]:
    paths = [("theory", ResultsRoot(results).theory("matched") / "matched.csv")]
    paths += [(f"lm-{p.parent.name}", p) for p in sorted((results / "lm").glob("*/matched.csv"))]
    out = []
    for tag, p in paths:
        if p.is_file():
            try:
                out.append((tag, pd.read_csv(p), p))
            except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
    return out


def _panel(ax: plt.Axes, df: pd.DataFrame) -> set[int]:
    """One pipeline's panel; returns the seed counts drawn."""
    df = df.loc[~df["diverged"].astype(bool)]
    side = str(df["side"].iloc[0]) if "side" in df and len(df) else "lm"
    lr = min(set(df.loc[df["method"] == "unmixed", "ft_lr"]) & set(df.loc[df["method"] == "mixed", "ft_lr"]),
             default=df["ft_lr"].min())
    df = df.loc[df["ft_lr"] == lr]
    ns: set[int] = set()
    for method in ("unmixed", "mixed"):
        arm = df.loc[df["method"] == method]
        if arm.empty:
            continue
        lam = float(arm["mix_fraction"].max())
        arm = arm.loc[arm["mix_fraction"] == lam]
        colour = arm_colour(method)
        curves = [g.groupby("L_im", as_index=False)["L_ret"].mean().sort_values("L_im") for _, g in arm.groupby("seed")]
        ns.add(len(curves))
        label = (f"{method} ($\\lambda$={lam:g}), mean of {len(curves)} seeds" if len(curves) > 1 else
                 f"{method} ($\\lambda$={lam:g}), 1 seed")
        lo = max(c["L_im"].min() for c in curves)
        hi = min(c["L_im"].max() for c in curves)
        if len(curves) > 1 and hi > lo:
            for c in curves:  # each seed's own checkpoints (its thin line covers its whole range)
                ax.plot(c["L_im"], c["L_ret"], color=colour, lw=LW_SEED, alpha=ALPHA_SEED, marker=".", ms=3)
            grid = np.linspace(lo, hi, 40)
            ys = np.array([np.interp(grid, c["L_im"], c["L_ret"]) for c in curves])
            seed_band(ax, grid, ys, colour, label, marker=None, thin=False)  # thin lines drawn above
            continue
        if len(curves) == 1:  # one seed: its line is the arm's line
            ax.plot(curves[0]["L_im"], curves[0]["L_ret"], color=colour, lw=LW_MAIN, marker=".", ms=5, label=label)
            continue
        for c in curves:  # seeds whose L_im ranges do not overlap: no common grid for a mean
            ax.plot(c["L_im"], c["L_ret"], color=colour, lw=LW_SEED, alpha=ALPHA_SEED, marker=".", ms=3)
        ax.plot([], [], color=colour, lw=LW_MAIN, label=label + " (ranges do not overlap: no mean)")
    ax.set_xlabel(loss_label("L_im", side))
    ax.set_ylabel(loss_label("L_ret", side))
    ax.set_title(f"{df['pipeline'].iloc[0] if len(df) else ''} (fine-tuning lr {lr:g})")
    ax.legend()
    return ns


@styled
def matched_figures(results: Path, out: Path, log: Logger = print) -> list[Path]:
    """One figure per matched table (a panel per pipeline); none when there is no table."""
    paths: list[Path] = []
    tables = _tables(Path(results))
    if not tables:
        log("skip matched: no matched.csv under theory/matched or lm/<preset>")
    for tag, df, src in tables:
        pipes = sorted(df["pipeline"].unique())
        fig, axes = plt.subplots(1, len(pipes), figsize=(6 * len(pipes), 4.8), squeeze=False)
        ns: set[int] = set()
        for ax, pipe in zip(axes[0], pipes):
            ns |= _panel(ax, df.loc[df["pipeline"] == pipe])
        fig.suptitle(f"Retention at matched immediate loss ({tag})")
        cap = (f"L_ret against L_im along post-training ({tag}): every stage-2 checkpoint of a seed fine-tuned "
               "alike; an arm whose curve lies lower retains better at the same immediate loss. "
               f"{band_note(sorted(ns))} The mean and band cover the L_im range all seeds share.")
        name = fig_name(tag, "matched", "lret-vs-lim")
        describe(Path(out), name, cap, "matched", (rel(results, src),))
        paths += save(fig, Path(out), name)
    return paths
