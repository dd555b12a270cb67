"""Claim (b) without the L_im confound: at matched immediate loss, does mixing retain better?

The paper's form of (b) (L_im flat in lambda while L_ret falls) cannot separate retention
from better post-training when L_im is not flat. Here each arm's stage-2 trajectory
supplies checkpoints at many L_im values, each fine-tuned alike (the ``matched.csv`` table:
one row per fine-tuned checkpoint, written by ``lm_experiments`` and by
``linear_theory matched``). Per seed and arm, L_ret is a piecewise-linear function of L_im
through that seed's checkpoints (sorted by L_im; checkpoints with equal L_im averaged);
on a grid of ``GRID`` points spanning the overlap of the two arms' L_im ranges the
statistic is the mean of L_ret(unmixed) - L_ret(mixed): positive = the mixed model retains
better at the same immediate loss. Over seeds: a Student-t interval of the per-seed values
(:func:`early_exposure.stats.t_interval`). PASS when its lower bound exceeds ``min_effect``
of the mean L_ret, FAIL when its upper bound is below that (no meaningful benefit, or the
reverse), INCONCLUSIVE otherwise, with fewer than ``min_seeds`` seeds, or where the arms'
L_im ranges do not overlap on some seed. A noise-free theory table with one seed is judged
on its point value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paper_checks.report import make_check, no_data
from early_exposure.stats import sign_flip_p, t_interval

GRID = 21
CLAIM = "at matched L_im, mixed pretraining retains better (lower L_ret after fine-tuning)"
SOURCE = "Section 4.1 (claim (b), tested at matched immediate loss)"


def _curve(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(L_im, L_ret) sorted by L_im, equal L_im averaged."""
    m = g.groupby("L_im", sort=True)["L_ret"].mean()
    return m.index.to_numpy(np.float64), m.to_numpy(np.float64)


def seed_difference(base: pd.DataFrame, cand: pd.DataFrame, grid: int = GRID) -> tuple[float, tuple[float, float]]:
    """Mean over the common L_im grid of L_ret(base) - L_ret(cand) for one seed, and the
    overlap range; NaN when the ranges do not overlap (or one arm has < 2 checkpoints)."""
    xb, yb = _curve(base)
    xc, yc = _curve(cand)
    if len(xb) < 2 or len(xc) < 2:
        return float("nan"), (float("nan"), float("nan"))
    lo, hi = max(xb[0], xc[0]), min(xb[-1], xc[-1])
    if not hi > lo:
        return float("nan"), (float(lo), float(hi))
    g = np.linspace(lo, hi, grid)
    return float(np.mean(np.interp(g, xb, yb) - np.interp(g, xc, yc))), (float(lo), float(hi))


