"""The tidy rows of a theory sweep, built from the stage-end products of a chunk.

One row per grid point. Columns: ``point``, one column per axis (its dotted path, e.g.
``stages.pre.mix_fraction``, ``task.beta``), ``method``, the losses :data:`SWEEP_LOSSES`
(``L_pretrain`` and the paper's four), ``Delta`` (= L_ret - L_im, Theorem C.17), block averages
of diag(U^T theta V) ``{inv,inc,spec}_{init,pre,post,ft}``, ``offdiag_{pre,post,ft}``,
``diverged``, ``diverged_stage``, and the closed-form assumption flags of
:mod:`linear_theory.sweep.flags`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from early_exposure.frontier import STAGES
from linear_theory.config import SimConfig
from linear_theory.simulate import LOSS_KEYS, SPECTRA_KEYS
from linear_theory.sweep.flags import assumption_flags
from linear_theory.sweep.grid import Axis
from linear_theory.tasks import blocks

__all__ = ["sweep_rows", "SWEEP_LOSSES", "BLOCK_KEYS"]

#: the loss columns of a sweep row: a simulation's losses (L_pretrain, then the frontier's four)
SWEEP_LOSSES: tuple[str, ...] = LOSS_KEYS
#: (column prefix, feature block of :func:`linear_theory.tasks.blocks`)
BLOCK_KEYS = (("inv", "invariant"), ("inc", "inconsistent"), ("spec", "specialized"))


def _losses(theta: np.ndarray, sig: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """E||theta x - A x||^2 = sum_ij c_j (theta_ij - delta_ij sigma_i)^2 in the singular basis.

    theta (P, n, n), or (P, n) when diagonal; sig, cov (P, n) -> (P,).
    """
    if theta.ndim == 2:
        return np.einsum("pi,pi->p", (theta - sig) ** 2, cov)
    d = theta.copy()
    ii = np.arange(theta.shape[1])
    d[:, ii, ii] -= sig
    return np.einsum("pij,pj->p", d * d, cov)


def sweep_rows(axes: tuple[Axis, ...], pts: np.ndarray, idx: np.ndarray, cfgs: list[SimConfig], inv: np.ndarray,
               path: str, thetas: dict[str, np.ndarray], alive: dict[str, np.ndarray], sig3: np.ndarray,
               cov3: np.ndarray, alpha: np.ndarray) -> pd.DataFrame:
    """Tidy rows of the points ``pts`` (P,) from the stage-end products in the singular basis.

    ``idx`` (P, n_axes) value indices; point p has the structural config ``cfgs[inv[p]]``;
    ``thetas[s]`` (P, n, n), or (P, n) when diagonal, and ``alive[s]`` (P,) after each stage s;
    ``sig3``/``cov3`` (3, P, n) the pre/post/ft tasks; ``alpha`` (P,) the points' mix_fraction.
    """
    P = len(pts)
    nan = np.full(P, np.nan)
    L = {t: {s: _losses(thetas[s], sig3[j], cov3[j]) for s in SPECTRA_KEYS} for j, t in enumerate(STAGES)}
    ok_pre, ok_post, ok_ft = alive["pre"], alive["post"], alive["ft"]
    df = pd.DataFrame({"point": pts.astype(np.int64)})
    for i, a in enumerate(axes):
        df[a.path] = pd.Series(np.asarray(a.values, dtype=object)[idx[:, i]]).infer_objects().to_numpy()
    df["method"] = path
    df["L_pretrain"] = np.where(ok_pre, (1 - alpha) * L["pre"]["pre"] + alpha * L["post"]["pre"], nan)
    df["L_im"] = np.where(ok_post, L["post"]["post"], nan)
    df["L_ret"] = np.where(ok_ft, L["post"]["ft"], nan)
    df["L_ft"] = np.where(ok_ft, L["ft"]["ft"], nan)
    df["L_pre"] = np.where(ok_ft, L["pre"]["ft"], nan)
    df["Delta"] = df["L_ret"] - df["L_im"]
    ok = {"init": np.ones(P, bool), "pre": ok_pre, "post": ok_post, "ft": ok_ft}
    n = thetas["init"].shape[1]
    k = cfgs[0].task.k
    bl = blocks(n, k)
    diag_only = thetas["init"].ndim == 2
    for s in SPECTRA_KEYS:
        d = thetas[s] if diag_only else np.einsum("pii->pi", thetas[s])
        for short, name in BLOCK_KEYS:
            sl = bl[name]
            v = d[:, sl].mean(axis=1) if sl.stop > sl.start else nan
            df[f"{short}_{s}"] = np.where(ok[s], v, nan)
    for s in STAGES:
        if diag_only:
            df[f"offdiag_{s}"] = np.where(ok[s], 0.0, nan)
            continue
        th = thetas[s]
        offd = th * (1.0 - np.eye(n))[None, :, :]
        off = np.sqrt(np.einsum("pij,pij->p", offd, offd))
        df[f"offdiag_{s}"] = np.where(ok[s], off, nan)
    df["diverged"] = ~ok_ft
    df["diverged_stage"] = np.where(~ok_pre, "pre", np.where(~ok_post, "post", np.where(~ok_ft, "ft", "")))
    flags: dict[str, np.ndarray] = {}
    for u, c in enumerate(cfgs):
        sel = inv == u
        for name, v in assumption_flags(c.task, alpha[sel]).items():
            flags.setdefault(name, np.zeros(P, bool))[sel] = v
    for name, v in flags.items():
        df[name] = v
    return df
