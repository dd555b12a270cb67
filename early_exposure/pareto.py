"""Pareto sets, 2D hypervolume and the loss gap at matched fine-tuning loss.

The paper compares methods by their loss *frontiers* (Section 4.3, Figure 2): the Pareto
set, under minimisation of both coordinates, of all (upstream checkpoint x fine-tuning
setting) points in the (L_ft, L_ret) view or the (L_ret, L_pre) view. This module is the
one place both halves (theory and LM) get frontiers and their quantitative comparison:

- :func:`pareto_mask` / :func:`pareto_front`: the non-dominated points (``moocore``);
- :func:`hypervolume`: the area dominated by a point set and bounded by a reference point
  (``moocore``, exact in 2D); a larger area is a better frontier;
- :func:`common_reference`: one reference point for every set being compared;
- :func:`front_box`: the box spanned by the fronts, to normalise both axes to [0, 1];
- :func:`loss_gap_at_matched_x`: the mean vertical distance between two frontiers over the
  range of the first coordinate where both exist (e.g. L_ret gap at matched L_ft).

Non-finite points (diverged runs) are dropped everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
from numpy.typing import ArrayLike, NDArray


def finite_points(points: ArrayLike) -> NDArray[np.float64]:
    """``points`` as a float (m, 2) array with non-finite rows (diverged runs) removed."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, 2))
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (m, 2), got {p.shape}")
    return p[np.isfinite(p).all(axis=1)]


def pareto_mask(points: ArrayLike) -> NDArray[np.bool_]:
    """Boolean mask (m,) of the non-dominated rows of ``points`` (m, 2), minimising both.

    Non-finite rows are never on the front. Exact duplicates of a front point are kept once.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros(len(p), dtype=bool)
    ok = np.isfinite(p).all(axis=1)
    if ok.any():
        mask[np.flatnonzero(ok)] = moocore.is_nondominated(p[ok], keep_weakly=False)
    return mask


def pareto_front(points: ArrayLike) -> NDArray[np.float64]:
    """The Pareto front of ``points`` (m, 2) as a (f, 2) array sorted by the first coordinate.

    Sorted by x ascending, a minimisation front has y strictly descending.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    front = p[pareto_mask(p)]
    return front[np.argsort(front[:, 0], kind="stable")]


def common_reference(point_sets: Sequence[ArrayLike], margin: float = 0.1) -> NDArray[np.float64]:
    """A reference point (2,) worse than every finite point of every set.

    Per coordinate: the maximum over all sets plus ``margin`` times the range of that
    coordinate (or plus ``margin`` times |max|, or ``margin``, when the range is zero), so
    every point contributes a strictly positive area.
    """
    allp = np.concatenate([finite_points(s) for s in point_sets] + [np.zeros((0, 2))])
    if len(allp) == 0:
        raise ValueError("common_reference: no finite points in any set")
    hi = allp.max(axis=0)
    span = hi - allp.min(axis=0)
    pad = np.where(span > 0, span, np.where(np.abs(hi) > 0, np.abs(hi), 1.0)) * margin
    return hi + pad


def front_box(point_sets: Sequence[ArrayLike], min_frac: float = 0.05) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(lo (2,), span (2,)) of the box spanned by the Pareto fronts of all ``point_sets``.

    Dividing ``(p - lo) / span`` puts every front point in [0, 1]^2, so areas compare
    across axes with different units and are not inflated by dominated outliers; with the
    reference point (1 + margin, 1 + margin) every front point counts. Each span is at
    least ``min_frac`` times the extent of all points (so nearly coincident fronts do not
    blow a negligible difference up to the whole box), and at least 1e-12.
    """
    pts = [finite_points(s) for s in point_sets]
    fronts = [pareto_front(p) for p in pts]
    allf = np.concatenate(fronts + [np.zeros((0, 2))])
    if len(allf) == 0:
        raise ValueError("front_box: no finite points in any set")
    allp = np.concatenate(pts)
    lo = allf.min(axis=0)
    span = np.maximum(allf.max(axis=0) - lo, min_frac * (allp.max(axis=0) - allp.min(axis=0)))
    return lo, np.maximum(span, 1e-12)


def hypervolume(points: ArrayLike, ref: ArrayLike) -> float:
    """Area of the region dominated by ``points`` (m, 2) and bounded by ``ref`` (2,).

    Minimisation in both coordinates: the union over points p with p < ref of the boxes
    [p_x, ref_x] x [p_y, ref_y]. Points not strictly better than ``ref`` in both
    coordinates contribute nothing; an empty set has area 0.
    """
    p = finite_points(points)
    r = np.asarray(ref, dtype=np.float64).reshape(2)
    p = p[(p < r).all(axis=1)]
    if len(p) == 0:
        return 0.0
    return float(moocore.hypervolume(p, ref=r))


def interpolate_front(front: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Piecewise-linear y of a sorted front (f, 2) at abscissae ``x`` (g,) inside its range."""
    return np.interp(x, front[:, 0], front[:, 1])


def loss_gap_at_matched_x(
    reference: ArrayLike, candidate: ArrayLike, n_grid: int = 101
) -> dict[str, float]:
    """Mean of y_reference(x) - y_candidate(x) over the x range both frontiers cover.

    Each frontier is the Pareto front of its points, joined by straight segments (as the
    paper draws them). A positive gap means the candidate reaches a lower second
    coordinate (e.g. lower retained loss L_ret) at matched first coordinate (e.g. L_ft).

    Returns ``{"gap", "gap_max", "gap_min", "x_lo", "x_hi"}``; ``gap`` is NaN when the two
    frontiers' x ranges do not overlap.
    """
    fa, fb = pareto_front(reference), pareto_front(candidate)
    nan = float("nan")
    if len(fa) == 0 or len(fb) == 0:
        return {"gap": nan, "gap_max": nan, "gap_min": nan, "x_lo": nan, "x_hi": nan}
    lo = max(fa[0, 0], fb[0, 0])
    hi = min(fa[-1, 0], fb[-1, 0])
    if lo > hi:
        return {"gap": nan, "gap_max": nan, "gap_min": nan, "x_lo": float(lo), "x_hi": float(hi)}
    xs = np.linspace(lo, hi, n_grid) if hi > lo else np.array([lo])
    d = interpolate_front(fa, xs) - interpolate_front(fb, xs)
    return {"gap": float(d.mean()), "gap_max": float(d.max()), "gap_min": float(d.min()),
            "x_lo": float(lo), "x_hi": float(hi)}
