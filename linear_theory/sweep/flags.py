"""Closed-form assumption flags of Appendix C for every sweep point (vectorised over alpha).

alpha is the paper's symbol for the point's ``stages.pre.mix_fraction``.

These are the inequalities as printed, evaluated directly from the task values:

- ``C3_C4`` (Definitions C.3 and C.4 with the downstream condition of C.1): there is a
  c_mis with sigma_post_i - sigma_pre_i > c_mis, sigma_post_i - sigma_ft_i > c_mis for every
  inconsistent i, beta < c_mis / 2 and beta > 0; i.e.
  min_i min(sigma_post_i - sigma_pre_i, sigma_post_i - sigma_ft_i) > 2 beta > 0.
- ``C5`` (Assumption C.5): every invariant value exceeds every non-invariant value of
  Sigma_pre and of Sigma_post: min sigma_inv > max(sigma_inc_pre, 0) and
  min sigma_inv > max(sigma_inc_post, beta).
- ``C6`` (Assumption C.6, at the point's own alpha rather than "there exists alpha"):
  alpha beta > (1 - alpha) sigma_pre_i + alpha sigma_post_i for every inconsistent i.

An empty block makes its condition vacuous (True). Note that ``C3_C4`` and ``C6`` exclude each
other for beta > 0: C.6 needs alpha beta > alpha sigma_post_i + (1 - alpha) sigma_pre_i, hence
beta > sigma_post_i >= c_mis + sigma_pre_i > 2 beta. So ``assumptions_hold`` is False
everywhere; heatmaps outline C.5 & C.6 instead.
"""

from __future__ import annotations

import numpy as np

from linear_theory.config import TaskConfig

__all__ = ["assumption_flags"]


def assumption_flags(task: TaskConfig, alpha: np.ndarray) -> dict[str, np.ndarray]:
    """Flags ``C3_C4``, ``C5``, ``C6``, ``C5_C6_hold``, ``assumptions_hold``: alpha (P,) -> bool (P,)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    inv = np.asarray(task.sigma_inv, dtype=np.float64)
    pre = np.asarray(task.sigma_inc_pre, dtype=np.float64)
    post = np.asarray(task.sigma_inc_post, dtype=np.float64)
    ft = np.asarray(task.sigma_inc_ft, dtype=np.float64)
    beta = float(task.beta)
    if task.k > 0:
        gap = float(min(np.min(post - pre), np.min(post - ft)))
        c34 = gap > 2.0 * beta and beta > 0.0
        c6 = np.all(alpha[:, None] * beta > (1.0 - alpha[:, None]) * pre[None, :] + alpha[:, None] * post[None, :],
                    axis=1)
    else:
        c34 = True
        c6 = np.ones(alpha.shape, dtype=bool)
    if inv.size and task.k > 0:
        lo = float(np.min(inv))
        c5 = lo > max(float(np.max(pre)), 0.0) and lo > max(float(np.max(post)), beta)
    else:
        c5 = True
    full = np.ones(alpha.shape, dtype=bool)
    out = {"C3_C4": full & c34, "C5": full & c5, "C6": np.asarray(c6, dtype=bool)}
    out["C5_C6_hold"] = out["C5"] & out["C6"]  # the pretraining assumptions of Theorem C.10
    out["assumptions_hold"] = out["C3_C4"] & out["C5"] & out["C6"]
    return out
