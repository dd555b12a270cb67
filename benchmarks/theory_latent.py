"""Beyond the paper: the smallest change to the Appendix C model with a *latent* benefit of
early exposure (same L_im after converged post-training, lower L_ret), and where it lives.

Command (from the repository root; regenerates every number and figure of docs/theory_latent.md)::

    nice -n 10 python benchmarks/theory_latent.py [--out docs/results]

Writes ``OUT/theory_latent_*.csv`` (one per candidate), ``OUT/theory_latent_results.json``
(settings, headline numbers, the check rows, timings) and ``OUT/theory_latent_*.png``, and
prints every table of the doc as Markdown. Uses only :mod:`linear_theory.latent` (whose
simulator is checked against ``linear_theory.simulate`` in tests/test_theory_latent.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from linear_theory.latent import check as lcheck
from linear_theory.latent import plots, study
from linear_theory.latent.config import witness_config
from linear_theory.latent.theory import mode_flow, pre_scores, predict_pair

T0 = time.perf_counter()
TIMES: dict[str, float] = {}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def md(df: pd.DataFrame, cols: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (bool, np.bool_)):
                cells.append("yes" if v else "no")
            elif isinstance(v, (float, np.floating)):
                cells.append(format(float(v), fmt.get(c, ".4g")))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def timed(name: str, fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    TIMES[name] = round(time.perf_counter() - t, 1)
    log(f"{name}: {TIMES[name]} s")
    return out


def gap_range(sub: pd.DataFrame, col: str) -> str:
    g = sorted(sub.loc[sub[col].astype(bool), "gap"])
    return f"[{g[0]:g}, {g[-1]:g}] ({len(g)} cells)" if g else "none"


def _clean(o):
    """JSON-safe copy: numpy scalars -> Python, non-finite floats -> None."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/results", help="folder for CSV/JSON/PNG (default docs/results)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"criteria": {"tol_im": study.TOL_IM, "min_ret": study.MIN_RET, "alpha": study.ALPHA},
                 "witness_config": dataclasses.asdict(witness_config())}

    # ---------------------------------------------------------------- 1. bottleneck x gap
    bn = timed("bottleneck", study.bottleneck_grid)
    bn.to_csv(out / "theory_latent_bottleneck.csv", index=False)
    print("\n## 1. Bottleneck width x tie gap (depth 2)\n")
    tie = bn[bn["gap"] == 0.0]
    print(md(tie, ["width", "L_im_u", "L_im_m", "EY_gap_u", "EY_gap_m", "L_ret_u", "L_ret_m", "dL_ret",
                   "pred_dL_ret", "pred_switched", "stop_u", "stop_m", "steps_u", "steps_m", "gnorm_u", "gnorm_m"],
             {"EY_gap_u": ".1e", "EY_gap_m": ".1e", "gnorm_u": ".1e", "gnorm_m": ".1e"}))
    rows = []
    for h, sub in bn.groupby("width"):
        pos = sub[sub["gap"] > 0]
        neg = sub[sub["gap"] < 0]
        rows.append({"width": h, "latent gaps (simulation)": gap_range(sub, "latent"),
                     "latent gaps (slot model)": gap_range(sub, "pred_latent"),
                     "agree": f"{int((sub['latent'] == sub['pred_latent']).sum())}/{len(sub)}",
                     "pred. escape gap at gap +0.01": float(pos.loc[pos["gap"] == 0.01, "pred_escape_gap"].iloc[0]),
                     "pred. escape gap at gap -0.01": float(neg.loc[neg["gap"] == -0.01, "pred_escape_gap"].iloc[0]),
                     "max latent benefit": float(sub["latent_benefit"].max())})
    for row in rows:  # slot-model band where the plateau prediction keeps |Delta L_im| within 1%
        h = row["width"]
        ok = []
        for g in np.round(np.arange(-0.05, 0.0501, 0.0005), 4):
            cu = witness_config(width=h, gap=float(g))
            p = predict_pair(cu.with_(pre={"mix_fraction": study.ALPHA}), cu)
            if p["switched"] and abs(p["dL_im"]) <= study.TOL_IM * max(p["L_im_mixed"], p["L_im_unmixed"]):
                ok.append(float(g))
        row["1% L_im band (slot model)"] = f"[{min(ok):g}, {max(ok):g}]" if ok else "none"
    reg = pd.DataFrame(rows)
    print()
    print(md(reg, list(reg.columns), {"pred. escape gap at gap +0.01": ".3g", "pred. escape gap at gap -0.01": ".3g"}))
    w6 = bn[bn["width"] == 6].sort_values("gap")
    print("\nh = 6, every gap:\n")
    print(md(w6, ["gap", "L_im_u", "L_im_m", "dL_im", "pred_dL_im", "dL_ret", "pred_dL_ret", "latent", "pred_latent",
                  "stop_u", "stop_m", "steps_u", "steps_m", "seed_spec_u", "seed_inc_m", "pred_escape_gap"],
             {"seed_spec_u": ".2e", "seed_inc_m": ".2e", "pred_escape_gap": ".3g", "L_im_u": ".6g", "L_im_m": ".6g"}))
    off = bn[(bn["gap"] == 0.0) & bn["width"].between(5, 7)]
    rel_err = (off["pred_dL_ret"] - off["dL_ret"]).abs() / off["dL_ret"].abs()
    res["bottleneck"] = {"tie": tie.to_dict("records"), "regions": reg.to_dict("records"),
                         "tie_closed_form_max_rel_err": float(rel_err.max()),
                         "h8_max_abs_dL_ret": float(bn.loc[bn["width"] == 8, "dL_ret"].abs().max()),
                         "cells_agree": int((bn["latent"] == bn["pred_latent"]).sum()), "cells": len(bn)}
    print(f"\nclosed form at the tie, h = 5-7: max relative error {rel_err.max():.2%}; "
          f"h = 8: max |Delta L_ret| = {res['bottleneck']['h8_max_abs_dL_ret']:.2e}; predicted latent region agrees in "
          f"{res['bottleneck']['cells_agree']}/{len(bn)} cells")

    small = timed("smallest", study.smallest_instance)
    small.to_csv(out / "theory_latent_smallest.csv", index=False)
    print("\nSmallest instance (n = 2, k = 1, no invariant features, tie at 3):\n")
    print(md(small, ["width", "L_im_u", "L_im_m", "L_ret_u", "L_ret_m", "dL_im", "dL_ret", "pred_dL_ret", "latent",
                     "stop_u", "stop_m"]))
    res["smallest"] = small.to_dict("records")

    # ---------------------------------------------------------------- spectra
    cases = timed("spectra", study.spectra_cases)
    plots.fig_spectra(cases, out / "theory_latent_spectra.png")
    print("\n## Mechanism: per-feature spectra diag(U^T theta V) (inc0, inc1, spec0, spec1)\n")
    srows = []
    for name, (u, m) in cases.items():
        for arm, r in (("unmixed", u), ("mixed", m)):
            for st in ("pre", "post", "ft"):
                s = r.spectra[st]
                srows.append({"case": name, "arm": arm, "stage": st, "inc0": s[4], "inc1": s[5], "spec0": s[6],
                              "spec1": s[7], "spec block trace": s[6] + s[7], "offdiag": r.offdiag[st]})
    sdf = pd.DataFrame(srows)
    print(md(sdf, list(sdf.columns), {c: ".3f" for c in ("inc0", "inc1", "spec0", "spec1", "spec block trace")}
             | {"offdiag": ".1e"}))
    res["spectra"] = srows

    # ---------------------------------------------------------------- 2. D_ft
    ft = timed("ft", study.ft_grid)
    ft.to_csv(out / "theory_latent_ft.csv", index=False)
    # ---------------------------------------------------------------- Prop. 2 exhaustive
    rnd = timed("random", study.random_search)
    rnd.to_csv(out / "theory_latent_random.csv", index=False)
    plots.fig_ft(ft, rnd, out / "theory_latent_ft.png")
    print("\n## 2. D_ft variance along V_spec / rotation (gap 0)\n")
    a = ft[ft["ft_rotation"] == 0.0]
    print(md(a, ["width", "ft_spec_var", "dL_im", "dL_ret", "pred_dL_ret", "latent", "L_ft_u", "L_ft_m"]))
    b = ft[(ft["width"] == 6) & (ft["ft_spec_var"] == 0.0)]
    print("\nh = 6, ft_spec_var = 0, rotation (radians):\n")
    print(md(b, ["ft_rotation", "L_ret_u", "L_ret_m", "dL_ret", "latent"], {"ft_rotation": ".4f"}))
    print(f"\nh = 8: max |Delta L_ret| over the grid = {ft.loc[ft['width'] == 8, 'dL_ret'].abs().max():.2e}; "
          f"latent cells at h = 6: {int(ft.loc[ft['width'] == 6, 'latent'].sum())}/{int((ft['width'] == 6).sum())}")
    rel = rnd["dL_ret"].abs() / rnd["L_ret_u"]
    print(f"\nrandom search, h >= n ({len(rnd)} cases): all stopped by the rule: "
          f"{bool(((rnd['stop_u'] == 'rule') & (rnd['stop_m'] == 'rule')).all())}; max |Delta L_im| = "
          f"{rnd['dL_im'].abs().max():.1e}; max |Delta L_ret|/L_ret = {rel.max():.1e} "
          f"(depth 2: {rel[rnd['depth'] == 2].max():.1e}, depth 3: {rel[rnd['depth'] == 3].max():.1e}); latent cells: "
          f"{int(rnd['latent'].sum())}")
    res["ft"] = {"h8_max_abs_dL_ret": float(ft.loc[ft["width"] == 8, "dL_ret"].abs().max()),
                 "rotation0": a.to_dict("records"), "h6_rotation": b.to_dict("records")}
    res["random"] = {"cases": len(rnd), "max_rel_dL_ret": float(rel.max()),
                     "max_rel_dL_ret_depth2": float(rel[rnd["depth"] == 2].max()),
                     "max_rel_dL_ret_depth3": float(rel[rnd["depth"] == 3].max()),
                     "max_abs_dL_im": float(rnd["dL_im"].abs().max()), "latent": int(rnd["latent"].sum())}

    # ---------------------------------------------------------------- 3. finite samples
    fin = timed("finite", study.finite_grid)
    fin.to_csv(out / "theory_latent_finite.csv", index=False)
    agg = study.finite_summary(fin)
    agg.to_csv(out / "theory_latent_finite_summary.csv", index=False)
    plots.fig_finite(agg, out / "theory_latent_finite.png")
    print("\n## 3. Finite D_post (seed means)\n")
    print(md(agg, ["protocol", "width", "N", "noise", "L_im_u", "L_im_m", "dL_im", "dL_ret", "dL_ret_sd",
                   "latent_benefit", "latent", "latent_seeds", "gnorm_max"], {"gnorm_max": ".1e"}))
    res["finite"] = agg.to_dict("records")

    # ---------------------------------------------------------------- 4. depth 3, ReLU
    dep = timed("depth3", study.depth_grid)
    dep.to_csv(out / "theory_latent_depth.csv", index=False)
    relu = timed("relu", study.relu_grid)
    relu.to_csv(out / "theory_latent_relu.csv", index=False)
    plots.fig_depth(dep, relu, out / "theory_latent_depth.png")
    print("\n## 4a. Depth 3\n")
    print(md(dep, ["width", "gap", "L_im_u", "L_im_m", "dL_im", "dL_ret", "pred_dL_ret", "latent", "stop_u", "stop_m",
                   "steps_u", "steps_m"]))
    print("\n## 4b. Two-layer ReLU\n")
    print(md(relu, ["width", "gap", "L_im_u", "L_im_m", "dL_im", "L_ret_u", "L_ret_m", "dL_ret", "L_ft_u", "L_ft_m",
                    "latent", "stop_u", "stop_m", "gnorm_u", "gnorm_m"], {"gnorm_u": ".1e", "gnorm_m": ".1e"}))
    res["depth3"] = dep.to_dict("records")
    res["relu"] = relu.to_dict("records")

    # ---------------------------------------------------------------- 5. wd / reg
    dec = timed("decay", study.decay_grid)
    dec.to_csv(out / "theory_latent_decay.csv", index=False)
    plots.fig_decay(dec, out / "theory_latent_decay.png")
    print("\n## 5. Weight decay / theta_pre regulariser (gap 0, post to convergence)\n")
    print(md(dec, ["knob", "width", "value", "L_im_u", "L_im_m", "dL_im", "pred_dL_im", "dL_ret", "pred_dL_ret",
                   "latent_benefit", "latent", "gnorm_u", "gnorm_m"], {"gnorm_u": ".1e", "gnorm_m": ".1e"}))
    h8 = dec[dec["width"] == 8]
    print(f"\nh = 8: max latent benefit (Delta L_im - Delta L_ret) over wd and reg = {h8['latent_benefit'].max():.2e}")
    print("\nh = 8, reg: L_im mixed / L_im unmixed, simulation vs slot model (independent of reg):\n")
    rr = []
    for _, r in h8[(h8["knob"] == "reg") & (h8["value"] > 0)].iterrows():
        cu = witness_config(width=8, post={**study.POST_CONVERGED, "reg": float(r["value"])})
        p = predict_pair(cu.with_(pre={"mix_fraction": study.ALPHA}), cu)
        rr.append({"reg": r["value"], "ratio (simulation)": r["L_im_m"] / r["L_im_u"],
                   "ratio (slot model)": p["L_im_mixed"] / p["L_im_unmixed"], "latent_benefit": r["latent_benefit"]})
    rdf = pd.DataFrame(rr)
    print(md(rdf, list(rdf.columns)))
    res["reg_h8_ratio"] = rr
    res["decay"] = dec.to_dict("records")

    # ---------------------------------------------------------------- plots of the headline
    plots.fig_bottleneck(bn, out / "theory_latent_bottleneck.png")

    # ---------------------------------------------------------------- closed-form ingredients
    print("\n## Closed-form ingredients (depth 2, t_ft = 2)\n")
    t_ft = witness_config().ft.lr * witness_config().ft.steps
    sc, _ = pre_scores(witness_config(alpha=study.ALPHA))
    print(f"- pretraining scores sxy^2/lam at alpha = {study.ALPHA:g} (witness): inc0 {sc[4]:.4g}, inc1 {sc[5]:.4g}, "
          f"spec {sc[6]:.4g}, {sc[7]:.4g}")
    for s0, tgt, var in ((3.0, 0.2, 1.0), (3.0, 0.0, 1.0), (3.0, 0.0, 0.1)):
        print(f"- s(t_ft) from {s0:g} to target {tgt:g} at D_ft variance {var:g}: {mode_flow(s0, tgt, var, t_ft):.4f}")

    # ---------------------------------------------------------------- check rows
    rows = timed("latent_check", lcheck.latent_check)
    print("\n## latent_check rows\n")
    for r in rows:
        print(f"- {r['id']}: {r['status']}: {r['evidence']}")
    res["check_rows"] = [{k: r[k] for k in ("id", "claim", "source", "side", "status", "evidence")} for r in rows]
    res["timings_s"] = dict(TIMES, total=round(time.perf_counter() - T0, 1))
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    tmp = out / "theory_latent_results.json.tmp"
    tmp.write_text(json.dumps(_clean(res), indent=1))
    tmp.replace(out / "theory_latent_results.json")
    print(f"\ntimings (s): {res['timings_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
