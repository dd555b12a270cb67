"""Frontier claims (a)-(e) of the paper, judged on a frontier table (either side).

The same functions judge the LM results (``side=lm``) and their theory analogues
(``side=theory``), so the two verdicts are computed identically and can be shown side by
side. Claims (paper sections):

- (a) Section 4.3 / Figure 2: early exposure (mixed pretraining) improves the
  (L_ft, L_ret) frontier and the (L_ret, L_pre) frontier.
- (b) Section 4.1 / Figure 3a: L_im is nearly flat in lambda while L_ret falls.
- (c) Section 4.2 / Figure 3b: compute-matched, (c1) L_im worsens with lambda, (c2) L_ret
  improves with lambda and is best at lambda > 0, (c3) the optimum is interior.
- (d) Section 4.4 / Figures 4-6: replay and dropout improve the frontier on top of mixing;
  Appendix B.2: alone (on unmixed pretraining) each shifts the frontier, but less than mixing.
- (e) Appendix B.3 / Figure 7: mixing also improves the LoRA frontier.

Frontier comparisons (:func:`compare_frontiers`) are judged in the losses' own units: the
gap at matched first loss over the overlap of the two fronts, per seed (paired), with a
Student-t interval over seeds, the t-test p against the minimum gain and the exact sign-flip
p; the normalised hypervolume difference is a secondary figure (its interval cut to the
attainable range) that decides only where the fronts do not overlap. PASS when the gap
interval lies above the minimum gain (LM: ``paper_checks.common.MEANINGFUL_NATS``), FAIL
when it lies below, INCONCLUSIVE otherwise and with fewer than ``min_seeds`` shared seeds.
(b) and (c) live in :mod:`paper_checks.checks_lambda` (re-exported here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from early_exposure import interventions
from early_exposure.frontier import VIEWS, select_arm
from early_exposure.pareto import front_box, hypervolume, loss_gap_at_matched_x, pareto_front
from early_exposure.stats import Interval, bounded_t_interval, sign_flip_p, t_interval, t_test_p
from paper_checks.checks_lambda import (check_sec41, check_sec42, check_sec42_parts,  # noqa: F401 (re-exported)
                                        lambda_checks, per_lambda_table, split_by_size)
from paper_checks.common import HV_RANGE, MIN_HV_GAIN, CheckOptions, fmt, meaningful, p_fields, usable
from paper_checks.report import make_check, no_data

_fmt, _usable = fmt, usable  # older names


def _groups(rows: pd.DataFrame, unit: str, view: str, keep: list[Any] | None = None) -> dict[Any, np.ndarray]:
    x, y = VIEWS[view]
    out = {}
    for u, g in rows.groupby(unit, sort=True):
        if keep is None or u in keep:
            out[u] = g[[x, y]].to_numpy(dtype=np.float64)
    return out


def compare_frontiers(
    df: pd.DataFrame, baseline: str, candidate: str, view: str, side: str, opts: CheckOptions,
    examples: Any = None,
) -> tuple[str, str, dict[str, Any]]:
    """Does ``candidate``'s frontier beat ``baseline``'s in ``view``? -> (status, evidence, data).

    Primary statistic, in the loss's own units (nats on the LM side): the gap at matched first
    coordinate, baseline minus candidate second loss (e.g. L_ret at matched L_ft) averaged
    over the overlap of the two fronts, computed on each shared seed's own fronts; Student-t
    interval over seeds, the t-test p against the minimum gain, and the exact sign-flip p.
    PASS: interval above the minimum gain (LM: ``MEANINGFUL_NATS``; theory: 1% of the
    baseline front's mean second loss); FAIL: interval below it; INCONCLUSIVE otherwise.
    Secondary: the normalised hypervolume difference (common box and reference point; its
    interval cut to the attainable range [-1.21, 1.21]); it decides only where the fronts do
    not overlap on some seed (no gap): PASS at or above ``MIN_HV_GAIN``, FAIL at or below 0.
    ``examples`` (:class:`paper_checks.examples.Examples`, per-example test losses) adds a
    seed x document bootstrap interval of the gap, which must agree for a PASS.
    """
    a_all, lam_a = select_arm(df, baseline)
    b_all, lam_b = select_arm(df, candidate)
    if a_all.empty or b_all.empty:
        missing = baseline if a_all.empty else candidate
        return "INCONCLUSIVE", f"no data: no rows of method {missing!r}", {"missing": missing, "view": view}
    a, b = usable(a_all), usable(b_all)
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
    lo, span = front_box([pa, pb])
    ref = np.array([1.1, 1.1])
    hv_a, hv_b = hypervolume((pa - lo) / span, ref), hypervolume((pb - lo) / span, ref)
    data.update(normalisation={"lo": lo.tolist(), "span": span.tolist()}, reference_point_normalised=ref.tolist(),
                hv_baseline=hv_a, hv_candidate=hv_b,
                front_baseline=pareto_front(pa).tolist(), front_candidate=pareto_front(pb).tolist())
    shared = sorted(set(a["seed"]) & set(b["seed"]))
    noise_free = side == "theory" and len(set(a["seed"]) | set(b["seed"])) == 1
    unit, keep = ("seed", shared) if len(shared) >= opts.min_seeds else ("upstream_id", None)
    ga, gb = _groups(a, unit, view, keep), _groups(b, unit, view, keep)
    scale = float(np.abs(pareto_front(pa)[:, 1]).mean())
    m = meaningful(side, scale, opts)
    data.update(min_effect_gap=m, min_effect_hv=MIN_HV_GAIN)
    if noise_free or unit != "seed":  # exact theory, or too few seeds: point estimates only
        hv0 = hv_b - hv_a
        g = loss_gap_at_matched_x(pa, pb)
        hv_iv, gap_iv = Interval(hv0, hv0, hv0, 0, 0), Interval(g["gap"], g["gap"], g["gap"], 0, 0)
        overlap = {"all": [g["x_lo"], g["x_hi"]]}
        p = sf = float("nan")
    else:
        per_hv = {k: hypervolume((gb[k] - lo) / span, ref) - hypervolume((ga[k] - lo) / span, ref) for k in keep}
        gaps = {k: loss_gap_at_matched_x(ga[k], gb[k]) for k in keep}
        per_gap = {k: v["gap"] for k, v in gaps.items()}
        overlap = {str(k): [v["x_lo"], v["x_hi"]] for k, v in gaps.items()}
        hv_iv = bounded_t_interval(list(per_hv.values()), -HV_RANGE, HV_RANGE, level=opts.level)
        gap_iv = t_interval(list(per_gap.values()), level=opts.level)
        p, sf = t_test_p(list(per_gap.values()), null=m), sign_flip_p([v - m for v in per_gap.values()])
        data.update(per_seed={"hv_diff": {str(k): v for k, v in per_hv.items()},
                              "loss_gap": {str(k): v for k, v in per_gap.items()}},
                    sign_flip_p_hv=sign_flip_p(list(per_hv.values())),
                    interval=f"t over {len(keep)} seeds, per-seed fronts (hv cut to [-{HV_RANGE}, {HV_RANGE}])")
    widths = [hi - lo_ for lo_, hi in overlap.values() if np.isfinite(lo_) and np.isfinite(hi) and hi >= lo_]
    data.update(unit=unit, n_units={"baseline": len(ga), "candidate": len(gb)}, shared_seeds=len(shared),
                hv_diff=hv_iv.as_dict(), hv_diff_relative=hv_iv.point / max(hv_a, 1e-12), loss_gap=gap_iv.as_dict(),
                overlap=overlap, overlap_width_min=float(min(widths)) if widths else float("nan"),
                points_per_front={"baseline": int(np.mean([len(pareto_front(v)) for v in ga.values()])),
                                  "candidate": int(np.mean([len(pareto_front(v)) for v in gb.values()]))},
                **p_fields(p, sf), estimate=gap_iv.as_dict(), n_seeds=len(keep) if unit == "seed" else len(shared))
    im_a = float(a.drop_duplicates("upstream_id")["L_im"].min())
    im_b = float(b.drop_duplicates("upstream_id")["L_im"].min())
    data.update(best_L_im={"baseline": im_a, "candidate": im_b})
    boot = None
    if examples is not None and unit == "seed" and not noise_free:
        boot = examples.gap_interval(a, b, view, keep, opts)
        if boot is not None:
            data["loss_gap_seed_doc_bootstrap"] = boot.as_dict()
    units = "" if unit != "seed" else f"; t over {len(keep)} seeds (p vs bar {fmt_p(p)}, sign-flip {fmt_p(sf)})"
    desc = (f"{y} gap at matched {x} = {fmt(gap_iv)} nats-or-units (bar {m:.3g}){units}; "
            f"HV({candidate}) - HV({baseline}) normalised = {fmt(hv_iv)} (secondary; HV baseline {hv_a:.3g}, "
            f"max {HV_RANGE}); best L_im {im_b:.3g} vs {im_a:.3g}; "
            f"{data['points_per_front']['candidate']} / {data['points_per_front']['baseline']} front points per "
            f"{'seed' if unit == 'seed' else 'upstream'}")
    if side == "lm":
        desc = desc.replace("nats-or-units", "nats")
    else:
        desc = desc.replace(" nats-or-units", "")
    data["L_im_difference"] = im_a - im_b
    if abs(im_a - im_b) > m:  # e.g. LoRA arms 0.45 nats apart: retention and post-training confounded
        desc += (f"; the arms' best L_im differ by {im_a - im_b:+.3g} (more than the bar): the gap can reflect "
                 f"post-training as well as retention (the matched-L_im rows separate the two)")
    if boot is not None:
        desc += f"; seed x document bootstrap {fmt(boot)}"
    elif unit == "seed" and side == "lm":
        desc += "; seed-only interval (no per-example losses)"
    if unit != "seed" and not noise_free:
        return "INCONCLUSIVE", f"too few seeds ({len(shared)} shared < {opts.min_seeds}); estimate only: {desc}", data
    if noise_free:
        desc += " (theory: exact losses, one seed)"
    elif not np.isfinite(hv_iv.lo):
        return "INCONCLUSIVE", f"interval undefined; {desc}", data
    data["decision"] = "exact values" if noise_free else "t-interval over per-seed statistics"
    gap_defined = bool(np.isfinite(gap_iv.lo) and np.isfinite(gap_iv.hi))
    if not gap_defined:  # fronts do not overlap in x on some seed: only the area can speak
        if unit == "seed" and not noise_free:  # its test replaces the gap's
            hv_vals = list(data["per_seed"]["hv_diff"].values())
            data.update(estimate=hv_iv.as_dict(), statistic="hv_diff",
                        **p_fields(t_test_p(hv_vals, null=MIN_HV_GAIN), sign_flip_p([v - MIN_HV_GAIN for v in hv_vals])))
        if hv_iv.lo >= MIN_HV_GAIN:
            return "PASS", f"fronts do not overlap in {x}; area gain >= {MIN_HV_GAIN}: {desc}", data
        if hv_iv.hi <= (1e-9 if noise_free else 0.0):
            return "FAIL", f"fronts do not overlap in {x}; no larger area: {desc}", data
        return "INCONCLUSIVE", (f"fronts do not overlap in {x} (gap undefined) and the area gain is not above "
                                f"{MIN_HV_GAIN}: {desc}"), data
    boot_ok = boot is None or boot.lo > m
    if gap_iv.lo > m and boot_ok:
        return "PASS", desc, data
    if gap_iv.hi < m:
        why = "the candidate is worse" if gap_iv.hi < 0 else f"no meaningful gain (< {m:.3g})"
        return "FAIL", f"{why} at matched {x}: {desc}", data
    if gap_iv.lo > m:
        return "INCONCLUSIVE", f"the seed x document bootstrap interval reaches the bar: {desc}", data
    where = "includes zero" if gap_iv.lo <= 0 <= gap_iv.hi else f"includes the bar {m:.3g}"
    return "INCONCLUSIVE", f"interval {where}: {desc}", data


def fmt_p(p: float) -> str:
    return f"{p:.3g}" if p is not None and np.isfinite(p) else "n/a"


#: claim kind of a stage-2 intervention X (:mod:`early_exposure.interventions`) -> (claim letter,
#: id format, claim text format, baseline, candidate, views)
INTERVENTION_CLAIMS: dict[str, tuple[str, str, str, str, str, tuple[str, ...]]] = {
    "on_top": ("d", "{name}_on_top", "{title} improves the frontier on top of mixing", "mixed", "mixed{suffix}",
               ("ret_ft", "pre_ret")),
    "alone": ("d", "{name}_alone", "{title} alone (on unmixed pretraining) shifts the frontier", "unmixed",
              "unmixed{suffix}", ("ret_ft",)),
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
                    claims: str = "ade", what: str = "frontier.csv", examples: Any = None,
                    run_dir: Any = None) -> list[dict[str, Any]]:
    """Claims (a), (d), (e) per pipeline and view for one frontier table (``examples``: per-example
    test losses of the table's runs, for the seed x document bootstrap; None: seed-only intervals)."""
    if examples is None and run_dir is not None:  # an LM output directory: its runs' eval.npz
        from paper_checks.examples import Examples

        examples = Examples.from_dir(run_dir)
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
                status, ev, data = compare_frontiers(sub, base, cand, view, side, opts, examples)
                out.append(make_check(cid, text, source, side, status, ev, data, pipe, key))
    return out
