"""Sample-wise forgetting and backward transfer between two checkpoints.

Harmon et al. 2025, "Mapping Post-Training Forgetting in Language Models at Scale"
(arXiv 2510.17776): compare
per-example correctness before (b) and after (a) a training stage. A 1->0 transition
(correct before, wrong after) is forgetting; a 0->1 transition is backward transfer.
Task averages hide both because they cancel.

With n examples, acc_b and acc_a the accuracies before and after:

- absolute forgetting      F   = #(1->0) / n
- relative forgetting      F_r = #(1->0) / (n * acc_b)           (NaN when acc_b = 0)
- backward transfer        B   = #(0->1) / n
- relative backward transfer B_r = #(0->1) / (n * (1 - acc_b))   (NaN when acc_b = 1)
- chance-adjusted (k-way multiple choice), as in the paper:
  F_c = max(0, F - (1 - acc_b)(1 - acc_a) / (k - 1)).
  The same correction is applied to B (B_c): under uniform guessing on the examples the
  model does not know, a 1->0 flip and a 0->1 flip are equally likely, so both counts carry
  the same expected chance contribution.

In this project "correct" is top-1 next-token correctness on the D_post evaluation
tokens (k = vocabulary size, so the chance terms are tiny; they matter for small k).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _as_bool(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1, got values outside {{0, 1}}")
        a = a.astype(bool)
    return a.reshape(-1)


def transition_counts(before: ArrayLike, after: ArrayLike) -> dict[str, int]:
    """Counts of the four transitions ``"1->1", "1->0", "0->1", "0->0"`` between (n,) arrays."""
    b, a = _as_bool(before, "before"), _as_bool(after, "after")
    if b.shape != a.shape:
        raise ValueError(f"before and after must have the same length, got {b.size} and {a.size}")
    return {
        "1->1": int((b & a).sum()), "1->0": int((b & ~a).sum()),
        "0->1": int((~b & a).sum()), "0->0": int((~b & ~a).sum()),
    }


def forgetting_metrics(before: ArrayLike, after: ArrayLike, k: int | None = None) -> dict[str, float]:
    """All sample-wise metrics of the module docstring for per-example correctness arrays.

    Args:
        before: (n,) correctness before the stage (bool or 0/1).
        after: (n,) correctness after the stage, same examples in the same order.
        k: number of answer options for the chance-adjusted variants (``None``: omit them).
    """
    c = transition_counts(before, after)
    n = sum(c.values())
    if n == 0:
        raise ValueError("forgetting metrics need at least one example")
    acc_b = (c["1->1"] + c["1->0"]) / n
    acc_a = (c["1->1"] + c["0->1"]) / n
    f_abs = c["1->0"] / n
    bt_abs = c["0->1"] / n
    out = {
        "n": float(n), "acc_before": acc_b, "acc_after": acc_a,
        "forgetting": f_abs,
        "forgetting_relative": c["1->0"] / (n * acc_b) if acc_b > 0 else float("nan"),
        "backward_transfer": bt_abs,
        "backward_transfer_relative": c["0->1"] / (n * (1 - acc_b)) if acc_b < 1 else float("nan"),
    }
    if k is not None:
        if k < 2:
            raise ValueError(f"k (answer options) must be >= 2, got {k}")
        chance = (1 - acc_b) * (1 - acc_a) / (k - 1)
        out["forgetting_chance_adjusted"] = max(0.0, f_abs - chance)
        out["backward_transfer_chance_adjusted"] = max(0.0, bt_abs - chance)
    return out
