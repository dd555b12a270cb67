"""Honest intervals with few seeds: the numbers behind the verdicts, pinned.

- The Student-t interval on a known sample (textbook critical value, not scipy's).
- The exact sign-flip test on hand examples.
- A hand-computed hypervolume case: the baseline's and the candidate's normalised areas
  against the reference point (1.1, 1.1), and the per-seed differences.
- The decision rule's false-PASS rate on null synthetic data (no true difference between
  the arms, seed-level and point-level noise) and its power on a planted effect, for claim
  (a) (frontier comparison) and claim (b) (the lambda study).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paper_checks.checks_frontier import CheckOptions, check_sec41, compare_frontiers
from early_exposure.stats import sign_flip_p, t_interval
from tests.test_checks_frontier import frontier_table
from paper_checks.synthetic import frontier_rows, lambda_rows

OPTS = CheckOptions()


def test_t_interval_known_sample() -> None:
    # [1, 2, 3, 6]: mean 3, sd sqrt(14/3) = 2.1602, se 1.0801; t_{0.975, 3} = 3.182 (table)
    iv = t_interval([1.0, 2.0, 3.0, 6.0], level=0.95)
    half = 3.182 * np.sqrt(14 / 3) / 2
    assert iv.point == 3.0 and iv.n_valid == 4
    assert (iv.lo + iv.hi) / 2 == pytest.approx(3.0)
    assert (iv.hi - iv.lo) / 2 == pytest.approx(half, rel=2e-4)  # the table value has 4 digits
    # 90%: t_{0.95, 3} = 2.353 (table)
    iv90 = t_interval([1.0, 2.0, 3.0, 6.0], level=0.9)
    assert (iv90.hi - iv90.lo) / 2 == pytest.approx(2.353 * np.sqrt(14 / 3) / 2, rel=2e-4)
    assert np.isnan(t_interval([1.0]).lo) and np.isnan(t_interval([]).point)


def test_t_interval_is_scale_free() -> None:
    """The same sample at 1e-30 of the scale has the same interval scaled (tiny values with a
    real spread are not 'equal up to rounding'; the theory's L_im changes are ~1e-31), while
    values equal up to rounding collapse to the mean."""
    base = t_interval([1.0, 2.0, 3.0, 6.0])
    tiny = t_interval([1e-30, 2e-30, 3e-30, 6e-30])
    assert tiny.lo == pytest.approx(base.lo * 1e-30, rel=1e-9) and tiny.hi == pytest.approx(base.hi * 1e-30, rel=1e-9)
    flat = t_interval([0.5, 0.5, 0.5 + 1e-17])
    assert flat.lo == flat.hi == flat.point


def test_sign_flip_hand_examples() -> None:
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25          # only all-plus and all-minus reach |mean| 2
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0625  # 2 / 32: the smallest p five seeds allow
    assert sign_flip_p([3.0, -1.0, 2.0]) == pytest.approx(4 / 8)  # |3a - b + 2c| >= 4 for 4 of 8 sign patterns


def _table(points: dict[str, list[tuple[float, float]]], seeds: list[int]) -> pd.DataFrame:
    """The same points for every seed in ``seeds``."""
    return frontier_table({method: {s: pts for s in seeds} for method, pts in points.items()})


def test_hypervolume_hand_computed() -> None:
    """Baseline front {(1, 3), (3, 1)}, candidate {(1, 2), (2, 1)} in (L_ft, L_ret). The box
    of both fronts is [1, 3]^2, so normalised: baseline (0, 1), (1, 0); candidate (0, .5),
    (.5, 0). Against (1.1, 1.1): baseline 1.1*0.1 + 0.1*1.1 - 0.1*0.1 = 0.21; candidate
    0.66 + 0.66 - 0.36 = 0.96; difference 0.75 on every seed."""
    pts = {"unmixed": [(1.0, 3.0), (3.0, 1.0)], "mixed": [(1.0, 2.0), (2.0, 1.0)]}
    _, _, d1 = compare_frontiers(_table(pts, [0]), "unmixed", "mixed", "ret_ft", "lm", OPTS)
    assert d1["hv_baseline"] == pytest.approx(0.21) and d1["hv_candidate"] == pytest.approx(0.96)
    # five seeds: the rules need >= 5 per arm since issue 22 (the per-seed values are the same)
    status, _, d3 = compare_frontiers(_table(pts, [0, 1, 2, 3, 4]), "unmixed", "mixed", "ret_ft", "lm", OPTS)
    assert list(d3["per_seed"]["hv_diff"].values()) == pytest.approx([0.75] * 5)
    assert d3["hv_diff"]["point"] == pytest.approx(0.75)
    # gap at matched L_ft over [1, 2]: baseline 3 - x ... candidate 3 - x on [1, 2]: baseline
    # y = 4 - x on [1, 3], candidate y = 3 - x on [1, 2]: gap 1 everywhere
    assert list(d3["per_seed"]["loss_gap"].values()) == pytest.approx([1.0] * 5)
    assert status == "PASS"


def _rate(make, judge, reps: int) -> float:
    return float(np.mean([judge(make(r)) == "PASS" for r in range(reps)]))


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_claim_a_false_pass_rate_on_null_data(n_seeds: int) -> None:
    """300 repetitions of a frontier table with NO difference between the arms (seed offsets
    and point noise of 0.05, i.e. the seed noise of the CPU testbed's L_ret): PASS in at most
    5% (+ a binomial margin: <= 8% at 300 repetitions)."""
    def make(r: int) -> pd.DataFrame:
        return frontier_rows("lm", "p", {"unmixed": 0.0, "mixed": 0.0}, list(range(n_seeds)), n_upstream=1,
                             ft_lrs=(1e-4, 3e-4, 1e-3), noise=0.05, rng_seed=1000 + r)

    rate = _rate(make, lambda df: compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS)[0], 300)
    assert rate <= 0.08, rate


def test_claim_a_detects_a_planted_effect() -> None:
    """The candidate's L_ret lower by 0.2 (~5% of the loss scale, the size of the measured
    CPU effect is 0.4): PASS in at least 80% of 100 repetitions with 5 seeds."""
    def make(r: int) -> pd.DataFrame:
        return frontier_rows("lm", "p", {"unmixed": 0.0, "mixed": 0.2}, list(range(5)), n_upstream=1,
                             ft_lrs=(1e-4, 3e-4, 1e-3), noise=0.05, rng_seed=2000 + r)

    rate = _rate(make, lambda df: compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS)[0], 100)
    assert rate >= 0.8, rate


def test_claim_b_false_pass_rate_and_power() -> None:
    """Claim (b) on null data (L_im and L_ret flat in lambda, point noise 0.05): PASS in at
    most 8% of 300 repetitions with 3 seeds; with L_ret falling 0.3 over lambda 0 -> 1 and L_im
    flat: PASS in at least 80% of 100 repetitions with 5 seeds. Since issue 22 (b) needs three
    lambdas and shows flatness by a TOST against a fixed 0.04-nat margin, which point noise
    0.05 leaves too wide (the 90% half-width of a 5-seed L_im change is ~0.07); the power
    half therefore uses point noise 0.01 (the rates at the measured noise are in
    tests/test_checks_calibration.py)."""
    def null(r: int) -> pd.DataFrame:
        return lambda_rows("lm", "p", [0, 1, 2], compute_matched=False, im=(2.5, 0.0), ret=(3.5, 0.0, 0.0),
                           lambdas=(0.0, 0.5, 1.0), noise=0.05, rng_seed=3000 + r)

    def planted(r: int) -> pd.DataFrame:
        return lambda_rows("lm", "p", list(range(5)), compute_matched=False, im=(2.5, 0.0), ret=(3.5, -0.3, 0.0),
                           lambdas=(0.0, 0.5, 1.0), noise=0.01, rng_seed=4000 + r)

    assert _rate(null, lambda df: check_sec41(df, "lm", OPTS)[0], 300) <= 0.08
    assert _rate(planted, lambda df: check_sec41(df, "lm", OPTS)[0], 100) >= 0.8
