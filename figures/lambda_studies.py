"""Figure 3a (Section 4.1: L_im and L_ret against lambda) and Figure 3b (Section 4.2:
compute-matched), for every frontier table that holds such rows (LM presets and the
theory compute-matched study). Mean over seeds with min-max bars, one line per
fine-tuning learning rate for L_ret.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from figures.common import Logger, Skip, assert_comparable, frontier_tables, safe_name, save

BASE = ("unmixed", "mixed")


def _lambda_figure(df: pd.DataFrame, compute_matched: bool, title: str, out: Path, name: str) -> list[Path]:
    rows = df.loc[df["method"].isin(BASE) & (df["compute_matched"] == compute_matched) & ~df["diverged"]]
    if rows["mix_fraction"].nunique() < 2:
        raise Skip(f"{name}: fewer than two mixing fractions")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    # L_im: the best post-trained checkpoint per (lambda, seed), as the checks select it
    best = rows.sort_values("L_im").drop_duplicates(["mix_fraction", "seed"])
    im = best.groupby("mix_fraction")["L_im"].agg(["mean", "min", "max"])
    a1.errorbar(im.index, im["mean"], yerr=[im["mean"] - im["min"], im["max"] - im["mean"]], marker="o", capsize=3)
    a1.set_xlabel("mixing fraction $\\lambda$")
    a1.set_ylabel("$L_{im}$ (immediately after post-training)")
    sel = rows.merge(best[["mix_fraction", "seed", "upstream_id"]])
    for lr, g in sel.groupby("ft_lr"):
        r = g.groupby("mix_fraction")["L_ret"].agg(["mean", "min", "max"])
        a2.errorbar(r.index, r["mean"], yerr=[r["mean"] - r["min"], r["max"] - r["mean"]], marker="o",
                    capsize=3, label=f"ft lr {lr:g}")
    a2.set_xlabel("mixing fraction $\\lambda$")
    a2.set_ylabel("$L_{ret}$ (after fine-tuning)")
    a2.legend(fontsize=7)
    n = rows["seed"].nunique()
    fig.suptitle(f"{title} ({n} seed{'s' if n != 1 else ''}; bars: min-max)", fontsize=10)
    return save(fig, out, name)


def lambda_figures(results: Path, out: Path, log: Logger = print) -> list[Path]:
    paths: list[Path] = []
    for label, pipe, sub, root in frontier_tables(results, "compute_matched", log, "fig3"):
        assert_comparable(sub, root)
        for key, cm, title in (("fig3a", False, "Figure 3a: more exposure (Section 4.1)"),
                               ("fig3b", True, "Figure 3b: compute-matched (Section 4.2)")):
            try:
                paths += _lambda_figure(sub, cm, f"{title}\n{label}: {pipe}", out,
                                        f"{key}_{label}_{safe_name(pipe)}")
            except Skip as s:
                log(f"skip {s}")
    return paths
