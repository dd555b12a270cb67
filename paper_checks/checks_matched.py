"""Claim (b) without the L_im confound: at matched immediate loss, does mixing retain better?

The paper's form of (b) (L_im flat in lambda while L_ret falls) cannot separate retention
from better post-training when L_im is not flat. Here each arm's stage-2 trajectory
supplies checkpoints at many L_im values, each fine-tuned alike (the ``matched.csv`` table:
one row per fine-tuned checkpoint with its stage-2 step, written by ``lm_experiments`` and by
``linear_theory matched``). Per seed and arm, L_ret is a piecewise-linear function of L_im
through that seed's checkpoints (sorted by L_im; checkpoints with equal L_im averaged);
on a grid of ``GRID`` points spanning the overlap of the two arms' L_im ranges the
statistic is the mean of L_ret(baseline) - L_ret(candidate): positive = the mixed model
retains better at the same immediate loss. A seed counts only when each arm has at least
``MIN_INSIDE`` checkpoints inside the overlap (fewer: the curve there is one segment, an
extrapolation in all but name); the evidence states the overlap's width, the checkpoints of
each arm inside it and their stage-2 steps. Over seeds: Student-t interval, t-test p against
the bar, sign-flip p. PASS when the interval's lower end exceeds the minimum effect (LM:
``MEANINGFUL_NATS``; theory: 1% of the mean L_ret), FAIL when its upper end is below it,
INCONCLUSIVE otherwise, with fewer than ``min_seeds`` usable seeds, or without overlap. One
exact theory seed is judged on its value.

Three rows per pipeline: ``b.matched_im`` (unmixed vs mixed), ``b.matched_im_pre`` (the same
arms controlling for L_pre too: per seed, least squares of L_ret on 1, L_im, L_pre and a mixed
indicator over the checkpoints inside the overlap; the statistic is minus the indicator's
coefficient, since at matched L_im the mixed checkpoint also keeps more of D_pre), and
``b.matched_im_lora`` (unmixed+lora vs mixed+lora).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.stats import sign_flip_p, t_interval, t_test_p
from paper_checks.common import meaningful
from paper_checks.report import make_check, no_data

GRID = 21
#: checkpoints each arm needs inside the L_im overlap for a seed to count
MIN_INSIDE = 3
CLAIM = "at matched L_im, mixed pretraining retains better (lower L_ret after fine-tuning)"
CLAIM_PRE = "at matched L_im and L_pre, mixed pretraining retains better (lower L_ret after fine-tuning)"
CLAIM_LORA = "at matched L_im, mixed pretraining retains better under LoRA fine-tuning"
SOURCE = "Section 4.1 (claim (b), tested at matched immediate loss)"
VARIANTS = (("b.matched_im", CLAIM, ("unmixed", "mixed"), False),
            ("b.matched_im_pre", CLAIM_PRE, ("unmixed", "mixed"), True),
            ("b.matched_im_lora", CLAIM_LORA, ("unmixed+lora", "mixed+lora"), False))


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


def _inside(g: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    tol = 1e-12 * max(1.0, abs(hi))
    return g.loc[(g["L_im"] >= lo - tol) & (g["L_im"] <= hi + tol)]


def seed_difference_pre(base: pd.DataFrame, cand: pd.DataFrame, lo: float, hi: float) -> tuple[float, bool]:
    """(benefit, L_pre used): minus the mixed-indicator coefficient of the least-squares fit of
    L_ret on [1, L_im, L_pre, mixed] over both arms' checkpoints inside [lo, hi]; without
    variation in L_pre (rank-deficient design) the fit drops L_pre and says so."""
    b, c = _inside(base, lo, hi), _inside(cand, lo, hi)
    rows = pd.concat([b.assign(_mixed=0.0), c.assign(_mixed=1.0)])
    X = np.column_stack([np.ones(len(rows)), rows["L_im"], rows["L_pre"], rows["_mixed"]]).astype(np.float64)
    y = rows["L_ret"].to_numpy(np.float64)
    used = True
    if np.linalg.matrix_rank(X) < 4:
        X, used = X[:, [0, 1, 3]], False
    if len(y) <= X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
        return float("nan"), used
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return float(-coef[-1]), used


def judge_matched(df: pd.DataFrame, side: str, opts: Any, arms: tuple[str, str] = ("unmixed", "mixed"),
                  control_pre: bool = False) -> tuple[str, str, dict[str, Any]]:
    """(status, evidence, data) of the matched-L_im claim on one pipeline's rows."""
    df = df.loc[~df["diverged"].astype(bool) & np.isfinite(df["L_ret"]) & np.isfinite(df["L_im"])]
    base = df.loc[df["method"] == arms[0]]
    mixed = df.loc[df["method"] == arms[1]]
    if base.empty or mixed.empty:
        return "INCONCLUSIVE", f"no data: need {arms[0]} and {arms[1]} trajectories", {}
    lam = float(mixed["mix_fraction"].max())
    mixed = mixed.loc[mixed["mix_fraction"] == lam]
    lrs = sorted(set(base["ft_lr"]) & set(mixed["ft_lr"]))
    if not lrs:
        return "INCONCLUSIVE", "no data: no fine-tuning lr shared by both arms", {}
    lr = lrs[0]
    base, mixed = base.loc[base["ft_lr"] == lr], mixed.loc[mixed["ft_lr"] == lr]
    seeds = sorted(set(base["seed"]) & set(mixed["seed"]))
    per_seed, overlap, inside, steps, few, pre_used = {}, {}, {}, {}, [], []
    for s in seeds:
        bs, ms = base.loc[base["seed"] == s], mixed.loc[mixed["seed"] == s]
        d, rng = seed_difference(bs, ms)
        overlap[int(s)] = rng
        if not np.isfinite(d):
            per_seed[int(s)] = d
            continue
        ib, im_ = _inside(bs, *rng), _inside(ms, *rng)
        inside[int(s)] = {"baseline": int(ib["L_im"].nunique()), "candidate": int(im_["L_im"].nunique())}
        if "post_step" in df.columns:
            steps[int(s)] = {"baseline": sorted(int(x) for x in ib["post_step"].dropna().unique()),
                             "candidate": sorted(int(x) for x in im_["post_step"].dropna().unique())}
        if min(inside[int(s)].values()) < MIN_INSIDE:
            few.append(int(s))
            per_seed[int(s)] = float("nan")
            continue
        if control_pre:
            d, used = seed_difference_pre(bs, ms, *rng)
            pre_used.append(used)
        per_seed[int(s)] = d
    vals = [v for v in per_seed.values() if np.isfinite(v)]
    widths = [hi - lo for lo, hi in overlap.values() if np.isfinite(lo) and np.isfinite(hi) and hi > lo]
    eps = meaningful(side, float(pd.concat([base, mixed])["L_ret"].abs().mean()), opts)
    data: dict[str, Any] = {"baseline": arms[0], "candidate": arms[1], "candidate_mix_fraction": lam, "ft_lr": lr,
                            "per_seed": per_seed, "overlap": overlap, "grid_points": GRID, "min_effect": eps,
                            "overlap_width": {"min": float(min(widths)) if widths else float("nan"),
                                              "mean": float(np.mean(widths)) if widths else float("nan")},
                            "inside_overlap": inside, "inside_post_steps": steps, "min_inside": MIN_INSIDE,
                            "checkpoints": {"baseline": int(len(base)), "candidate": int(len(mixed))},
                            "n_seeds": len(vals), "control": "L_im and L_pre (regression)" if control_pre else "L_im"}
    if control_pre:
        data["L_pre_used"] = pre_used
    no_overlap = [s for s in seeds if not (np.isfinite(overlap[int(s)][0]) and overlap[int(s)][1] > overlap[int(s)][0])]
    what = (f"L_ret({arms[0]}) - L_ret({arms[1]}, lambda {lam:g}) at matched L_im"
            + (" and L_pre (regression inside the overlap" + ("" if all(pre_used) else "; L_pre constant on some "
                                                              "seed: dropped there") + ")" if control_pre else ""))
    ins = (f"overlap width {data['overlap_width']['mean']:.3g} (min {data['overlap_width']['min']:.3g}); "
           f"checkpoints inside per seed {arms[0]} "
           f"{min((v['baseline'] for v in inside.values()), default=0)}-"
           f"{max((v['baseline'] for v in inside.values()), default=0)}, {arms[1]} "
           f"{min((v['candidate'] for v in inside.values()), default=0)}-"
           f"{max((v['candidate'] for v in inside.values()), default=0)} (need {MIN_INSIDE})")
    if steps:
        s0 = next(iter(steps.values()))
        ins += f"; stage-2 steps inside (seed {next(iter(steps))}): {s0['baseline']} vs {s0['candidate']}"
    if no_overlap and not vals and not few:
        return "INCONCLUSIVE", f"the arms' L_im ranges do not overlap (seeds {no_overlap})", data
    noise_free = side == "theory" and len(seeds) == 1
    if noise_free:
        if not vals:
            return "INCONCLUSIVE", f"fewer than {MIN_INSIDE} checkpoints of an arm inside the overlap: {ins}", data
        v = vals[0]
        data["interval"] = "exact (theory, one seed)"
        data["estimate"] = {"point": v, "lo": v, "hi": v}
        desc = (f"mean {what} over L_im in [{overlap[int(seeds[0])][0]:.4g}, {overlap[int(seeds[0])][1]:.4g}] = "
                f"{v:.4g} at ft lr {lr:g} (exact); {ins}")
        if v > max(eps, 1e-9):
            return "PASS", desc, data
        return "FAIL", f"no meaningful retention benefit at matched L_im (< {eps:.3g}): {desc}", data
    if len(vals) < opts.min_seeds:
        return "INCONCLUSIVE", (f"too few seeds with overlapping L_im ranges and >= {MIN_INSIDE} checkpoints per arm "
                                f"inside ({len(vals)} < {opts.min_seeds}); per-seed values "
                                f"{[round(v, 4) for v in vals]}; {ins}"), data
    iv = t_interval(vals, level=opts.level)
    p, sf = t_test_p(vals, null=eps), sign_flip_p([v - eps for v in vals])
    data.update(interval=f"t over {len(vals)} seeds", difference=iv.as_dict(), estimate=iv.as_dict(), p=p,
                sign_flip_p=sf)
    desc = (f"mean {what} = {iv.point:.4g} [{iv.lo:.4g}, {iv.hi:.4g}] (t, {opts.level:.0%}, {len(vals)} seeds; "
            f"t-test p vs bar {p:.3g}, sign-flip p {sf:.3g}; seed-only interval); ft lr {lr:g}; "
            f"meaningful > {eps:.3g}; {ins}")
    if no_overlap or few:
        desc += f"; seeds left out (no overlap {no_overlap}, too few checkpoints inside {few})"
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
    """The rows of :data:`VARIANTS` per pipeline of the matched table at ``path`` (``no data``
    when absent; the L_pre variant needs an ``L_pre`` column; the LoRA row its arms)."""
    df, why = read_matched(path)
    if df is None or df.empty:
        return [no_data(f"{prefix}.b.matched_im.all", CLAIM, SOURCE, side, why or f"{path} is empty",
                        None, "b.matched_im")]
    out = []
    for pipe, g in df.groupby("pipeline", sort=True):
        for key, claim, arms, pre in VARIANTS:
            cid = f"{prefix}.{key}.{pipe}"
            if pre and "L_pre" not in g.columns:
                out.append(no_data(cid, claim, SOURCE, side, f"{path} has no L_pre column", pipe, key))
                continue
            if not set(arms) <= set(g["method"]):
                if key != "b.matched_im":
                    out.append(no_data(cid, claim, SOURCE, side, f"no {arms[0]} / {arms[1]} trajectories in {path}",
                                       pipe, key))
                    continue
            status, ev, data = judge_matched(g, side, opts, arms, pre)
            out.append(make_check(cid, claim, SOURCE, side, status, ev, data, pipe, key))
    return out
