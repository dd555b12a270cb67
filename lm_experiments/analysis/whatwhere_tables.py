"""The item tables of :mod:`lm_experiments.analysis.whatwhere`: correctness from raw item values,
thresholds, transitions per checkpoint pair and family, seed maps with Student-t intervals,
agreement across seeds and early exposure's protection (docs/whatwhere.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lm_experiments.analysis import items as it

RATE_METRICS = ("forgetting", "backward_transfer", "forgetting_relative", "backward_transfer_relative",
                "forgetting_chance_adjusted", "backward_transfer_chance_adjusted", "acc_before", "acc_after")
RUN_KEYS = ("pipeline", "method", "mix_fraction", "compute_matched", "seed", "ft_lr", "run_id", "upstream_id")


def correctness(raw: dict[str, np.ndarray], tau: dict[str, float]) -> dict[str, np.ndarray]:
    """Item sets (bool) from raw values: k-way ``mc``, ``em``, and ``doc`` / ``block`` at the thresholds."""
    out = {}
    for key, v in raw.items():
        role, what = key.split(".")
        if what in ("mc", "em"):
            out[key] = np.asarray(v, dtype=bool)
        elif what in ("doc_acc", "block_acc", "answer_acc"):
            unit = what.removesuffix("_acc")
            out[f"{role}.{unit}"] = np.asarray(v) > tau[f"{role}.{unit}"]
    return out


def thresholds(raw: list[dict[str, np.ndarray]], given: float | None = None) -> dict[str, float]:
    """tau per per-document / per-block set (an item is correct when its accuracy is
    strictly above tau): ``given``, else the median of the accuracies of every item under
    every checkpoint evaluated (theta_pre, theta_post, theta_ft pooled), so about half of
    all (item, checkpoint) pairs count as correct and the bar is the same before and after."""
    keys = {k for r in raw for k in r if k.endswith(("doc_acc", "block_acc", "answer_acc"))}
    out = {}
    for k in sorted(keys):
        role, what = k.split(".")
        out[f"{role}.{what.removesuffix('_acc')}"] = (float(given) if given is not None else
                                                      float(np.median(np.concatenate([r[k] for r in raw if k in r]))))
    return out


def transition_rows(res: Any, corr: dict[str, dict[str, np.ndarray]], suite: dict[str, Any],
                    k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, fam_rows = [], []
    seen_up = set()
    for rid, r in sorted(res.ft.items()):
        base = {c: r.get(c) for c in RUN_KEYS}
        base["pipeline"] = res.pipeline
        pairs = [("post->ft", f"post:{r['upstream_id']}", f"ft:{rid}", r.get("ft_lr"))]
        if r["upstream_id"] not in seen_up:
            seen_up.add(r["upstream_id"])
            pairs.append(("pre->post", f"pre:{r['pre_id']}", f"post:{r['upstream_id']}", float("nan")))
        for pair, kb, ka, lr in pairs:
            if kb not in corr or ka not in corr:
                continue
            for s in corr[kb]:
                kk = k if s.endswith(".mc") else None
                m = it.item_metrics(corr[kb][s], corr[ka][s], k=kk)
                rows.append({**base, "ft_lr": lr, "run_id": rid if pair == "post->ft" else "", "pair": pair,
                             "set": s, "k": kk or 0, **m})
                role = s.split(".")[0]
                if pair == "post->ft" and suite[role].kind == "instruction":
                    fams = suite[role].mc.families()[:len(corr[kb][s])]
                    for f in sorted(set(fams)):
                        sel = fams == f
                        fm = it.item_metrics(corr[kb][s][sel], corr[ka][s][sel], k=kk)
                        fam_rows.append({**base, "pair": pair, "set": s, "family": f, "k": kk or 0, **fm})
    return rows, fam_rows


GROUP_KEYS = ["pipeline", "method", "mix_fraction", "compute_matched", "ft_lr", "pair", "set"]


def seed_map(df: pd.DataFrame, group: list[str], metrics: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Mean over seeds with a Student-t 95% interval, per group (NaN groups kept)."""
    from early_exposure.stats import t_interval

    out = []
    for key, g in df.groupby(group, dropna=False, sort=True):
        row = dict(zip(group, key))
        row["n_seeds"] = int(g["seed"].nunique())
        row["n_items"] = float(g["n"].mean()) if "n" in g else float("nan")
        for m in metrics:
            if m not in g:
                continue
            iv = t_interval(list(g.groupby("seed")[m].mean()))
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = iv.point, iv.lo, iv.hi
        out.append(row)
    return pd.DataFrame(out)


def agreement_rows(res: Any, corr: dict[str, dict[str, np.ndarray]]) -> tuple[list[dict], list[dict]]:
    """Transitions holding in every seed per arm, and early exposure's protection per arm pair."""
    arms: dict[tuple, dict[int, str]] = {}
    for rid, r in res.ft.items():
        key = (r["method"], float(r["mix_fraction"]), bool(r["compute_matched"]), float(r["ft_lr"]))
        arms.setdefault(key, {})[int(r["seed"])] = rid
    agree, protect = [], []
    for (method, lam, cm, lr), by_seed in sorted(arms.items()):
        seeds = sorted(by_seed)
        for s in corr.get(f"ft:{by_seed[seeds[0]]}", {}):
            b = np.stack([corr[f"post:{res.ft[by_seed[x]]['upstream_id']}"][s] for x in seeds])
            a = np.stack([corr[f"ft:{by_seed[x]}"][s] for x in seeds])
            agree.append({"pipeline": res.pipeline, "method": method, "mix_fraction": lam, "compute_matched": cm,
                          "ft_lr": lr, "pair": "post->ft", "set": s, **it.agreement(b, a)})
    for (method, lam, cm, lr), by_seed in sorted(arms.items()):
        if cm or not method.startswith("unmixed"):
            continue
        twin = [key for key in arms if key[0] == "mixed" + method[len("unmixed"):] and not key[2] and key[3] == lr]
        for tkey in twin:
            seeds = sorted(set(by_seed) & set(arms[tkey]))
            if not seeds:
                continue
            for s in corr.get(f"ft:{by_seed[seeds[0]]}", {}):
                per = []
                for x in seeds:
                    ru, rm = by_seed[x], arms[tkey][x]
                    fu = corr[f"post:{res.ft[ru]['upstream_id']}"][s] & ~corr[f"ft:{ru}"][s]
                    km = corr[f"post:{res.ft[rm]['upstream_id']}"][s] & corr[f"ft:{rm}"][s]
                    per.append((fu, km, fu & km))
                fu_all = np.all([p[0] for p in per], axis=0)
                prot_all = fu_all & np.all([p[1] for p in per], axis=0)
                jac = []
                for i in range(len(per)):
                    for j in range(i + 1, len(per)):
                        u = (per[i][2] | per[j][2]).sum()
                        jac.append((per[i][2] & per[j][2]).sum() / u if u else float("nan"))
                protect.append({"pipeline": res.pipeline, "unmixed_arm": method, "mixed_arm": tkey[0],
                                "mix_fraction": tkey[1], "ft_lr": lr, "set": s, "seeds": len(seeds),
                                "n": int(len(per[0][0])),
                                "forgotten_unmixed_per_seed": float(np.mean([p[0].sum() for p in per])),
                                "protected_per_seed": float(np.mean([p[2].sum() for p in per])),
                                "forgotten_unmixed_all_seeds": int(fu_all.sum()),
                                "protected_all_seeds": int(prot_all.sum()),
                                "protected_jaccard_across_seeds": float(np.nanmean(jac)) if jac and
                                np.isfinite(jac).any() else float("nan")})
    return agree, protect
