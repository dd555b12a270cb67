"""Statistics of the what / where rows (paper_checks.checks_beyond), kept apart so each is
pinned by a hand-computed test.

- :func:`same_items_test`: do early exposure's protected items (forgotten by the unmixed arm,
  kept by the mixed arm, 1->0 vs 1->1) recur across seeds beyond what the items themselves
  explain? Statistic: the mean Jaccard overlap of the per-seed protected sets over seed
  pairs. Null: the arm labels are exchangeable within each (item, seed) -- swapping them
  turns "unmixed forgets, mixed keeps" into "mixed forgets, unmixed keeps" -- so items that
  flip under fine-tuning in both arms, or are easy / hard in both, stay so; the old null
  p/(2-p) treated all items as interchangeable. p = share of label permutations whose
  overlap is at least the observed one (all 2^(seeds x items) when at most 16, else
  ``n_perm`` random ones, counting the observed: (1 + hits) / (1 + n_perm)); a permutation
  whose protected sets are all empty (overlap undefined) counts as not reaching it. The
  interval is a percentile bootstrap over items (the same item draw in every seed).
- :func:`rollback_units`: per rollback unit the paired (mixed - unmixed) share of the L_ret
  increase undone, its t-interval, the t-test p against the stated minimum effect
  ``MIN_ROLLBACK_SHARE`` (on the side of the estimate) and Holm's adjustment over the units.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from early_exposure.stats import holm, t_interval, t_test_p

#: A rollback unit "differs" only when early exposure changes the share of the L_ret increase
#: it undoes by at least 5 percentage points: a unit moving it less does not locate where
#: forgetting happens (e.g. a norm layer's +0.0015).
MIN_ROLLBACK_SHARE = 0.05


def mean_pairwise_jaccard(sets: np.ndarray) -> float:
    """Mean Jaccard overlap over seed pairs of the rows of bool (seeds, items); pairs whose
    union is empty are left out; NaN when every pair is."""
    vals = []
    for i, j in itertools.combinations(range(len(sets)), 2):
        u = int((sets[i] | sets[j]).sum())
        if u:
            vals.append(int((sets[i] & sets[j]).sum()) / u)
    return float(np.mean(vals)) if vals else float("nan")


def same_items_test(post_u: np.ndarray, ft_u: np.ndarray, post_m: np.ndarray, ft_m: np.ndarray, *,
                    n_perm: int = 2000, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """bool (seeds, items) correctness of each arm after post-training and after fine-tuning
    -> {"jaccard", "p", "exact", "null_mean", "null_q95", "lo", "hi", "n_perm", "protected_per_seed"}."""
    pu, fu_, pm, fm_ = (np.asarray(a, dtype=bool) for a in (post_u, ft_u, post_m, ft_m))
    prot = pu & ~fu_ & pm & fm_            # unmixed forgets, mixed keeps
    swap = pm & ~fm_ & pu & fu_            # the same with the labels exchanged
    obs = mean_pairwise_jaccard(prot)
    s, n = prot.shape
    rng = np.random.default_rng(seed)
    exact = s * n <= 16
    if exact:
        patterns = ((np.arange(2 ** (s * n))[:, None] >> np.arange(s * n)) & 1).astype(bool).reshape(-1, s, n)
    else:
        patterns = rng.random((n_perm, s, n)) < 0.5
    null = np.array([mean_pairwise_jaccard(np.where(w, swap, prot)) for w in patterns])
    hits = int(np.sum(np.nan_to_num(null, nan=-1.0) >= obs - 1e-12)) if np.isfinite(obs) else 0
    p = hits / len(null) if exact else (1 + hits) / (1 + len(null))
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = mean_pairwise_jaccard(prot[:, idx])
        if np.isfinite(v):
            boot.append(v)
    a = (1 - level) / 2
    lo, hi = (np.quantile(boot, [a, 1 - a]).tolist() if len(boot) >= 2 else [float("nan")] * 2)
    fin = null[np.isfinite(null)]
    return {"jaccard": obs, "p": float(p) if np.isfinite(obs) else float("nan"), "exact": exact,
            "n_perm": int(len(null)), "null_mean": float(fin.mean()) if len(fin) else float("nan"),
            "null_q95": float(np.quantile(fin, 0.95)) if len(fin) else float("nan"), "lo": lo, "hi": hi,
            "protected_per_seed": prot.sum(axis=1).tolist(), "items": int(n), "seeds": int(s)}


def rollback_units(per_unit: dict[str, list[float]], *, level: float = 0.95,
                   min_share: float = MIN_ROLLBACK_SHARE) -> tuple[str, dict[str, dict[str, Any]]]:
    """{unit: per-seed (mixed - unmixed) shares} -> (status, {unit: interval, p, p_holm, differs}).

    p per unit: the two-sided t-test against +min_share or -min_share (the side of the
    estimate), so p < alpha exactly when the interval clears the bar on that side; Holm over
    the units. A unit differs when its Holm-adjusted p < alpha and its interval clears the bar.
    PASS: some unit differs; FAIL: every unit's interval lies inside (-min_share, min_share);
    INCONCLUSIVE otherwise (and for units with fewer than two seeds)."""
    alpha = 1 - level
    out: dict[str, dict[str, Any]] = {}
    for u, vals in per_unit.items():
        iv = t_interval(vals, level=level)
        bar = min_share if iv.point >= 0 else -min_share
        out[u] = {"interval": iv.as_dict(), "p": t_test_p(vals, null=bar), "bar": bar, "n_seeds": iv.n_valid}
    adj = holm([r["p"] for r in out.values()])
    for r, pa in zip(out.values(), adj):
        iv = r["interval"]
        clears = np.isfinite(iv["lo"]) and (iv["lo"] > min_share or iv["hi"] < -min_share)
        r.update(p_holm=pa, differs=bool(clears and np.isfinite(pa) and pa < alpha))
    if any(r["differs"] for r in out.values()):
        return "PASS", out
    if out and all(np.isfinite(r["interval"]["lo"]) and -min_share < r["interval"]["lo"]
                   and r["interval"]["hi"] < min_share for r in out.values()):
        return "FAIL", out
    return "INCONCLUSIVE", out
