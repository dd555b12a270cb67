"""Intervals and tests over independent units (seeds), shared by both halves.

Every claim the checks judge, and every rate the what / where tables summarise, is a
statistic computed on each seed alone; :func:`t_interval` gives its mean with the
two-sided Student-t interval over seeds (``scipy.stats.ttest_1samp(...).confidence_interval``)
and :func:`sign_flip_p` the exact paired sign-flip p of mean zero
(``scipy.stats.permutation_test``); :func:`slope` is the least-squares slope in lambda
(``scipy.stats.linregress``).
Also: :func:`t_test_p` (the t-test matching the interval), :func:`bounded_t_interval` (the
interval cut to the statistic's attainable range), :func:`tost` (equivalence: two one-sided
t-tests), :func:`holm` and :func:`benjamini_hochberg` (multiplicity), and
:func:`seed_doc_bootstrap` (test-set sampling: seeds and documents resampled together).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

#: sign flips are enumerated exactly up to this many values (2^16 patterns), sampled beyond
EXACT_SIGN_FLIP_MAX_N = 16


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
    if len(np.unique(x)) < 2:  # linregress raises on a constant x
        return float("nan")
    return float(sps.linregress(x, y).slope)


def t_interval(values: Sequence[float], *, level: float = 0.95) -> Interval:
    """Mean of ``values`` (one per independent unit, e.g. a per-seed paired difference) with
    the two-sided Student-t interval mean +- t_{(1+level)/2, n-1} * sd / sqrt(n).

    Exact under normal per-unit values, and honest with few units (3-5 seeds), where a
    percentile bootstrap degenerates to a handful of distinct resamples. Non-finite values
    are dropped; with fewer than two left the interval is NaN. ``n_boot`` is 0 (no
    resampling) and ``n_valid`` the number of units used.
    """
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    m = float(v.mean())
    if n < 2:
        return Interval(m, float("nan"), float("nan"), 0, n)
    if _no_spread(v):  # scipy warns (catastrophic cancellation) and answers NaN: the mean is the answer
        return Interval(m, m, m, 0, n)
    ci = sps.ttest_1samp(v, 0.0).confidence_interval(confidence_level=level)
    return Interval(m, float(ci.low), float(ci.high), 0, n)


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)


def _no_spread(v: np.ndarray) -> bool:
    """All values equal up to rounding: sd <= 1e-12 of the values' own magnitude (relative, so
    that values of any scale with a real spread, e.g. 1e-30 +- 1e-30, keep their interval)."""
    return float(v.std(ddof=1)) <= 1e-12 * float(np.max(np.abs(v)))


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def sign_flip_p(values: Sequence[float], *, n_mc: int = 20000, seed: int = 0) -> float:
    """Two-sided exact sign-flip (paired permutation) test of mean zero
    (``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on one sample): the
    share of the 2^n sign patterns whose |mean| is at least the observed one (the null
    distribution is symmetric, so scipy's ``2 min(P(T <= t), P(T >= t))`` is that share).
    All patterns for n <= :data:`EXACT_SIGN_FLIP_MAX_N`, ``n_mc`` random ones (seeded) beyond,
    where scipy's p is (hits + 1) / (n_mc + 1). With n values the smallest attainable p is
    2 / 2^n (0.25 for 3 seeds, 0.0625 for 5): reported beside the t-interval, it shows how
    much evidence a handful of seeds can hold."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        return float("nan")
    if n == 1:  # scipy needs two values; both patterns (+v, -v) have the observed |mean|
        return 1.0
    exact = n <= EXACT_SIGN_FLIP_MAX_N
    res = sps.permutation_test((v,), _mean, permutation_type="samples", vectorized=True, alternative="two-sided",
                               n_resamples=2**n if exact else n_mc,
                               rng=None if exact else np.random.default_rng(seed))
    return float(res.pvalue)


def t_test_p(values: Sequence[float], *, null: float = 0.0) -> float:
    """Two-sided one-sample Student-t p of mean ``null`` (as ``scipy.stats.ttest_1samp``); the
    test that matches :func:`t_interval` (the level-``L`` interval excludes ``null`` exactly
    when p < 1 - L). NaN with fewer than two finite values; 0 or 1 for zero spread."""
    v = _finite(values)
    if len(v) < 2:
        return float("nan")
    m = float(v.mean())
    if _no_spread(v):  # no spread (up to rounding): the mean is the answer
        return 0.0 if abs(m - null) > 1e-12 * max(1.0, abs(m)) else 1.0
    return float(sps.ttest_1samp(v, null).pvalue)


def bounded_t_interval(values: Sequence[float], lo: float, hi: float, *, level: float = 0.95) -> Interval:
    """:func:`t_interval` intersected with the range [lo, hi] the statistic can take (e.g. a
    normalised hypervolume difference lies in [-1.21, 1.21]): the t-interval's coverage is kept
    (the true mean lies in the range, so cutting the interval there loses none of it) and no end
    claims an impossible value."""
    iv = t_interval(values, level=level)
    if not np.isfinite(iv.lo):
        return iv
    return Interval(iv.point, max(iv.lo, lo), min(iv.hi, hi), iv.n_boot, iv.n_valid)


@dataclass(frozen=True)
class Tost:
    """Two one-sided tests of equivalence: |mean| < margin."""

    mean: float
    margin: float
    p: float          # max of the two one-sided p: equivalence shown at alpha when p < alpha
    p_lower: float    # H0: mean <= -margin
    p_upper: float    # H0: mean >= +margin
    lo: float         # the (1 - 2 alpha) t-interval: inside (-margin, margin) iff p < alpha
    hi: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "margin": self.margin, "p": self.p, "p_lower": self.p_lower,
                "p_upper": self.p_upper, "lo": self.lo, "hi": self.hi, "n": self.n}


