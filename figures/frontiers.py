"""Frontier figures: Figure 2 (both views, mixed vs unmixed), Figures 4-6 (replay,
dropout, with and without mixing), Figure 7 (LoRA vs full fine-tuning), and the
theory-vs-LM frontiers side by side. One figure per (source, pipeline).

Per arm: its points (faint), each seed's own Pareto front (thin; the checks judge per-seed
fronts) and the front of all seeds' points pooled (thick, labelled so); axes carry the loss
unit (:mod:`figures.style`). Each arm is selected exactly as the checks select it (:func:`early_exposure.frontier.select_arm`),
so a figure shows the frontiers a verdict was computed from.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from matplotlib.lines import Line2D

from early_exposure import interventions
from early_exposure.frontier import VIEWS, select_arm
from early_exposure.pareto import pareto_front
from early_exposure.runs import ResultsRoot, RunTree
from figures.common import Logger, Skip, assert_comparable, describe, frontier_tables, load_frontier, lm_presets, rel, save
from figures.style import ALPHA_SEED, LW_MAIN, LW_SEED, arm_colour, fig_name, loss_label, styled, unit_note

#: the caption sentence of every frontier figure
FRONT_NOTE = ("Faint dots: every fine-tuned run (one per upstream checkpoint, fine-tuning learning rate and "
              "seed); thin lines: each seed's own Pareto front; thick line with markers: the Pareto front of "
              "all seeds' points pooled (labelled 'pooled'). Lower-left is better on both axes.")


def draw_frontier(ax: plt.Axes, df: pd.DataFrame, method: str, view: str, dashed: bool = False) -> bool:
    """Scatter one method's points, draw each seed's own Pareto front (thin; the checks judge
    per-seed fronts) and the front of all seeds' points pooled (thick); the legend names the
    arm's lambda, its seed count and that the thick front is pooled. False when the method
    has no rows."""
    rows, lam = select_arm(df, method)
    rows = rows.loc[~rows["diverged"]]
    if rows.empty:
        return False
    x, y = VIEWS[view]
    pts = rows[[x, y]].to_numpy(np.float64)
    c = arm_colour(method)
    marker = "s" if "lora" in method else "o"
    ls = "--" if dashed else "-"
    ax.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.25, color=c, marker=marker, lw=0)
    seeds = sorted(rows["seed"].unique())
    if len(seeds) > 1:
        for s in seeds:
            fs = pareto_front(rows.loc[rows["seed"] == s, [x, y]].to_numpy(np.float64))
            ax.plot(fs[:, 0], fs[:, 1], ls=ls, lw=LW_SEED, alpha=ALPHA_SEED, color=c)
    f = pareto_front(pts)
    lam_txt = f"$\\lambda$={lam:g}" if lam is not None else "$\\lambda$=0"
    what = f"front of all {len(seeds)} seeds pooled" if len(seeds) > 1 else "1 seed"
    ax.plot(f[:, 0], f[:, 1], ls=ls, lw=LW_MAIN, marker=marker, ms=4, color=c, label=f"{method} ({lam_txt}), {what}")
    side = str(rows["side"].iloc[0]) if "side" in rows else "lm"
    ax.set_xlabel(loss_label(x, side))
    ax.set_ylabel(loss_label(y, side))
    return True


def legend(ax: plt.Axes) -> None:
    """The arms' legend plus one entry for the thin per-seed fronts."""
    handles, labels = ax.get_legend_handles_labels()
    if any(ln.get_linewidth() == LW_SEED for ln in ax.get_lines()):  # per-seed fronts drawn (several seeds)
        handles.append(Line2D([], [], color="grey", lw=LW_SEED, alpha=0.8))
        labels.append("thin: one seed's own front")
    ax.legend(handles, labels, loc="best")


def _panels(df: pd.DataFrame, title: str, panels: list[tuple[str, str, list[str], str]], out: Path,
            name: str, caption: str = "", sources: tuple[str, ...] = ()) -> list[Path]:
    """A row of panels (subtitle, view, methods, key method); skipped when no panel is drawable."""
    # a panel is drawn when its key method (the one it is about) and one other are present
    usable = [(t, v, [m for m in ms if (df["method"] == m).any()], key) for t, v, ms, key in panels]
    usable = [(t, v, ms) for t, v, ms, key in usable if key in ms and len(ms) >= 2]
    if not usable:
        raise Skip(f"{name}: no panel has its methods {[ms for _, _, ms, _ in panels]}")
    fig, axes = plt.subplots(1, len(usable), figsize=(6.2 * len(usable), 5), squeeze=False)
    for ax, (sub, view, methods) in zip(axes[0], usable):
        for m in methods:
            draw_frontier(ax, df, m, view, dashed="lora" in m)
        ax.set_title(sub)
        legend(ax)
    fig.suptitle(title)
    n = df["seed"].nunique()
    side = str(df["side"].iloc[0])
    describe(out, name, f"{caption} {FRONT_NOTE} {unit_note(side)} {n} seed{'s' if n != 1 else ''} per arm.",
             "frontiers", sources)
    return save(fig, out, name)


