"""Figure 3a (Section 4.1: L_im and L_ret against lambda) and Figure 3b (Section 4.2:
compute-matched), for every frontier table that holds such rows (LM presets and the
theory compute-matched study). The uncertainty convention of :mod:`figures.style`: one thin
line per seed, the mean over seeds thick and its 95% Student-t band; one series per
fine-tuning learning rate for L_ret.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from early_exposure.runs import ResultsRoot
from figures.common import Logger, Skip, assert_comparable, describe, frontier_tables, rel, save
from figures.style import LAMBDA, arm_colour, band_note, fig_name, loss_label, seed_band, series_colours, styled, unit_note

BASE = ("unmixed", "mixed")


def per_seed(rows: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray]:
    """(lambdas, values: one row per seed, one column per lambda; NaN where a seed lacks one)."""
    t = rows.pivot_table(index="seed", columns="mix_fraction", values=value, aggfunc="mean").sort_index(axis=1)
    return t.columns.to_numpy(np.float64), t.to_numpy(np.float64)


def _lambda_figure(df: pd.DataFrame, compute_matched: bool, title: str, out: Path, name: str,
                   caption: str = "", sources: tuple[str, ...] = ()) -> list[Path]:
    rows = df.loc[df["method"].isin(BASE) & (df["compute_matched"] == compute_matched) & ~df["diverged"]]
    if rows["mix_fraction"].nunique() < 2:
        raise Skip(f"{name}: fewer than two mixing fractions")
    side = str(rows["side"].iloc[0])
    n = rows["seed"].nunique()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    # L_im: the best post-trained checkpoint per (lambda, seed), as the checks select it
    best = rows.sort_values("L_im").drop_duplicates(["mix_fraction", "seed"])
    lams, ys = per_seed(best, "L_im")
    seed_band(a1, lams, ys, arm_colour("mixed"), f"mean over {n} seeds")
    a1.set_xlabel(LAMBDA)
    a1.set_ylabel(loss_label("L_im", side))
    a1.set_title("right after post-training")
    a1.legend()
    sel = rows.merge(best[["mix_fraction", "seed", "upstream_id"]])
    lrs = sorted(sel["ft_lr"].unique())
    for colour, lr in zip(series_colours(len(lrs)), lrs):
        lams, ys = per_seed(sel.loc[sel["ft_lr"] == lr], "L_ret")
        seed_band(a2, lams, ys, colour, f"fine-tuning lr {lr:g}")
    a2.set_xlabel(LAMBDA)
    a2.set_ylabel(loss_label("L_ret", side))
    a2.set_title("after fine-tuning")
    a2.legend()
    fig.suptitle(title)
    describe(out, name, f"{caption} {band_note(n)} {unit_note(side)}".strip(), "lambda", sources)
    return save(fig, out, name)


@styled
def lambda_figures(results: Path, out: Path, log: Logger = print) -> list[Path]:
    paths: list[Path] = []
    for label, pipe, sub, root in frontier_tables(results, "compute_matched", log, "fig3"):
        assert_comparable(sub, root)
        src = rel(results, (root / "frontier.csv") if root is not None else
                  ResultsRoot(results).theory("compute_matched") / "frontier.csv")
        for key, cm, title, what in (
                ("fig3a", False, "Figure 3a: more exposure (Section 4.1)",
                 "L_im (left) and L_ret (right, one series per fine-tuning learning rate) against the mixing "
                 "fraction lambda; L_im is each seed's best post-trained checkpoint, L_ret is measured after "
                 "fine-tuning that checkpoint."),
                ("fig3b", True, "Figure 3b: compute-matched (Section 4.2)",
                 "As Figure 3a with every arm given the same pretraining compute (compute-matched).")):
            try:
                paths += _lambda_figure(sub, cm, f"{title} ({label}: {pipe})", out,
                                        fig_name(label, "lambda", f"{key}-{pipe}"),
                                        f"{title}. {what} Source {label}, pipeline {pipe}.", (src,))
            except Skip as s:
                log(f"skip {s}")
    return paths