def tost(values: Sequence[float], margin: float, *, alpha: float = 0.05) -> Tost:
    """Schuirmann's two one-sided t-tests (one sample, e.g. per-seed changes) of the
    equivalence hypothesis -margin < mean < margin: t_l = (m + margin) / se with p_lower =
    P(T_{n-1} >= t_l), t_u = (m - margin) / se with p_upper = P(T_{n-1} <= t_u), p = max of
    the two. ``lo``/``hi`` is the (1 - 2 alpha) t-interval, which lies inside (-margin, margin)
    exactly when p < alpha. NaN p with fewer than two values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    n = len(v)
    nan = float("nan")
    if n < 2:
        return Tost(float(v.mean()) if n else nan, margin, nan, nan, nan, nan, nan, n)
    m, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(n))
    if se == 0:
        pl = 0.0 if m > -margin else 1.0
        pu = 0.0 if m < margin else 1.0
        return Tost(m, margin, max(pl, pu), pl, pu, m, m, n)
    pl = float(sps.t.sf((m + margin) / se, n - 1))
    pu = float(sps.t.cdf((m - margin) / se, n - 1))
    half = float(sps.t.ppf(1 - alpha, n - 1) * se)
    return Tost(m, margin, max(pl, pu), pl, pu, m - half, m + half, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p (family-wise error): with the m finite p sorted ascending,
    p_adj(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); NaN entries stay NaN and do not count
    in m. Reject at alpha where p_adj < alpha."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p (false discovery rate): with the m finite p sorted
    ascending, q(i) = min_{j >= i} min(1, m p_(j) / j) (``scipy.stats.false_discovery_control``);
    NaN entries stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if len(idx):
        out[idx] = sps.false_discovery_control(p[idx], method="bh")
    return out.tolist()


def seed_doc_bootstrap(
    stat: Callable[[list[Any], Any], float], seeds: Sequence[Any], n_docs: int | Sequence[int], *,
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> Interval:
    """Two-stage (seed x document) percentile bootstrap of a statistic that depends on both
    the seeds and the test-set documents: each replicate draws the seeds with replacement and,
    independently, the ``n_docs`` test documents with replacement (one draw shared by every
    run, since every run is scored on the same test set), and evaluates
    ``stat(seed_list, doc_index)``. The point is ``stat(seeds, arange(n_docs))``. Several test
    sets (e.g. D_post, D_ft, D_pre): ``n_docs`` a sequence, ``doc_index`` a tuple of index
    arrays, one per test set, drawn independently. With it an
    interval carries the test-set sampling the per-seed t-interval leaves out; with 3-5 seeds
    the seed stage alone has few distinct draws, so this interval is reported beside the
    t-interval, not instead of it."""
    rng = np.random.default_rng(seed)
    seeds = list(seeds)
    multi = not isinstance(n_docs, (int, np.integer))
    sizes = [int(n) for n in n_docs] if multi else [int(n_docs)]

    def draw(full: bool) -> Any:
        idx = tuple(np.arange(n) if full else rng.integers(0, n, n) for n in sizes)
        return idx if multi else idx[0]

    point = float(stat(seeds, draw(True)))
    vals = []
    for _ in range(n_boot):
        ss = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        docs = draw(False)
        v = float(stat(ss, docs))
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < 2:
        return Interval(point, float("nan"), float("nan"), n_boot, len(vals))
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return Interval(point, float(lo), float(hi), n_boot, len(vals))
