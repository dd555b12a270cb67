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
row states its interval (Student-t 95% over seeds, paired by seed), its t-test p (Holm-adjusted
later within the run set's family) and sample size (seeds, items). Statuses of the
item-retention rows: PASS when the interval excludes 0 in the stated direction, FAIL when it
excludes 0 in the other, INCONCLUSIVE otherwise (and with fewer than two seeds).
``same_items``: the label-permutation test of :func:`paper_checks.checks_items.same_items_test`
on the D_post test blocks rebuilt from ``runs/<id>/eval.npz`` (PASS p < 0.05; FAIL when the
observed overlap is at most the null mean; INCONCLUSIVE otherwise or without per-item data).
``where``: :func:`paper_checks.checks_items.rollback_units` (a stated minimum effect of
``MIN_ROLLBACK_SHARE`` per unit, Holm over the units). ``rollback_exact`` is a software
self-test (reported apart from the verdicts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.runs import RunTree
from early_exposure.stats import sign_flip_p, t_interval, t_test_p
from paper_checks.checks_items import MIN_ROLLBACK_SHARE, rollback_units, same_items_test
from paper_checks.report import make_check, no_data

SOURCE = "beyond the paper (docs/whatwhere.md)"
#: (item set, metric, plain name) of the item-level retention rows, in order
PROTECT_SETS = (("post.em", "forgetting", "D_post exact-match queries, held-out phrasing (a 1->0 is a lost answer)"),
                ("post.mc", "forgetting_chance_adjusted", "D_post k-way items, chance-adjusted"),
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
                               "p": t_test_p(diffs), "sign_flip_p": sign_flip_p(diffs),
                               "seeds": [int(x) for x in seeds], "n_items": n_items, "ft_lr": lr}, pipeline))
    prot = _read_csv(wdir / "protection.csv")
    cid = f"{pid}.same_items"
    claim = "early exposure protects the same items in every seed (the protected sets overlap beyond chance)"
    if prot is None or prot.empty:
        out.append(no_data(cid, claim, SOURCE, "lm", "protection.csv absent or empty", pipeline))
    else:
        out.append(_same_items(wdir, prot, trans, info, cid, claim, base, pipeline))
    rb = _read_csv(wdir / "rollback.csv")
    cid = f"{pid}.where"
    claim = ("where: restoring one layer to theta_post undoes a different share of the L_ret increase with "
             "early exposure")
    if rb is None or rb.empty:
        out.append(no_data(cid, claim, SOURCE, "lm", "rollback.csv absent or empty", pipeline))
        return out
    units = [u for u in dict.fromkeys(rb["unit"]) if u == "embeddings" or u == "final_norm"
             or (u.startswith("layers.") and u.count(".") == 1)]
    per_unit, means = {}, {}
    for u in units:
        g = rb[(rb["unit"] == u) & rb["method"].isin(["unmixed", "mixed"])]
        per_unit[u], _ = _paired(g, "share_ret_undone", "mixed", "unmixed")
        means[u] = (g[g["method"] == "unmixed"]["share_ret_undone"].mean(),
                    g[g["method"] == "mixed"]["share_ret_undone"].mean())
    status, res = rollback_units(per_unit)
    ev = "; ".join(f"{u}: unmixed {means[u][0]:.3f}, mixed {means[u][1]:.3f}, mixed - unmixed "
                   f"{_fmt(_Iv(r['interval']))} (Holm p {r['p_holm']:.3g}{', differs' if r['differs'] else ''})"
                   for u, r in res.items())
    holm_ps = [r["p_holm"] for r in res.values() if math.isfinite(r["p_holm"])]
    out.append(make_check(cid, claim, SOURCE, "lm", status,
                          f"share of the L_ret increase undone by one unit ({int(rb['seed'].nunique())} seeds paired, "
                          f"t 95%, minimum effect {MIN_ROLLBACK_SHARE} per unit, Holm over {len(res)} units, ft lr "
                          f"{float(rb['ft_lr'].iloc[0]):g}): {ev}",
                          {**base, "min_effect": MIN_ROLLBACK_SHARE, "p": min(holm_ps) if holm_ps else None,
                           "units": {u: {**r, "unmixed": means[u][0], "mixed": means[u][1]} for u, r in res.items()}},
                          pipeline))
    worst = float(max(rb["reproduced_L_ret_diff"].max(), rb["reproduced_L_im_diff"].max()))
    out.append(make_check(f"{pid}.rollback_exact", "rolling back no unit gives theta_ft's recorded L_ret and every "
                          "unit theta_post's recorded L_im", SOURCE, "lm", "PASS" if worst <= 1e-4 else "FAIL",
                          f"max |difference| {worst:.2e} nats over {int(rb['run_id'].nunique())} runs (tolerance 1e-4)",
                          {**base, "max_diff": worst}, pipeline))
    return out