FIGS: dict[str, tuple[str, list[tuple[str, str, list[str], str]]]] = {
    "fig2": ("Figure 2: early exposure shifts the frontiers",
             [("retention vs fine-tuning", "ret_ft", ["unmixed", "mixed"], "mixed"),
              ("pretraining vs retention", "pre_ret", ["unmixed", "mixed"], "mixed")]),
    "fig4": ("Figure 4: dropout / replay on top of mixing",
             [("+ dropout", "ret_ft", ["unmixed", "mixed", "mixed+dropout"], "mixed+dropout"),
              ("+ replay", "ret_ft", ["unmixed", "mixed", "mixed+replay"], "mixed+replay")]),
    "fig5": ("Figure 5: dropout / replay, retained pretraining loss",
             [("+ dropout", "pre_ret", ["unmixed", "mixed", "mixed+dropout"], "mixed+dropout"),
              ("+ replay", "pre_ret", ["unmixed", "mixed", "mixed+replay"], "mixed+replay")]),
    "fig6": ("Figure 6: dropout / replay without mixing",
             [("dropout alone", "ret_ft", ["unmixed", "unmixed+dropout", "mixed"], "unmixed+dropout"),
              ("replay alone", "ret_ft", ["unmixed", "unmixed+replay", "mixed"], "unmixed+replay")]),
    "fig7": ("Figure 7: LoRA vs full fine-tuning",
             [("FFT and LoRA", "ret_ft", ["unmixed", "mixed", "unmixed+lora", "mixed+lora"], "mixed+lora")]),
}


#: what each figure shows (its caption's first sentence)
CAPTIONS = {
    "fig2": "Figure 2: (L_ft, L_ret) and (L_ret, L_pre) Pareto fronts, mixed vs unmixed pretraining.",
    "fig4": "Figure 4: (L_ft, L_ret) fronts with dropout / replay added to the mixed arm.",
    "fig5": "Figure 5: (L_ret, L_pre) fronts with dropout / replay added to the mixed arm.",
    "fig6": "Figure 6: (L_ft, L_ret) fronts of dropout / replay without mixing.",
    "fig7": "Figure 7: (L_ft, L_ret) fronts, LoRA (dashed) vs full fine-tuning.",
}


def intervention_figs() -> dict[str, tuple[str, list[tuple[str, str, list[str], str]]]]:
    """One figure per registered stage-2 intervention X (:mod:`early_exposure.interventions`):
    the (L_ft, L_ret) frontiers of unmixed, mixed, unmixed+X and mixed+X."""
    out = {}
    for iv in interventions.registry():
        ms = ["unmixed", "mixed", f"unmixed{iv.suffix}", f"mixed{iv.suffix}"]
        out[f"intervention_{iv.name}"] = (f"Stage-2 intervention: {iv.title}, with and without mixing",
                                          [(f"{iv.title}", "ret_ft", ms, f"unmixed{iv.suffix}")])
    return out


@styled
def frontier_figures(results: Path, out: Path, log: Logger = print) -> tuple[list[Path], list[str]]:
    """All frontier figures for every source and pipeline -> (paths written, failures)."""
    from figures.common import NotComparable

    paths, failures = [], []
    for label, pipe, sub, root in frontier_tables(results, "frontier", log, "frontier figures"):
        try:
            assert_comparable(sub, root)
        except NotComparable as e:
            failures.append(f"{label} {pipe}: {e}")
            log(f"REFUSED {label} {pipe}: not comparable: {e}")
            continue
        src = rel(results, (root / "frontier.csv") if root is not None else
                  ResultsRoot(results).theory("frontier") / "frontier.csv")
        for key, (title, panels) in {**FIGS, **intervention_figs()}.items():
            name = fig_name(label, "frontiers", f"{key}-{pipe}")
            cap = CAPTIONS.get(key, f"{title}: (L_ft, L_ret) fronts.") + f" Source {label}, pipeline {pipe}."
            try:
                paths += _panels(sub, f"{title} ({label}: {pipe})", panels, out, name, cap, (src,))
            except Skip as s:
                log(f"skip {s}")
    return paths, failures


@styled
def theory_vs_lm(results: Path, out: Path, log: Logger = print) -> list[Path]:
    """Theory and LM (L_ft, L_ret) frontiers, mixed vs unmixed, side by side."""
    th_csv = ResultsRoot(results).theory("frontier") / "frontier.csv"
    try:
        th = load_frontier(th_csv)
    except Skip as s:
        log(f"skip theory_vs_lm: {s}")
        return []
    presets = lm_presets(results)
    if not presets:
        log("skip theory_vs_lm: no LM frontier table")
        return []
    paths = []
    for p in presets:
        lm = load_frontier(RunTree(p).frontier)
        panels = [(f"theory: {pipe}", g) for pipe, g in th.groupby("pipeline")][:1]
        panels += [(f"LM {p.name}: {pipe}", g) for pipe, g in lm.groupby("pipeline")]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.8), squeeze=False)
        for ax, (t, g) in zip(axes[0], panels):
            assert_comparable(g, p if t.startswith("LM") else None)
            for m in ("unmixed", "mixed"):
                draw_frontier(ax, g, m, "ret_ft")
            ax.set_title(t)
            legend(ax)
        fig.suptitle("Theory vs LM: (L_ft, L_ret) fronts, mixed vs unmixed")
        cap = ("Theory (left; losses in expected squared error) and LM (right; nats/token) (L_ft, L_ret) "
               f"fronts of mixed and unmixed pretraining, LM preset {p.name}. {FRONT_NOTE}")
        name = fig_name(f"lm-{p.name}", "theory-vs-lm", "frontiers")
        describe(out, name, cap, "theory_vs_lm", (rel(results, th_csv), rel(results, RunTree(p).frontier)))
        paths += save(fig, out, name)
    return paths
