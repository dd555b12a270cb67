"""Report rows "beyond the paper" from the what/where tables (docs/whatwhere.md).

:func:`beyond_checks` reads, under a results directory,

- ``lm/<preset>/whatwhere/`` (``python -m lm_experiments.analysis.whatwhere results/lm/<preset>``):
  ``transitions.csv``, ``protection.csv``, ``rollback.csv``, ``items.json``;
- ``theory/whatwhere/whatwhere.json`` (``python -m linear_theory.studies.whatwhere --out
  results/theory/whatwhere``): its ``checks`` rows, passed through,

and returns records of :func:`paper_checks.report.make_check` (source "beyond the paper
(docs/whatwhere.md)"). LM rows carry ids ``lm.<preset>.whatwhere.*``, the pipeline and
``data["baseline"] = "unmixed"``, ``data["candidate"] = "mixed"``, so
``paper_checks.regime.gate_checks`` judges them on the base arms like claim (b). Every LM
row states its interval (Student-t 95% over seeds, paired by seed) and sample size (seeds,
items). Statuses: PASS when the interval excludes 0 in the stated direction, FAIL when it
excludes 0 in the other, INCONCLUSIVE otherwise (and with fewer than two seeds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paper_checks.report import make_check, no_data
from early_exposure.stats import t_interval

SOURCE = "beyond the paper (docs/whatwhere.md)"
#: (item set, metric, plain name) of the item-level retention rows, in order
PROTECT_SETS = (("post.mc", "forgetting_chance_adjusted", "D_post k-way items, chance-adjusted"),
                ("post.answer", "forgetting", "D_post answers (token accuracy above tau)"),
                ("post.block", "forgetting", "D_post test blocks (token accuracy above tau)"),
                ("pre.block", "forgetting", "D_pre test blocks (token accuracy above tau)"))
THEORY_IDS = ("theory.whatwhere.c16_overlap", "theory.whatwhere.modes", "theory.whatwhere.rollback")


def _fmt(iv: Any) -> str:
    return (f"{iv.point:+.4f} [{iv.lo:+.4f}, {iv.hi:+.4f}]" if math.isfinite(iv.lo) else
            f"{iv.point:+.4f} (no interval)")


def _status(iv: Any, positive_is_pass: bool = True) -> str:
    if iv.n_valid < 2 or not math.isfinite(iv.lo):
        return "INCONCLUSIVE"
    if iv.lo > 0:
        return "PASS" if positive_is_pass else "FAIL"
    if iv.hi < 0:
        return "FAIL" if positive_is_pass else "PASS"
    return "INCONCLUSIVE"


def _read_csv(p: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(p) if p.is_file() else None
    except (ValueError, OSError, pd.errors.EmptyDataError):
        return None


def _paired(df: pd.DataFrame, metric: str, a: str, b: str, by: str = "seed") -> tuple[list[float], list[Any]]:
    """Per-seed ``metric`` of method ``a`` minus method ``b`` (seeds present in both)."""
    va = df[df["method"] == a].groupby(by)[metric].mean()
    vb = df[df["method"] == b].groupby(by)[metric].mean()
    common = sorted(set(va.index) & set(vb.index))
    return [float(va[s] - vb[s]) for s in common], common


def lm_rows(wdir: Path, preset: str) -> list[dict[str, Any]]:
    info = json.loads((wdir / "items.json").read_text()) if (wdir / "items.json").is_file() else {}
    pipeline = info.get("pipeline")
    base = {"baseline": "unmixed", "candidate": "mixed"}
    out: list[dict[str, Any]] = []
    trans = _read_csv(wdir / "transitions.csv")
    pid = f"lm.{preset}.whatwhere"
    if trans is None or trans.empty:
        return [no_data(f"{pid}.protect", "early exposure reduces item-level forgetting in fine-tuning", SOURCE, "lm",
                        f"{wdir / 'transitions.csv'} not found (python -m lm_experiments.analysis.whatwhere)", pipeline)]
    pf = trans[(trans["pair"] == "post->ft") & (~trans["compute_matched"].astype(bool))]
    lr = float(pf["ft_lr"].max()) if len(pf) else float("nan")
    pf = pf[np.isclose(pf["ft_lr"], lr)]
    present = [x for x in PROTECT_SETS if (pf["set"] == x[0]).any()]  # instruction or document D_post sets
    if not present:
        out.append(no_data(f"{pid}.protect", "early exposure lowers the share of items fine-tuning forgets", SOURCE,
                           "lm", "no item set of PROTECT_SETS in transitions.csv", pipeline))
    for s, metric, name in present:
        g = pf[pf["set"] == s]
        cid = f"{pid}.protect.{s}"
        claim = f"early exposure (lambda > 0) lowers the share of items fine-tuning forgets (1->0): {name}"
        diffs, seeds = _paired(g, metric, "unmixed", "mixed")
        iv = t_interval(diffs)
        n_items = int(g["n"].iloc[0])
        mu = g[g["method"] == "unmixed"][metric].mean()
        mm = g[g["method"] == "mixed"][metric].mean()
        out.append(make_check(cid, claim, SOURCE, "lm", _status(iv),
                              f"unmixed - mixed {metric} = {_fmt(iv)} (unmixed {mu:.4f}, mixed {mm:.4f}; "
                              f"{iv.n_valid} seeds paired, {n_items} items, ft lr {lr:g}, t 95%)",
                              {**base, "set": s, "metric": metric, "interval": iv.as_dict(), "per_seed": diffs,
                               "seeds": [int(x) for x in seeds], "n_items": n_items, "ft_lr": lr}, pipeline))
    prot = _read_csv(wdir / "protection.csv")
    cid = f"{pid}.same_items"
    claim = "early exposure protects the same items in every seed (the protected sets overlap beyond chance)"
    if prot is None or prot.empty:
        out.append(no_data(cid, claim, SOURCE, "lm", "protection.csv absent or empty", pipeline))
    else:
        g = prot[prot["unmixed_arm"] == "unmixed"]
        for s in ("post.answer", "post.block"):  # the D_post set of the pipeline's kind
            if (g["set"] == s).any():
                g = g[g["set"] == s]
                break
        r = g.sort_values("ft_lr").iloc[-1]
        p = float(r["protected_per_seed"]) / max(float(r["n"]), 1.0)
        chance = p / (2 - p) if p < 2 else float("nan")  # Jaccard of two independent random sets of share p
        jac = float(r["protected_jaccard_across_seeds"])
        status = ("INCONCLUSIVE" if int(r["seeds"]) < 2 or not math.isfinite(jac) else
                  "PASS" if jac > chance else "FAIL")
        out.append(make_check(cid, claim, SOURCE, "lm", status,
                              f"{r['set']}: items forgotten by unmixed and kept by mixed: "
                              f"{r['protected_per_seed']:.1f} per seed of {int(r['n'])}, "
                              f"{int(r['protected_all_seeds'])} in all {int(r['seeds'])} seeds; "
                              f"mean Jaccard across seed pairs {jac:.3f} vs {chance:.3f} for independent sets "
                              f"(ft lr {float(r['ft_lr']):g})",
                              {**base, **{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()},
                               "chance_jaccard": chance}, pipeline))
    rb = _read_csv(wdir / "rollback.csv")
    cid = f"{pid}.where"
    claim = ("where: restoring one layer to theta_post undoes a different share of the L_ret increase with "
             "early exposure")
    if rb is None or rb.empty:
        out.append(no_data(cid, claim, SOURCE, "lm", "rollback.csv absent or empty", pipeline))
        return out
    units = [u for u in dict.fromkeys(rb["unit"]) if u == "embeddings" or u == "final_norm"
             or (u.startswith("layers.") and u.count(".") == 1)]
    parts, best = [], None
    for u in units:
        g = rb[(rb["unit"] == u) & rb["method"].isin(["unmixed", "mixed"])]
        diffs, _ = _paired(g, "share_ret_undone", "mixed", "unmixed")
        iv = t_interval(diffs)
        su = g[g["method"] == "unmixed"]["share_ret_undone"].mean()
        sm = g[g["method"] == "mixed"]["share_ret_undone"].mean()
        parts.append((u, iv, su, sm))
        if best is None or (math.isfinite(iv.lo) and (iv.lo > 0 or iv.hi < 0) and abs(iv.point) > abs(best[1].point)):
            best = (u, iv)
    differs = [p for p in parts if p[1].n_valid >= 2 and math.isfinite(p[1].lo) and (p[1].lo > 0 or p[1].hi < 0)]
    status = "PASS" if differs else "INCONCLUSIVE"
    ev = "; ".join(f"{u}: unmixed {su:.3f}, mixed {sm:.3f}, mixed - unmixed {_fmt(iv)}" for u, iv, su, sm in parts)
    out.append(make_check(cid, claim, SOURCE, "lm", status,
                          f"share of the L_ret increase undone by one unit ({int(rb['seed'].nunique())} seeds paired, "
                          f"t 95%, ft lr {float(rb['ft_lr'].iloc[0]):g}): {ev}",
                          {**base, "units": {u: {"interval": iv.as_dict(), "unmixed": su, "mixed": sm}
                                             for u, iv, su, sm in parts}}, pipeline))
    worst = float(max(rb["reproduced_L_ret_diff"].max(), rb["reproduced_L_im_diff"].max()))
    out.append(make_check(f"{pid}.rollback_exact", "rolling back no unit gives theta_ft's recorded L_ret and every "
                          "unit theta_post's recorded L_im", SOURCE, "lm", "PASS" if worst <= 1e-4 else "FAIL",
                          f"max |difference| {worst:.2e} nats over {int(rb['run_id'].nunique())} runs (tolerance 1e-4)",
                          {**base, "max_diff": worst}, pipeline))
    return out


def theory_rows(results: Path) -> list[dict[str, Any]]:
    p = results / "theory" / "whatwhere" / "whatwhere.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    rows = {str(r.get("id")): r for r in (data or {}).get("checks", []) if isinstance(r, dict)}
    out = []
    for cid in THEORY_IDS:
        r = rows.get(cid)
        if r is None:
            out.append(no_data(cid, "what/where in the linear model", SOURCE, "theory",
                               f"{p} not found or without {cid!r} (python -m linear_theory.studies.whatwhere)"))
            continue
        out.append(make_check(cid, str(r["claim"]), str(r["source"]), "theory", str(r["status"]), str(r["evidence"]),
                              r.get("data") or {}))
    return out


def beyond_checks(results: Path) -> list[dict[str, Any]]:
    """Every what/where row: the theory rows, then each LM preset's."""
    results = Path(results)
    out = theory_rows(results)
    for w in sorted((results / "lm").glob("*/whatwhere")):
        out += lm_rows(w, w.parent.name)
    return out
