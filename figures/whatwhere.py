"""What is forgotten and where (docs/whatwhere.md): a forgetting map per LM pipeline and a
depth profile per arm, from the tables of ``python -m lm_experiments.analysis.whatwhere``.

    python -m figures.whatwhere --results results/ --out results/figures

Reads ``results/lm/<preset>/whatwhere/{forgetting_map,depth_profile,update_geometry_map}.csv``;
writes ``lm-<preset>_whatwhere_map.png/.pdf`` and ``lm-<preset>_whatwhere_depth.png/.pdf``. A
preset without the tables is skipped with a note. The map leaves out columns with nothing to
forget (no item right before the stage) and columns where no arm forgot anything (all zero),
and names them in the caption.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from early_exposure import interventions
from early_exposure.runs import ResultsRoot, RunTree
from figures.common import Logger, describe, save
from figures.style import arm_colour, fig_name, styled

#: item sets shown in the map, in order, with their plain names (absent ones are left out)
SETS = {"post.mc": "D_post k-way choice (chance-adjusted)", "post.answer": "D_post answer tokens",
        "post.em": "D_post exact match", "post.block": "D_post blocks", "post.doc": "D_post documents",
        "pre.block": "D_pre blocks", "pre.doc": "D_pre documents",
        "ft.mc": "D_ft k-way choice (chance-adjusted)", "ft.answer": "D_ft answer tokens", "ft.em": "D_ft exact match",
        "ft.block": "D_ft blocks", "ft.doc": "D_ft documents"}
PAIRS = {"post->ft": "fine-tuning (theta_post -> theta_ft)", "pre->post": "post-training (theta_pre -> theta_post)"}
ARM_ORDER = ("", *interventions.suffixes())  # the registry's canonical order


def _arm_label(method: str, lam: float, cm: bool) -> str:
    return f"{method} ($\\lambda$={lam:g}{', compute-matched' if cm else ''})"


def _sorted_arms(df: pd.DataFrame) -> list[tuple[str, float, bool]]:
    arms = {(m, float(lam), bool(c)) for m, lam, c in zip(df["method"], df["mix_fraction"], df["compute_matched"])}

    def key(a: tuple[str, float, bool]) -> tuple:
        suffix = a[0].split("+", 1)[1] if "+" in a[0] else ""
        return (a[2], ARM_ORDER.index("+" + suffix) if suffix and "+" + suffix in ARM_ORDER else
                (0 if not suffix else 9), a[1])
    return sorted(arms, key=key)


def map_table(fmap: pd.DataFrame) -> dict:
    """The cells of the forgetting map: ``arms`` (rows), ``cols`` ((pair, set) columns kept),
    ``vals`` (mean 1->0 rate, chance-adjusted for k-way items), ``text`` (the mean and its 95%
    t-interval clipped to [0, 1]), ``n_seeds``, ``lr`` (fine-tuning lr shown) and ``dropped``
    ({(pair, set): why}): a column with nothing right before the stage, or one that is zero
    (or empty) in every arm, is left out."""
    cols, dropped = [], {}
    for p in PAIRS:
        for s in SETS:
            g = fmap[(fmap["pair"] == p) & (fmap["set"] == s)]
            if g.empty:
                continue
            if (g["acc_before"].fillna(0) > 0).any():
                cols.append((p, s))
            else:  # no arm had anything right before the stage: nothing to forget
                dropped[(p, s)] = "nothing right before"
    lrs = sorted(fmap.loc[fmap["pair"] == "post->ft", "ft_lr"].dropna().unique())
    arms = _sorted_arms(fmap)
    vals = np.full((len(arms), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in arms]
    n_seeds: set[int] = set()
    for i, (m, lam, cm) in enumerate(arms):
        for j, (p, s) in enumerate(cols):
            sel = ((fmap["method"] == m) & np.isclose(fmap["mix_fraction"], lam) & (fmap["compute_matched"] == cm)
                   & (fmap["pair"] == p) & (fmap["set"] == s))
            if p == "post->ft" and lrs:
                sel &= np.isclose(fmap["ft_lr"], lrs[-1])
            g = fmap[sel]
            if g.empty:
                continue
            r = g.iloc[0]
            metric = "forgetting_chance_adjusted" if s.endswith(".mc") else "forgetting"
            vals[i, j] = r[metric]
            n_seeds.add(int(r["n_seeds"]))
            lo, hi = r.get(f"{metric}_lo", np.nan), r.get(f"{metric}_hi", np.nan)
            if np.isfinite(lo):  # a share: the t-interval clipped to [0, 1]
                lo, hi = max(0.0, float(lo)), min(1.0, float(hi))
            text[i][j] = f"{r[metric]:.2f}" + (f"\n[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "")
    keep = [j for j in range(len(cols)) if (np.abs(np.nan_to_num(vals[:, j])) > 1e-12).any()]
    for j in range(len(cols)):
        if j not in keep:
            dropped[cols[j]] = "zero in every arm"
    return {"arms": arms, "cols": [cols[j] for j in keep], "vals": vals[:, keep],
            "text": [[row[j] for j in keep] for row in text], "n_seeds": sorted(n_seeds),
            "lr": lrs[-1] if lrs else None, "dropped": dropped}


@styled
def forgetting_map(fmap: pd.DataFrame, preset: str, out: Path) -> list[Path]:
    """Heat map: rows = arms, columns = (stage, item set) with something forgotten in some arm;
    cell = mean 1->0 rate over seeds (chance-adjusted for k-way items) with its 95%
    t-interval written in."""
    t = map_table(fmap)
    arms, cols, vals, text = t["arms"], t["cols"], t["vals"], t["text"]
    if not cols:
        return []
    fig, ax = plt.subplots(figsize=(max(6.5, 2.1 * len(cols) + 3.5), 0.8 * len(arms) + 2.4))
    vmax = max(0.05, float(np.nanmax(vals)) if np.isfinite(vals).any() else 1)
    im = ax.imshow(vals, cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
    for i in range(len(arms)):
        for j in range(len(cols)):
            if text[i][j]:
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=10,
                        color="white" if vals[i, j] > 0.6 * vmax else "black")
    ax.set_xticks(range(len(cols)), [f"{SETS[s]}\nin {PAIRS[p].split(' (')[0]}".replace(" (chance-adjusted)", "*")
                                     for p, s in cols], rotation=20, ha="right")
    ax.set_yticks(range(len(arms)), [_arm_label(*a) for a in arms])
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="share of items forgotten (right -> wrong)")
    ax.set_title(f"What is forgotten, LM {preset}")
    seeds = ", ".join(map(str, t["n_seeds"])) or "?"
    lr = f" Fine-tuning rows at fine-tuning lr {t['lr']:g}." if t["lr"] is not None else ""
    left = ("; ".join(f"{SETS[s]} in {PAIRS[p].split(' (')[0]} ({why})" for (p, s), why in t["dropped"].items()))
    cap = (f"What is forgotten, LM preset {preset}: rows are arms, columns (item set, stage) pairs; each cell is "
           "the share of items right before the stage and wrong after it, mean over "
           f"{seeds} seeds with its 95% Student-t interval over seeds clipped to [0, 1] (in brackets); "
           f"* k-way choice items are chance-adjusted.{lr}"
           + (f" Left out: {left}." if left else ""))
    describe(out, fig_name(f"lm-{preset}", "whatwhere", "map"), cap, "whatwhere",
             (f"lm/{preset}/whatwhere/forgetting_map.csv",))
    return save(fig, out, fig_name(f"lm-{preset}", "whatwhere", "map"))


@styled
def depth_profile(depth: pd.DataFrame, geo: pd.DataFrame | None, preset: str, out: Path) -> list[Path]:
    """Per arm family (rows): share of the L_ret increase undone by restoring one unit to
    theta_post, its cost (share of stage 3's L_ft gain lost), and stage 3's relative update
    norm per unit; unmixed vs mixed side by side, 95% t-intervals over seeds."""
    single = [u for u in ("embeddings", *sorted({u for u in depth["unit"] if u.count(".") == 1
                                                and u.startswith("layers.")}, key=lambda u: int(u.split(".")[1])),
                          "final_norm", "head", "attention", "mlp") if u in set(depth["unit"])]
    if not single:
        return []
    fams = sorted({m.split("+", 1)[1] if "+" in m else "" for m in depth["method"]},
                  key=lambda f: ARM_ORDER.index("+" + f) if f and "+" + f in ARM_ORDER else 0)
    panels = [("share_ret_undone", "share of the L_ret increase undone"),
              ("share_ft_gain_lost", "share of the L_ft gain lost (cost)")]
    if "share_answers_restored" in depth and depth["share_answers_restored"].notna().any():
        panels.insert(1, ("share_answers_restored", "share of forgotten D_post answers restored"))
    if geo is not None and not geo.empty:
        panels += [("rel_update_ft", "relative update norm, stage 3"),
                   ("cosine", "cosine of the stage-2 and stage-3 updates")]
    ncol = min(3, len(panels))
    per = -(-len(panels) // ncol)  # panel rows per arm family
    fig, grid = plt.subplots(len(fams) * per, ncol, figsize=(4.3 * ncol, 2.8 * len(fams) * per), squeeze=False)
    for extra in range(len(panels), per * ncol):  # empty cells of each family's last row
        for r in range(len(fams)):
            grid[r * per + extra // ncol, extra % ncol].axis("off")
    x = np.arange(len(single))
    n_seeds = set()
    for r, fam in enumerate(fams):
        for c, (metric, label) in enumerate(panels):
            ax = grid[r * per + c // ncol, c % ncol]
            src = geo if metric in ("rel_update_ft", "cosine") else depth
            suffix = f"+{fam}" if fam else ""
            # one bar per arm: unmixed, then every mixed lambda (a preset may pretrain at several)
            arms = sorted({(m, float(lam)) for m, lam in zip(depth["method"], depth["mix_fraction"])
                           if m in (f"unmixed{suffix}", f"mixed{suffix}")}, key=lambda a: (a[0] != f"unmixed{suffix}", a[1]))
            width = 0.76 / max(1, len(arms))
            for k, (method, lam) in enumerate(arms):
                colour = arm_colour(method, lam, [a[1] for a in arms])
                g = src[(src["method"] == method) & np.isclose(src["mix_fraction"].astype(float), lam)]
                if "compute_matched" in g:
                    g = g[~g["compute_matched"].astype(bool)]
                if "ft_lr" in g and len(depth["ft_lr"].dropna()):
                    g = g[np.isclose(g["ft_lr"], float(depth["ft_lr"].dropna().iloc[0]))]
                g = g.set_index("unit").reindex(single)
                if g[metric].isna().all():
                    continue
                n_seeds.update(int(v) for v in g["n_seeds"].dropna())
                lo = (g[metric] - g.get(f"{metric}_lo", g[metric])).clip(lower=0).fillna(0)
                hi = (g.get(f"{metric}_hi", g[metric]) - g[metric]).clip(lower=0).fillna(0)
                ax.bar(x + (k - (len(arms) - 1) / 2) * width, g[metric], width, yerr=[lo, hi], color=colour, alpha=0.8,
                       label=f"{method} ($\\lambda$={lam:g})", capsize=2)
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_xticks(x, [u.replace("layers.", "layer ") for u in single], rotation=30)
            ax.set_title(f"{'base' if not fam else '+' + fam}: {label}", fontsize=10)
            if c == 0:
                ax.legend()
    lr = float(depth["ft_lr"].dropna().iloc[0]) if len(depth["ft_lr"].dropna()) else float("nan")
    fig.suptitle(f"Where fine-tuning forgets, LM {preset}: restore one unit of theta_ft to theta_post")
    seeds = ", ".join(map(str, sorted(n_seeds))) or "?"
    cap = (f"Where fine-tuning forgets, LM preset {preset}: for each unit (input -> output) restored from the "
           "fine-tuned weights theta_ft to the post-trained theta_post, the share of the L_ret increase undone "
           "and its cost (share of the L_ft gain lost); with the update geometry, stage 3's relative update norm "
           "and the cosine of the stage-2 and stage-3 updates. One row of panels per arm family; black unmixed, "
           f"purple mixed (darker: larger lambda). Bars: mean over {seeds} seeds; error bars: 95% Student-t "
           f"interval over seeds (n = {seeds}). Fine-tuning lr {lr:g}.")
    describe(out, fig_name(f"lm-{preset}", "whatwhere", "depth"), cap, "whatwhere",
             [f"lm/{preset}/whatwhere/depth_profile.csv"]
             + ([f"lm/{preset}/whatwhere/update_geometry_map.csv"] if geo is not None else []))
    return save(fig, out, fig_name(f"lm-{preset}", "whatwhere", "depth"))


def make_whatwhere_figures(results: Path, out: Path, log: Logger = print) -> list[Path]:
    """Every preset's forgetting map and depth profile (skipped with a note when absent)."""
    paths: list[Path] = []
    found = ResultsRoot(results).lm_dirs_with(RunTree(".").whatwhere.name)
    if not found:
        log(f"skip whatwhere: no {Path(results) / 'lm'}/<preset>/whatwhere (python -m lm_experiments.analysis.whatwhere)")
    for w in found:
        preset = w.parent.name
        fm, dp, gm = w / "forgetting_map.csv", w / "depth_profile.csv", w / "update_geometry_map.csv"
        if fm.is_file():
            paths += forgetting_map(pd.read_csv(fm), preset, Path(out))
        else:
            log(f"skip whatwhere map {preset}: {fm} not found")
        if dp.is_file():
            paths += depth_profile(pd.read_csv(dp), pd.read_csv(gm) if gm.is_file() else None, preset, Path(out))
        else:
            log(f"skip whatwhere depth {preset}: {dp} not found")
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    ap = argparse.ArgumentParser(prog="python -m figures.whatwhere",
                                 description="Forgetting maps and depth profiles from lm/<preset>/whatwhere tables.")
    ap.add_argument("--results", required=True, help="results tree holding lm/<preset>/whatwhere/")
    ap.add_argument("--out", required=True, help="directory for the figures (PNG + PDF)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if not Path(a.results).is_dir():
        print(f"error: --results: {a.results} is not a directory", file=sys.stderr)
        return 2
    for p in make_whatwhere_figures(Path(a.results), Path(a.out)):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
