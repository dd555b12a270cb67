"""Intervals and tests over independent units (seeds), shared by both halves.

Every claim the checks judge, and every rate the what / where tables summarise, is a
statistic computed on each seed alone; :func:`t_interval` gives its mean with the
two-sided Student-t interval over seeds and :func:`sign_flip_p` the exact paired
sign-flip (permutation) p of mean zero; :func:`slope` is the least-squares slope in lambda.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval (``n_boot`` 0: no resampling)."""

    point: float
    lo: float
    hi: float
    n_boot: int
    n_valid: int

    def as_dict(self) -> dict[str, float | int]:
        return {"point": self.point, "lo": self.lo, "hi": self.hi,
                "n_boot": self.n_boot, "n_valid": self.n_valid}


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (NaN when x has fewer than two distinct values)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def t_interval(values: Sequence[float], *, level: float = 0.95) -> Interval:
    """Mean of ``values`` (one per independent unit, e.g. a per-seed paired difference) with
    the two-sided Student-t interval mean +- t_{(1+level)/2, n-1} * sd / sqrt(n).

    Exact under normal per-unit values, and honest with few units (3-5 seeds), where a
    percentile bootstrap degenerates to a handful of distinct resamples. Non-finite values
    are dropped; with fewer than two left the interval is NaN. ``n_boot`` is 0 (no
    resampling) and ``n_valid`` the number of units used.
    """
    from scipy import stats as sps

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    m = float(v.mean())
    if n < 2:
        return Interval(m, float("nan"), float("nan"), 0, n)
    half = float(sps.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Interval(m, m - half, m + half, 0, n)


def sign_flip_p(values: Sequence[float], *, n_mc: int = 20000, seed: int = 0) -> float:
    """Two-sided exact sign-flip (paired permutation) test of mean zero: the share of the
    2^n sign patterns whose |mean| is at least the observed one (all patterns for n <= 16,
    ``n_mc`` seeded random ones beyond). With n values the smallest attainable p is 2 / 2^n
    (0.25 for 3 seeds, 0.0625 for 5): reported beside the t-interval, it shows how much
    evidence a handful of seeds can hold."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return float("nan")
    obs = abs(v.mean())
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(n_mc, n))
    means = np.abs((signs * v).mean(axis=1))
    return float(np.mean(means >= obs - 1e-12 * max(obs, 1.0)))
