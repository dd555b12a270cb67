"""The statistical helpers of early_exposure.stats against hand calculations and closed
forms (never against values copied from the code): TOST, Holm, Benjamini-Hochberg, the
t-test p, the range-bounded interval and the seed x document bootstrap.

Student-t with 2 degrees of freedom has the closed-form CDF F(t) = 1/2 + t / (2 sqrt(2 + t^2)),
used as the independent reference below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from early_exposure.stats import (benjamini_hochberg, bounded_t_interval, holm, seed_doc_bootstrap, t_test_p,
                                  tost)


def _f2(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_tost_hand_calculation_two_df() -> None:
    # [0.01, 0.02, 0.03]: mean 0.02, sd 0.01, se 0.01 / sqrt 3; margin 0.05
    se = 0.01 / math.sqrt(3)
    t_l, t_u = (0.02 + 0.05) / se, (0.02 - 0.05) / se
    r = tost([0.01, 0.02, 0.03], 0.05, alpha=0.05)
    assert r.p_lower == pytest.approx(1 - _f2(t_l), rel=1e-9)
    assert r.p_upper == pytest.approx(_f2(t_u), rel=1e-9)      # 0.0175...
    assert r.p == pytest.approx(max(1 - _f2(t_l), _f2(t_u)))
    assert r.p < 0.05  # equivalent at 5%
    # the 90% interval: t_{0.95, 2} = 2.920 (table); inside (-0.05, 0.05) since p < 0.05
    assert r.hi == pytest.approx(0.02 + 2.920 * se, rel=1e-3) and r.lo == pytest.approx(0.02 - 2.920 * se, rel=1e-3)
    # a mean near the margin is not shown equivalent
    far = tost([0.04, 0.05, 0.06], 0.05)
    assert far.p_upper == pytest.approx(0.5) and far.p > 0.45


def test_holm_and_bh_hand_calculation() -> None:
    p = [0.01, 0.04, 0.03, 0.20]
    # Holm: sorted 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> running max 0.09, 0.20*1
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    # BH: 0.01*4/1 = 0.04, 0.03*4/2 = 0.06, 0.04*4/3 = 0.0533, 0.2*4/4 = 0.2; step-up minimum
    assert benjamini_hochberg(p) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20])
    h = holm([float("nan"), 0.01, 0.02])  # NaN left out of the family size
    assert math.isnan(h[0]) and h[1:] == pytest.approx([0.02, 0.02])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_t_test_p_closed_form() -> None:
    t = 2 / (1 / math.sqrt(3))  # [1, 2, 3]: mean 2, se 1/sqrt 3
    assert t_test_p([1.0, 2.0, 3.0]) == pytest.approx(2 * (1 - _f2(t)), rel=1e-9)
    assert math.isnan(t_test_p([1.0]))


def test_bounded_interval_respects_the_range() -> None:
    iv = bounded_t_interval([1.0, 1.2, 1.1], -1.21, 1.21)
    # unbounded: 1.1 +- 4.303 * 0.1 / sqrt 3 = [0.852, 1.348]; the upper end cut at 1.21
    assert iv.hi == 1.21 and iv.lo == pytest.approx(1.1 - 4.303 * 0.1 / math.sqrt(3), rel=1e-3)


def test_seed_doc_bootstrap_document_stage() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, 2000)  # one seed: the interval comes from the documents alone

    def stat(seeds: list[int], docs: np.ndarray) -> float:
        return float(x[docs].mean())

    iv = seed_doc_bootstrap(stat, [0], len(x), n_boot=600, seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))  # normal-theory half-width of a mean
    assert iv.point == pytest.approx(x.mean())
    assert (iv.hi - iv.lo) / 2 == pytest.approx(half, rel=0.15)
    # constant documents and equal seeds: nothing to resample
    flat = seed_doc_bootstrap(lambda s, d: 1.0 + 0 * len(d), [0, 1, 2], 50, n_boot=50)
    assert flat.lo == flat.hi == flat.point == 1.0


def test_t_test_p_equals_scipy() -> None:
    from scipy import stats

    x = [0.3, -0.1, 0.25, 0.4, 0.05]
    assert t_test_p(x, null=0.04) == pytest.approx(stats.ttest_1samp(x, 0.04).pvalue, rel=1e-9)


# ---- the scipy-backed helpers against the hand-written formulas they replaced --------------
def _enumerated_sign_flip_p(v: np.ndarray) -> float:
    """The share of the 2^n sign patterns whose |mean| reaches the observed one (the former code)."""
    n = len(v)
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    means = np.abs((signs * v).mean(axis=1))
    obs = abs(v.mean())
    return float(np.mean(means >= obs - 1e-12 * max(obs, 1.0)))


def _samples(n_each: int = 150):
    rng = np.random.default_rng(11)
    for i in range(n_each):
        n = 2 + i % 10
        yield rng.normal(rng.normal(), 1.0, n)                       # continuous
        yield rng.integers(-3, 4, n).astype(float)                     # many ties (equal |mean| patterns)
        yield np.round(rng.normal(0.1, 0.2, n), 2)                     # rounded rates, like per-seed gaps


def test_sign_flip_p_is_the_full_enumeration() -> None:
    from early_exposure.stats import sign_flip_p

    for v in _samples():
        assert sign_flip_p(v) == _enumerated_sign_flip_p(v), v
    assert sign_flip_p([0.3]) == 1.0 and sign_flip_p([0.0, 0.0, 0.0]) == 1.0 and math.isnan(sign_flip_p([]))
    assert sign_flip_p([0.1, 0.2, 0.15, 0.3, 0.25]) == 2 / 32  # 5 seeds, all positive: the smallest p


def test_sign_flip_p_beyond_exact_enumeration_is_seeded_monte_carlo() -> None:
    from early_exposure.stats import EXACT_SIGN_FLIP_MAX_N, sign_flip_p

    v = np.random.default_rng(2).normal(0.25, 1.0, EXACT_SIGN_FLIP_MAX_N + 4)
    p = sign_flip_p(v, n_mc=4000, seed=1)
    assert p == sign_flip_p(v, n_mc=4000, seed=1)                # reproducible
    assert p == pytest.approx(_enumerated_sign_flip_p(v), abs=0.03)  # 2^20 patterns, enumerated here


def test_t_interval_and_t_test_p_match_the_closed_forms() -> None:
    from scipy import stats

    from early_exposure.stats import t_interval

    for v in _samples(60):
        n, m, sd = len(v), v.mean(), v.std(ddof=1)
        iv = t_interval(v, level=0.9)
        if sd == 0:
            assert iv.lo == iv.hi == iv.point == m
            continue
        half = stats.t.ppf(0.95, n - 1) * sd / math.sqrt(n)
        assert iv.lo == pytest.approx(m - half, rel=1e-12, abs=1e-14)
        assert iv.hi == pytest.approx(m + half, rel=1e-12, abs=1e-14)
        t = (m - 0.05) / (sd / math.sqrt(n))
        assert t_test_p(v, null=0.05) == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-10, abs=1e-15)
    flat = t_interval([0.5, 0.5, 0.5])  # no spread: the mean itself, no warning (the suite errors on one)
    assert (flat.lo, flat.hi, flat.point) == (0.5, 0.5, 0.5)


def test_slope_matches_the_centred_least_squares_formula() -> None:
    from early_exposure.stats import slope

    rng = np.random.default_rng(5)
    for _ in range(100):
        x = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], 6)
        y = rng.normal(size=6)
        xc = x - x.mean()
        want = (xc * (y - y.mean())).sum() / (xc * xc).sum() if len(set(x)) > 1 else float("nan")
        got = slope(x, y)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12, abs=1e-14)
    assert slope(np.array([0.0, 1.0, np.nan, 2.0]), np.array([1.0, 3.0, 7.0, 5.0])) == pytest.approx(2.0)
    assert math.isnan(slope(np.array([1.0, 1.0]), np.array([0.0, 2.0])))
