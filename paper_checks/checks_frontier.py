"""Frontier claims (a)-(e) of the paper, judged on a frontier table (either side).

The same functions judge the LM results (``side=lm``) and their theory analogues
(``side=theory``), so the two verdicts are computed identically and can be shown side by
side. Claims (paper sections):

- (a) Section 4.3 / Figure 2: early exposure (mixed pretraining) improves the
  (L_ft, L_ret) frontier and the (L_ret, L_pre) frontier.
- (b) Section 4.1 / Figure 3a: L_im is nearly flat in lambda while L_ret falls.
- (c) Section 4.2 / Figure 3b: compute-matched, L_im worsens with lambda and the best
  L_ret is at an interior lambda.
- (d) Section 4.4 / Figures 4-6: replay and dropout improve the frontier on top of mixing,
  and alone (on unmixed pretraining) improve it less than mixing does.
- (e) Appendix B.3 / Figure 7: mixing also improves the LoRA frontier.

Frontier comparisons use the hypervolume difference (area dominated, common reference
point; :mod:`early_exposure.pareto`) and the loss gap at matched first coordinate, each
computed on every seed's own fronts (paired: the same seeds in both arms) and summarised by
a Student-t interval over seeds, with the exact sign-flip p beside it (with 3-5 seeds a
percentile bootstrap over seeds degenerates to a handful of distinct resamples). The lambda
studies use per-seed slopes and gaps the same way. A claim PASSes only when the interval
excludes zero in its favour, FAILs when the interval shows no meaningful effect or the
opposite, and is INCONCLUSIVE otherwise or with fewer than ``min_seeds`` seeds (the
noise-free theory frontier may resample upstream checkpoints instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from early_exposure import interventions
from early_exposure.errors import ConfigError
from early_exposure.frontier import BASE_METHODS, VIEWS, select_arm
from early_exposure.pareto import front_box, hypervolume, loss_gap_at_matched_x, pareto_front
from paper_checks.report import make_check, no_data
from early_exposure.stats import Interval, sign_flip_p, slope, t_interval



@dataclass(frozen=True)
class CheckOptions:
    """Statistical settings of every frontier check (recorded in the report)."""

    min_seeds: int = 3          # fewer independent seeds -> INCONCLUSIVE on noisy data
    n_boot: int = 1000          # bootstrap replicates
    level: float = 0.95         # two-sided interval level
    min_effect: float = 0.01    # a gain below this fraction of the baseline loss is "not meaningful"
    flat_frac: float = 0.5      # (b): "nearly flat" = |change of L_im| < flat_frac * |change of L_ret|
    seed: int = 0               # bootstrap RNG seed

    def __post_init__(self) -> None:
        if self.min_seeds < 1:
            raise ConfigError("--min-seeds", f"must be >= 1, got {self.min_seeds}")
        if self.n_boot < 20:
            raise ConfigError("--n-boot", f"must be >= 20, got {self.n_boot}")
        if not 0.5 < self.level < 1:
            raise ConfigError("--level", f"must be in (0.5, 1), got {self.level}")


def _fmt(iv: Interval, digits: int = 3) -> str:
    if not np.isfinite(iv.point):
        return "undefined"
    if iv.n_boot == 0 and iv.n_valid == 0:  # an exact value or a point estimate alone
        return f"{iv.point:.{digits}g}"
    return f"{iv.point:.{digits}g} [{iv.lo:.{digits}g}, {iv.hi:.{digits}g}]"


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    return df.loc[~df["diverged"].astype(bool)]


def _groups(rows: pd.DataFrame, unit: str, view: str, keep: list[Any] | None = None) -> dict[Any, np.ndarray]:
    x, y = VIEWS[view]
    out = {}
    for u, g in rows.groupby(unit, sort=True):
        if keep is None or u in keep:
            out[u] = g[[x, y]].to_numpy(dtype=np.float64)
    return out


def compare_frontiers(
    df: pd.DataFrame, baseline: str, candidate: str, view: str, side: str, opts: CheckOptions,
) -> tuple[str, str, dict[str, Any]]:
    """Does ``candidate``'s frontier beat ``baseline``'s in ``view``? -> (status, evidence, data).

    Statistic: hypervolume(candidate) - hypervolume(baseline) against one reference point
    (from all points of both arms), computed on each shared seed's own fronts, with a
    Student-t interval over those per-seed values. Also the loss gap (baseline minus
    candidate second coordinate at matched first coordinate) with its interval.
    """
    a_all, lam_a = select_arm(df, baseline)
    b_all, lam_b = select_arm(df, candidate)
    if a_all.empty or b_all.empty:
        missing = baseline if a_all.empty else candidate
        return "INCONCLUSIVE", f"no data: no rows of method {missing!r}", {"missing": missing, "view": view}
    a, b = _usable(a_all), _usable(b_all)
    x, y = VIEWS[view]
    data: dict[str, Any] = {
        "view": view, "x": x, "y": y, "baseline": baseline, "candidate": candidate,
        "mix_fraction": {"baseline": lam_a, "candidate": lam_b},
        "rows": {"baseline": int(len(a_all)), "candidate": int(len(b_all))},
        "diverged": {"baseline": int(len(a_all) - len(a)), "candidate": int(len(b_all) - len(b))},
    }
    if a.empty or b.empty:
        return "INCONCLUSIVE", "no data: every run of one arm diverged", data
    pa, pb = a[[x, y]].to_numpy(np.float64), b[[x, y]].to_numpy(np.float64)
    # both axes scaled to the box spanned by the two fronts; reference point (1.1, 1.1), so
    # areas are comparable across views and not inflated by dominated outliers
    lo, span = front_box([pa, pb])
    ref = np.array([1.1, 1.1])
    hv_a, hv_b = hypervolume((pa - lo) / span, ref), hypervolume((pb - lo) / span, ref)
    data.update(normalisation={"lo": lo.tolist(), "span": span.tolist()}, reference_point_normalised=ref.tolist(),
                hv_baseline=hv_a, hv_candidate=hv_b,
                front_baseline=pareto_front(pa).tolist(), front_candidate=pareto_front(pb).tolist())

    shared = sorted(set(a["seed"]) & set(b["seed"]))
    if len(shared) >= opts.min_seeds:
        unit, keep = "seed", shared
    else:
        unit, keep = "upstream_id", None
    ga, gb = _groups(a, unit, view, keep), _groups(b, unit, view, keep)
    na = {k: (v - lo) / span for k, v in ga.items()}
    nb = {k: (v - lo) / span for k, v in gb.items()}
    # exact theory losses with one seed: nothing to resample, the values are the answer
    noise_free = side == "theory" and len(set(a["seed"]) | set(b["seed"])) == 1
    if noise_free or unit != "seed":  # exact theory, or too few seeds: point estimates only
        hv0 = hv_b - hv_a
        g0 = loss_gap_at_matched_x(pa, pb)["gap"]
        hv_iv, gap_iv = Interval(hv0, hv0, hv0, 0, 0), Interval(g0, g0, g0, 0, 0)
    else:  # per-seed fronts (common normalisation and reference), t-interval over the seeds
        per_hv = {k: hypervolume(nb[k], ref) - hypervolume(na[k], ref) for k in keep}
        per_gap = {k: loss_gap_at_matched_x(ga[k], gb[k])["gap"] for k in keep}
        hv_iv = t_interval(list(per_hv.values()), level=opts.level)
        gap_iv = t_interval(list(per_gap.values()), level=opts.level)
        data.update(per_seed={"hv_diff": {str(k): v for k, v in per_hv.items()},
                              "loss_gap": {str(k): v for k, v in per_gap.items()}},
                    sign_flip_p={"hv_diff": sign_flip_p(list(per_hv.values())),
                                 "loss_gap": sign_flip_p(list(per_gap.values()))},
                    interval=f"t over {len(keep)} seeds, per-seed fronts")
    data.update(unit=unit, n_units={"baseline": len(ga), "candidate": len(gb)}, shared_seeds=len(shared),
                hv_diff=hv_iv.as_dict(), hv_diff_relative=hv_iv.point / max(hv_a, 1e-12),
                loss_gap=gap_iv.as_dict())
    # immediate post-training loss of each arm: a lower L_im alone can explain a lower L_ret
    im_a = float(a.drop_duplicates("upstream_id")["L_im"].min())
    im_b = float(b.drop_duplicates("upstream_id")["L_im"].min())
    data.update(best_L_im={"baseline": im_a, "candidate": im_b})
    desc = (f"HV({candidate}) - HV({baseline}) in normalised ({x}, {y}) = {_fmt(hv_iv)} "
            f"(HV baseline {hv_a:.3g}, box 1.21); "
            f"{y} gap at matched {x} = {_fmt(gap_iv)}; CI over {len(ga)}/{len(gb)} {unit}s; "
            f"best L_im {im_b:.3g} vs {im_a:.3g}")
    if unit != "seed" and not noise_free:
        desc = desc.replace(f"; CI over {len(ga)}/{len(gb)} {unit}s", "")
        return "INCONCLUSIVE", (f"too few seeds ({len(shared)} shared < {opts.min_seeds}); "
                                f"estimate only: {desc}"), data
    if noise_free:
        desc = desc.replace(f"; CI over {len(ga)}/{len(gb)} {unit}s", "") + " (theory: exact losses, one seed)"
        hv_lo = hv_hi = hv_iv.point
        gap_lo = gap_hi = gap_iv.point
    else:
        if not np.isfinite(hv_iv.lo):
            return "INCONCLUSIVE", f"interval undefined; {desc}", data
        hv_lo, hv_hi, gap_lo, gap_hi = hv_iv.lo, hv_iv.hi, gap_iv.lo, gap_iv.hi
    data["decision"] = "exact values" if noise_free else "t-interval over per-seed statistics"
    # meaningful = the candidate's second loss is lower by >= min_effect of the baseline
    # front's mean, at matched first loss (where the fronts overlap)
    scale = float(np.abs(pareto_front(pa)[:, 1]).mean())
    m = opts.min_effect * scale
    tol = 1e-9 if noise_free else 0.0
    gap_defined = bool(np.isfinite(gap_lo) and np.isfinite(gap_hi))
    better_area, no_better_area = hv_lo > tol, hv_hi <= tol
    # without overlap in x there is no gap to hold to min_effect: the area gain itself must
    # then be meaningful (>= min_effect of the baseline's area), so every view has a minimum
    m_hv = opts.min_effect * hv_a
    data.update(min_effect_gap=m, min_effect_hv=m_hv)
    if better_area and (gap_lo >= m if gap_defined else hv_lo >= m_hv):
        return "PASS", desc, data
    if no_better_area and not (gap_defined and gap_lo > 0):
        return "FAIL", f"no larger dominated area: {desc}", data
    if gap_defined and gap_hi < m and not better_area:
        return "FAIL", f"no meaningful gain (< {m:.3g}) at matched {x}: {desc}", data
    if better_area and not gap_defined:
        return "INCONCLUSIVE", (f"fronts do not overlap in {x} (gap undefined) and the area gain is not meaningful "
                                f"(< {m_hv:.3g}, {opts.min_effect:.0%} of the baseline's): {desc}"), data
    if better_area:
        return "INCONCLUSIVE", f"larger area but gain at matched {x} not meaningful (< {m:.3g}): {desc}", data
    if no_better_area:
        return "INCONCLUSIVE", f"area and loss gap disagree: {desc}", data
    return "INCONCLUSIVE", f"interval includes zero: {desc}", data


def _per_lambda_table(df: pd.DataFrame, compute_matched: bool) -> pd.DataFrame:
    """Rows of the lambda studies: for each (lambda, seed) the post-trained checkpoint with
    the lowest L_im (the selected one, as early stopping / the hparam sweep would), with all
    its fine-tuning rows. Base methods only (no replay/dropout/LoRA)."""
    rows = df.loc[df["method"].isin(BASE_METHODS) & (df["compute_matched"].astype(bool) == compute_matched)]
    rows = _usable(rows)
    if rows.empty:
        return rows
    budget = rows["ft_budget"].mode().iloc[0]
    rows = rows.loc[rows["ft_budget"] == budget]
    best = (rows.sort_values("L_im", kind="stable")
            .drop_duplicates(["mix_fraction", "seed"])[["mix_fraction", "seed", "upstream_id"]])
    return rows.merge(best, on=["mix_fraction", "seed", "upstream_id"])


def _common_ft_lrs(t: pd.DataFrame) -> list[float]:
    per_lam = [set(g["ft_lr"]) for _, g in t.groupby("mix_fraction")]
    return sorted(set.intersection(*per_lam)) if per_lam else []


def _seed_status(t: pd.DataFrame, side: str, opts: CheckOptions) -> tuple[bool, str]:
    n = t["seed"].nunique()
    if n >= opts.min_seeds:
        return True, f"{n} seeds"
    if side == "theory" and n == 1:
        return True, "1 seed (theory: treated as exact)"
    return False, f"too few seeds ({n} < {opts.min_seeds})"


def _lambda_stat(t: pd.DataFrame, col: str, ft_lr: float | None) -> tuple[Callable[[list[Any]], float], list[Any]]:
    """stat(seeds) -> change of ``col`` over the lambda range from a least-squares line."""
    sub = t if ft_lr is None else t.loc[t["ft_lr"] == ft_lr]
    if ft_lr is None:  # L_im: one value per upstream checkpoint
        sub = sub.drop_duplicates(["mix_fraction", "seed"])
    # per seed: (m, 2) array of (lambda, value), so resampling is a numpy concatenate
    by_seed = {s: g[["mix_fraction", col]].to_numpy(np.float64) for s, g in sub.groupby("seed")}
    span = float(t["mix_fraction"].max() - t["mix_fraction"].min())

    def stat(seeds: list[Any]) -> float:
        g = np.concatenate([by_seed[s] for s in seeds if s in by_seed] + [np.zeros((0, 2))])
        return slope(g[:, 0], g[:, 1]) * span

    return stat, sorted(by_seed)


def _booter(opts: CheckOptions, resample: bool) -> Callable[[Callable[[list[Any]], float], list[Any]], Interval]:
    """Per-seed statistics summarised by a Student-t interval over seeds
    (:func:`early_exposure.stats.t_interval`: the statistic computed on each seed alone), or
    (``resample=False``: one exact seed, or too few seeds to judge) the point estimate alone,
    shown without an interval. The point of the interval is the mean of the per-seed values."""
    def boot(stat: Callable[[list[Any]], float], units: list[Any]) -> Interval:
        if resample:
            return t_interval([float(stat([u])) for u in units], level=opts.level)
        v = float(stat(list(units)))
        return Interval(v, v, v, 0, 0)
    return boot


def check_sec41(df: pd.DataFrame, side: str, opts: CheckOptions) -> tuple[str, str, dict[str, Any]]:
    """(b) Section 4.1: L_im nearly flat in lambda while L_ret falls (non-compute-matched)."""
    t = _per_lambda_table(df, compute_matched=False)
    lams = sorted(t["mix_fraction"].unique()) if not t.empty else []
    if len(lams) < 2:
        return "INCONCLUSIVE", f"no data: need >= 2 mixing fractions, have {lams}", {"lambdas": lams}
    ok, seeds_note = _seed_status(t, side, opts)
    lrs = _common_ft_lrs(t)
    if not lrs:
        return "INCONCLUSIVE", "no data: no fine-tuning lr shared by every lambda", {"lambdas": lams}
    lr = lrs[0]  # the gentlest common fine-tuning rate (the paper uses one small LR, 5e-5)
    im_stat, seeds = _lambda_stat(t, "L_im", None)
    ret_stat, _ = _lambda_stat(t, "L_ret", lr)
    boot = _booter(opts, resample=ok and len(seeds) > 1)
    d_im, d_ret = boot(im_stat, seeds), boot(ret_stat, seeds)
    per_lr = {str(l): boot(_lambda_stat(t, "L_ret", l)[0], seeds).as_dict() for l in lrs}
    band = opts.flat_frac * abs(d_ret.point)
    eps = opts.min_effect * float(t.loc[t["ft_lr"] == lr, "L_ret"].abs().mean())
    data = {"comparison": "L_im and L_ret vs lambda", "lambdas": [float(v) for v in lams], "ft_lr": lr,
            "delta_L_im": d_im.as_dict(), "delta_L_ret": d_ret.as_dict(), "delta_L_ret_per_ft_lr": per_lr,
            "flat_band": band, "seeds": len(seeds),
            "means": t.groupby("mix_fraction")[["L_im"]].mean()["L_im"].to_dict(),
            "means_L_ret": t.loc[t["ft_lr"] == lr].groupby("mix_fraction")["L_ret"].mean().to_dict()}
    desc = (f"change over lambda {lams[0]:g}->{lams[-1]:g}: L_im {_fmt(d_im)}, L_ret (ft lr {lr:g}) "
            f"{_fmt(d_ret)}; flat band +-{band:.3g}; meaningful L_ret drop > {eps:.3g}; {seeds_note}")
    data["min_effect_L_ret"] = eps
    if not ok:
        return "INCONCLUSIVE", f"{seeds_note}; estimate only: {desc.rsplit('; ', 1)[0]}", data
    ret_falls = d_ret.hi < -eps
    im_flat = -band <= d_im.lo and d_im.hi <= band
    if ret_falls and im_flat:
        return "PASS", desc, data
    if d_ret.lo > -eps or d_im.lo > band or d_im.hi < -band:
        why = "L_ret does not fall meaningfully" if d_ret.lo > -eps else "L_im is not flat"
        return "FAIL", f"{why}: {desc}", data
    return "INCONCLUSIVE", f"intervals too wide to decide: {desc}", data


def check_sec42(df: pd.DataFrame, side: str, opts: CheckOptions) -> tuple[str, str, dict[str, Any]]:
    """(c) Section 4.2 compute-matched: L_im worsens with lambda; best L_ret at interior lambda."""
    t = _per_lambda_table(df, compute_matched=True)
    lams = sorted(t["mix_fraction"].unique()) if not t.empty else []
    if len(lams) < 3:
        return "INCONCLUSIVE", f"no data: need >= 3 compute-matched mixing fractions, have {lams}", {"lambdas": lams}
    n_seeds = t["seed"].nunique()
    ok = n_seeds >= opts.min_seeds  # compute-matched runs are finite-sample: always noisy
    lrs = _common_ft_lrs(t)
    if not lrs:
        return "INCONCLUSIVE", "no data: no fine-tuning lr shared by every lambda", {"lambdas": lams}
    lr = lrs[0]
    im_stat, seeds = _lambda_stat(t, "L_im", None)
    ret = t.loc[t["ft_lr"] == lr]
    lam_index = {v: i for i, v in enumerate(lams)}
    # per seed: (sum of L_ret, count) per lambda, so a resample is a sum of small arrays
    by_seed = {}
    for s_, g in ret.groupby("seed"):
        acc = np.zeros((2, len(lams)))
        for lam, v in zip(g["mix_fraction"], g["L_ret"]):
            acc[0, lam_index[lam]] += v
            acc[1, lam_index[lam]] += 1
        by_seed[s_] = acc

    def gap_stat(ss: list[Any]) -> float:
        acc = sum((by_seed[s] for s in ss if s in by_seed), np.zeros((2, len(lams))))
        if (acc[1] == 0).any():
            return float("nan")
        m = acc[0] / acc[1]
        return float(min(m[0], m[-1]) - m[1:-1].min())

    boot = _booter(opts, resample=ok)
    d_im = boot(im_stat, seeds)
    gap = boot(gap_stat, sorted(by_seed))
    means = ret.groupby("mix_fraction")["L_ret"].mean()
    data = {"comparison": "compute-matched L_im and L_ret vs lambda", "lambdas": [float(v) for v in lams],
            "ft_lr": lr, "delta_L_im": d_im.as_dict(), "endpoint_minus_interior_L_ret": gap.as_dict(),
            "best_lambda": float(means.idxmin()), "means_L_ret": means.to_dict(), "seeds": n_seeds}
    desc = (f"L_im change over lambda = {_fmt(d_im)}; min endpoint L_ret - min interior L_ret "
            f"(ft lr {lr:g}) = {_fmt(gap)}; best lambda {means.idxmin():g}; {n_seeds} seeds")
    if not ok:
        return "INCONCLUSIVE", f"too few seeds ({n_seeds} < {opts.min_seeds}); estimate only: {desc}", data
    eps_im = opts.min_effect * float(t.drop_duplicates(["mix_fraction", "seed"])["L_im"].abs().mean())
    eps_ret = opts.min_effect * float(ret["L_ret"].abs().mean())
    data.update(min_effect_L_im=eps_im, min_effect_L_ret=eps_ret)
    if d_im.lo > eps_im and gap.lo > eps_ret:
        return "PASS", desc, data
    if d_im.hi < eps_im or gap.hi < eps_ret:
        why = "L_im does not worsen with lambda" if d_im.hi < eps_im else "no interior lambda is meaningfully best"
        return "FAIL", f"{why}: {desc}", data
    return "INCONCLUSIVE", f"intervals include zero: {desc}", data


#: claim kind of a stage-2 intervention X (:mod:`early_exposure.interventions`) -> (claim letter,
#: id format, claim text format, baseline, candidate, views)
INTERVENTION_CLAIMS: dict[str, tuple[str, str, str, str, str, tuple[str, ...]]] = {
    "on_top": ("d", "{name}_on_top", "{title} improves the frontier on top of mixing", "mixed", "mixed{suffix}",
               ("ret_ft", "pre_ret")),
    "alone_less": ("d", "{name}_alone_less", "{title} alone (unmixed) improves the frontier less than mixing",
                   "unmixed{suffix}", "mixed", ("ret_ft",)),
    "mixing_within": ("e", "{name}", "mixing also improves the {title} frontier", "unmixed{suffix}", "mixed{suffix}",
                      ("ret_ft",)),
}


def frontier_claims() -> tuple[tuple[str, str, str, str, str, str, tuple[str, ...]], ...]:
    """(claim letter, id suffix, source, claim text, baseline, candidate, views): claim (a), then
    each claim kind over the registered stage-2 interventions that the paper makes it of."""
    out = [("a", "mixing", "Section 4.3, Figure 2",
            "early exposure (mixed pretraining) improves the frontier", "unmixed", "mixed", ("ret_ft", "pre_ret"))]
    for kind, (letter, ident, text, base, cand, views) in INTERVENTION_CLAIMS.items():
        for iv in interventions.registry():
            if kind in iv.checks:
                f = {"name": iv.name, "title": iv.title, "suffix": iv.suffix}
                out.append((letter, ident.format(**f), iv.checks[kind], text.format(**f), base.format(**f),
                            cand.format(**f), views))
    return tuple(out)


def frontier_checks(df: pd.DataFrame | None, side: str, prefix: str, opts: CheckOptions,
                    claims: str = "ade", what: str = "frontier.csv") -> list[dict[str, Any]]:
    """Claims (a), (d), (e) per pipeline and view for one frontier table."""
    out = []
    pipelines = sorted(df["pipeline"].unique()) if df is not None and not df.empty else [None]
    for pipe in pipelines:
        sub = None if pipe is None else df.loc[df["pipeline"] == pipe]
        tag = pipe or "all"
        for letter, name, source, claim, base, cand, views in frontier_claims():
            if letter not in claims:
                continue
            for view in views:
                cid = f"{prefix}.{letter}.{name}.{view}.{tag}"
                text = f"{claim} ({VIEWS[view][1]} vs {VIEWS[view][0]})"
                key = f"{letter}.{name}.{view}"  # the same key on both sides: the side-by-side row
                if sub is None:
                    out.append(no_data(cid, text, source, side, what, pipe, key))
                    continue
                status, ev, data = compare_frontiers(sub, base, cand, view, side, opts)
                out.append(make_check(cid, text, source, side, status, ev, data, pipe, key))
    return out


def lambda_checks(df: pd.DataFrame | None, side: str, prefix: str, opts: CheckOptions,
                  what: str = "frontier.csv") -> list[dict[str, Any]]:
    """Claims (b) and (c) per pipeline for one frontier table."""
    specs = (("b", "sec41", "Section 4.1, Figure 3a", "L_im nearly flat in lambda while L_ret falls", check_sec41),
             ("c", "sec42", "Section 4.2, Figure 3b",
              "compute-matched: L_im worsens with lambda, best L_ret at an interior lambda", check_sec42))
    out = []
    pipelines = sorted(df["pipeline"].unique()) if df is not None and not df.empty else [None]
    for pipe in pipelines:
        for letter, name, source, claim, fn in specs:
            cid = f"{prefix}.{letter}.{name}.{pipe or 'all'}"
            if pipe is None:
                out.append(no_data(cid, claim, source, side, what, pipe, f"{letter}.{name}"))
                continue
            sub = df.loc[df["pipeline"] == pipe]
            # Section 4.1 varies |D_post|: one verdict per post-training data size
            for size, part in _split_by_size(sub, compute_matched=(letter == "c")):
                status, ev, data = fn(part, side, opts)
                suffix = "" if size is None else f".{size}"
                if size is not None:
                    data["post_data_size"] = size
                out.append(make_check(cid + suffix, claim + ("" if size is None else f" ({size})"), source, side,
                                      status, ev, data, pipe, f"{letter}.{name}"))
    return out


_SIZE_KEYS = ("N", "n_samples", "post_train_tokens", "post_tokens")


def _split_by_size(df: pd.DataFrame, compute_matched: bool) -> list[tuple[str | None, pd.DataFrame]]:
    """[(\"N=100\", rows), ...] when the study's rows differ in a post-training data-size
    field of ``post_hparams``; [(None, df)] otherwise. Other rows are kept in every part."""
    study = df["compute_matched"].astype(bool) == compute_matched
    hp = df.loc[study, "post_hparams"].map(lambda s: json.loads(s) if isinstance(s, str) and s else {})
    for key in _SIZE_KEYS:
        vals = hp.map(lambda d: d.get(key) if isinstance(d, dict) else None)
        distinct = sorted(v for v in vals.dropna().unique())
        if len(distinct) > 1:
            return [(f"{key}={v:g}" if isinstance(v, (int, float)) else f"{key}={v}",
                     pd.concat([df.loc[~study], df.loc[study].loc[vals == v]])) for v in distinct]
    return [(None, df)]
