"""Bootstrap confidence intervals over resampling units (seeds or upstream checkpoints).

No claim of the paper passes on a single noisy comparison: every statistic the checks
use (hypervolume difference, loss gap, slope in lambda, interior-minimum gap) comes with
a percentile bootstrap interval over the independent units that produced it. Units are
seeds when there are enough of them; the theory side's exact (noise-free) simulations
may instead resample upstream checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile bootstrap interval."""

    point: float
    lo: float
    hi: float
    n_boot: int
    n_valid: int

    def as_dict(self) -> dict[str, float | int]:
        return {"point": self.point, "lo": self.lo, "hi": self.hi,
                "n_boot": self.n_boot, "n_valid": self.n_valid}


def _percentile_interval(point: float, reps: list[float], n_boot: int, level: float) -> Interval:
    vals = np.asarray([r for r in reps if np.isfinite(r)], dtype=np.float64)
    if len(vals) < max(10, n_boot // 2) or not np.isfinite(point):
        return Interval(point, float("nan"), float("nan"), n_boot, int(len(vals)))
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return Interval(point, float(lo), float(hi), n_boot, int(len(vals)))


def bootstrap_units(
    stat: Callable[[Sequence[Hashable]], float],
    units: Sequence[Hashable],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of ``stat(units)`` when ``units`` are resampled with replacement.

    ``stat`` receives a list of units (with repeats) and returns a float (NaN allowed:
    such replicates are dropped; if more than half are NaN the interval is NaN).
    """
    units = list(units)
    point = float(stat(units))
    rng = np.random.default_rng(seed)
    reps = [float(stat([units[i] for i in rng.integers(0, len(units), len(units))]))
            for _ in range(n_boot)]
    return _percentile_interval(point, reps, n_boot, level)


def bootstrap_two_arms(
    stat: Callable[[np.ndarray, np.ndarray], float],
    arm_a: Mapping[Hashable, np.ndarray],
    arm_b: Mapping[Hashable, np.ndarray],
    *,
    paired: bool,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of ``stat(points_a, points_b)`` resampling the units of two arms.

    Each arm maps a unit (seed or upstream checkpoint) to its (m_u, 2) points. ``paired``
    resamples one list of shared units for both arms (same seeds); otherwise each arm is
    resampled independently.
    """
    def gather(arm: Mapping[Hashable, np.ndarray], keys: Sequence[Hashable]) -> np.ndarray:
        return np.concatenate([arm[k] for k in keys] + [np.zeros((0, 2))])

    ka, kb = list(arm_a), list(arm_b)
    point = float(stat(gather(arm_a, ka), gather(arm_b, kb)))
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        if paired:
            idx = rng.integers(0, len(ka), len(ka))
            sa = [ka[i] for i in idx]
            sb = sa
        else:
            sa = [ka[i] for i in rng.integers(0, len(ka), len(ka))]
            sb = [kb[i] for i in rng.integers(0, len(kb), len(kb))]
        reps.append(float(stat(gather(arm_a, sa), gather(arm_b, sb))))
    return _percentile_interval(point, reps, n_boot, level)


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