def judge_matched(df: pd.DataFrame, side: str, opts: Any) -> tuple[str, str, dict[str, Any]]:
    """(status, evidence, data) of the matched-L_im claim on one pipeline's rows."""
    df = df.loc[~df["diverged"].astype(bool) & np.isfinite(df["L_ret"]) & np.isfinite(df["L_im"])]
    base = df.loc[df["method"] == "unmixed"]
    mixed = df.loc[df["method"] == "mixed"]
    if base.empty or mixed.empty:
        return "INCONCLUSIVE", "no data: need unmixed and mixed trajectories", {}
    lam = float(mixed["mix_fraction"].max())
    mixed = mixed.loc[mixed["mix_fraction"] == lam]
    lrs = sorted(set(base["ft_lr"]) & set(mixed["ft_lr"]))
    if not lrs:
        return "INCONCLUSIVE", "no data: no fine-tuning lr shared by both arms", {}
    lr = lrs[0]
    base, mixed = base.loc[base["ft_lr"] == lr], mixed.loc[mixed["ft_lr"] == lr]
    seeds = sorted(set(base["seed"]) & set(mixed["seed"]))
    per_seed, overlap = {}, {}
    for s in seeds:
        d, rng = seed_difference(base.loc[base["seed"] == s], mixed.loc[mixed["seed"] == s])
        per_seed[int(s)], overlap[int(s)] = d, rng
    vals = [v for v in per_seed.values() if np.isfinite(v)]
    data: dict[str, Any] = {"candidate_mix_fraction": lam, "ft_lr": lr, "per_seed": per_seed, "overlap": overlap,
                            "grid_points": GRID, "checkpoints": {"unmixed": int(len(base)), "mixed": int(len(mixed))}}
    no_overlap = [s for s, v in per_seed.items() if not np.isfinite(v)]
    eps = opts.min_effect * float(pd.concat([base, mixed])["L_ret"].abs().mean())
    data["min_effect"] = eps
    noise_free = side == "theory" and len(seeds) == 1
    if no_overlap and not vals:
        return "INCONCLUSIVE", f"the arms' L_im ranges do not overlap (seeds {no_overlap})", data
    if noise_free:
        v = vals[0]
        data["interval"] = "exact (theory, one seed)"
        desc = (f"mean L_ret(unmixed) - L_ret(mixed, lambda {lam:g}) over L_im in "
                f"[{overlap[seeds[0]][0]:.4g}, {overlap[seeds[0]][1]:.4g}] = {v:.4g} at ft lr {lr:g} (exact)")
        if v > max(eps, 1e-9):
            return "PASS", desc, data
        return "FAIL", f"no meaningful retention benefit at matched L_im (< {eps:.3g}): {desc}", data
    if len(vals) < opts.min_seeds:
        return "INCONCLUSIVE", (f"too few seeds with overlapping L_im ranges ({len(vals)} < {opts.min_seeds}); "
                                f"per-seed values {[round(v, 4) for v in vals]}"), data
    iv = t_interval(vals, level=opts.level)
    p = sign_flip_p(vals)
    data.update(interval=f"t over {len(vals)} seeds", difference=iv.as_dict(), sign_flip_p=p)
    desc = (f"mean L_ret(unmixed) - L_ret(mixed, lambda {lam:g}) at matched L_im = {iv.point:.4g} "
            f"[{iv.lo:.4g}, {iv.hi:.4g}] (t, {opts.level:.0%}, {len(vals)} seeds; sign-flip p {p:.3g}); "
            f"ft lr {lr:g}; meaningful > {eps:.3g}")
    if no_overlap:
        desc += f"; seeds without overlap left out: {no_overlap}"
    if iv.lo > eps:
        return "PASS", desc, data
    if iv.hi < eps:
        return "FAIL", f"no meaningful retention benefit at matched L_im: {desc}", data
    return "INCONCLUSIVE", f"interval includes the no-benefit region: {desc}", data


def read_matched(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    if not path.is_file():
        return None, f"{path} not found"
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"{path} unreadable ({str(exc).splitlines()[0]})"
    need = {"pipeline", "method", "mix_fraction", "seed", "ft_lr", "L_im", "L_ret", "diverged"}
    if not need <= set(df.columns):
        return None, f"{path} lacks columns {sorted(need - set(df.columns))}"
    return df, None


def matched_checks(path: Path, side: str, prefix: str, opts: Any) -> list[dict[str, Any]]:
    """One check per pipeline of the matched table at ``path`` (``no data`` when absent)."""
    df, why = read_matched(path)
    if df is None or df.empty:
        return [no_data(f"{prefix}.b.matched_im.all", CLAIM, SOURCE, side, why or f"{path} is empty",
                        None, "b.matched_im")]
    out = []
    for pipe, g in df.groupby("pipeline", sort=True):
        status, ev, data = judge_matched(g, side, opts)
        out.append(make_check(f"{prefix}.b.matched_im.{pipe}", CLAIM, SOURCE, side, status, ev, data, pipe,
                              "b.matched_im"))
    return out