class _Iv:
    def __init__(self, d: dict[str, Any]):
        self.point, self.lo, self.hi = d["point"], d["lo"], d["hi"]


def _block_items(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(after post-training, after fine-tuning) per-block accuracies of one run's D_post test
    blocks (mean top-1 correctness of each block's targets), from ``eval.npz``."""
    try:
        z = np.load(path)
        return (np.asarray(z["post_correct_stage2"], dtype=float).mean(axis=1),
                np.asarray(z["post_correct_stage3"], dtype=float).mean(axis=1))
    except (OSError, KeyError, ValueError):
        return None


def _same_items(wdir: Path, prot: pd.DataFrame, trans: pd.DataFrame, info: dict[str, Any], cid: str, claim: str,
                base: dict[str, Any], pipeline: str | None) -> dict[str, Any]:
    """The same-items row: the label-permutation test on the D_post test blocks (per-block
    items rebuilt from every run's eval.npz, tau from items.json or the pooled median)."""
    g = prot[prot["unmixed_arm"] == "unmixed"]
    g = g[g["set"] == "post.block"] if (g["set"] == "post.block").any() else g
    if g.empty:
        return no_data(cid, claim, SOURCE, "lm", "protection.csv has no unmixed vs mixed row", pipeline)
    r = g.sort_values("ft_lr").iloc[-1]
    lr = float(r["ft_lr"])
    desc_old = (f"{r['set']}: items forgotten by unmixed and kept by mixed {r['protected_per_seed']:.1f} per seed of "
                f"{int(r['n'])}, mean Jaccard across seed pairs {float(r['protected_jaccard_across_seeds']):.3f} "
                f"(whatwhere table)")
    t = trans[(trans["pair"] == "post->ft") & (~trans["compute_matched"].astype(bool))
              & np.isclose(trans["ft_lr"], lr)] if "run_id" in trans.columns else trans.iloc[0:0]
    runs = {}
    for m in ("unmixed", "mixed"):
        sub = t[t["method"] == m].drop_duplicates("seed")
        runs[m] = dict(zip(sub["seed"], sub["run_id"]))
    seeds = sorted(set(runs["unmixed"]) & set(runs["mixed"]))
    acc = {(m, s): _block_items(RunTree(wdir.parent).ft_eval(str(runs[m][s]))) for s in seeds
           for m in ("unmixed", "mixed")}
    if len(seeds) < 2 or any(v is None for v in acc.values()):
        return make_check(cid, claim, SOURCE, "lm", "INCONCLUSIVE",
                          f"no per-item outcomes for the permutation null (runs/<id>/eval.npz of {len(seeds)} paired "
                          f"seeds at ft lr {lr:g}); descriptive only: {desc_old}",
                          {**base, "ft_lr": lr, "seeds": len(seeds)}, pipeline)
    tau = (info.get("tau") or {}).get("post.block")
    if tau is None:  # whatwhere's rule: the median accuracy pooled over the checkpoints
        tau = float(np.median(np.concatenate([np.concatenate(v) for v in acc.values()])))
    arr = {k: (v[0] > tau, v[1] > tau) for k, v in acc.items()}
    stack = lambda m, i: np.stack([arr[(m, s)][i] for s in seeds])  # noqa: E731
    res = same_items_test(stack("unmixed", 0), stack("unmixed", 1), stack("mixed", 0), stack("mixed", 1))
    status = ("PASS" if res["p"] < 0.05 else "FAIL" if not res["jaccard"] > res["null_mean"] else "INCONCLUSIVE")
    return make_check(cid, claim, SOURCE, "lm", status,
                      f"D_post test blocks (accuracy > tau {tau:.3g}): protected (unmixed 1->0, mixed 1->1) "
                      f"{np.mean(res['protected_per_seed']):.1f} per seed of {res['items']}; mean Jaccard across "
                      f"{len(seeds)} seeds {res['jaccard']:.3f} [{res['lo']:.3f}, {res['hi']:.3f}] (item bootstrap) "
                      f"vs {res['null_mean']:.3f} under arm labels permuted within items (95% of the null below "
                      f"{res['null_q95']:.3f}); permutation p {res['p']:.3g} ({res['n_perm']} permutations; "
                      f"ft lr {lr:g})",
                      {**base, **res, "tau": tau, "ft_lr": lr, "interval": {"point": res["jaccard"], "lo": res["lo"],
                                                                            "hi": res["hi"]},
                       "n_seeds": len(seeds)}, pipeline)


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
