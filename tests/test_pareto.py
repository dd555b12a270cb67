"""early_exposure.pareto against hand-computed cases and a Monte Carlo estimate."""

import numpy as np
import pytest

from early_exposure.pareto import (
    common_reference, hypervolume, loss_gap_at_matched_x, pareto_front, pareto_mask,
)


def test_pareto_mask_hand_case():
    pts = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5], [1, 3], [np.nan, 0.0], [4, 4]])
    # (2.5, 2.5) is dominated by (2, 2); the duplicate (1, 3) is kept once; NaN is never on it
    assert pareto_mask(pts).tolist() == [True, True, True, False, False, False, False]
    np.testing.assert_array_equal(pareto_front(pts[::-1]), [[1, 3], [2, 2], [3, 1]])


def test_hypervolume_hand_case():
    # staircase: [1,4]x[3,4] U [2,4]x[2,4] U [3,4]x[1,4] = 3 + 2 + 1 (by horizontal strips)
    pts = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5]])
    assert hypervolume(pts, [4, 4]) == pytest.approx(6.0, abs=1e-12)
    # a point outside the reference box adds nothing; an empty set has zero area
    assert hypervolume(np.vstack([pts, [[5.0, 0.5]]]), [4, 4]) == pytest.approx(6.0, abs=1e-12)
    assert hypervolume(np.zeros((0, 2)), [4, 4]) == 0.0
    # single box
    assert hypervolume([[0.5, 1.5]], [2, 2]) == pytest.approx(1.5 * 0.5, abs=1e-12)


def test_hypervolume_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(12, 2))
    ref = np.array([1.1, 1.2])
    m = 200_000
    u = rng.uniform([0, 0], ref, size=(m, 2))
    dominated = (pts[None, :, 0] <= u[:, None, 0]) & (pts[None, :, 1] <= u[:, None, 1])
    frac = dominated.any(axis=1).mean()
    mc = frac * ref.prod()
    se = np.sqrt(frac * (1 - frac) / m) * ref.prod()
    assert abs(hypervolume(pts, ref) - mc) < 4 * se


def test_common_reference_is_worse_than_every_point():
    a = np.array([[1.0, 5.0], [2.0, np.nan]])
    b = np.array([[3.0, 2.0]])
    ref = common_reference([a, b], margin=0.1)
    np.testing.assert_allclose(ref, [3.0 + 0.2, 5.0 + 0.3])


def test_loss_gap_hand_case():
    ref_front = np.array([[1.0, 4.0], [3.0, 2.0]])          # y = 5 - x on [1, 3]
    cand = np.array([[2.0, 2.0], [4.0, 0.0], [3.0, 5.0]])   # y = 4 - x on [2, 4]; (3,5) dominated
    g = loss_gap_at_matched_x(ref_front, cand)
    assert (g["x_lo"], g["x_hi"]) == (2.0, 3.0)
    assert g["gap"] == pytest.approx(1.0, abs=1e-12)
    # reversed roles: negative gap; disjoint ranges: NaN
    assert loss_gap_at_matched_x(cand, ref_front)["gap"] == pytest.approx(-1.0, abs=1e-12)
    assert np.isnan(loss_gap_at_matched_x([[0, 1]], [[2, 0]])["gap"])


def test_front_box_hand_case():
    from early_exposure.pareto import front_box

    a = np.array([[1.0, 4.0], [3.0, 2.0], [9.0, 9.0]])   # (9, 9) is dominated: not in the box
    b = np.array([[2.0, 3.0]])
    lo, span = front_box([a, b], min_frac=0.05)
    np.testing.assert_allclose(lo, [1.0, 2.0])
    np.testing.assert_allclose(span, [2.0, 2.0])
    # nearly coincident single-point fronts: each span is floored at 5% of all points' extent
    lo, span = front_box([[[1.0, 1.0], [21.0, 11.0]], [[1.0, 1.0]]], min_frac=0.05)
    np.testing.assert_allclose(span, [1.0, 0.5])
