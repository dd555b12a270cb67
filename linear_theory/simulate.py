"""Three-stage gradient descent on a two-layer linear network (Appendix C of arXiv 2605.12705).

theta = W1 W2 with W1: (n, h), W2: (h, n).  Every stage minimises an exact expected loss
(computed from covariances, no sampling)

    L(W1, W2) = sum_t w_t tr((theta - A^t) C_t (theta - A^t)^T)          data terms (no 1/2)
              + reg ||theta - theta_0||_F^2                               Section C.3 regulariser
              + p/(1-p) sum_j ||W1[:, j]||^2 W2[j, :] C_d W2[j, :]^T      expected dropout penalty

with plain gradient descent W <- W - lr grad_W L:

- pre:  terms (1-alpha) L_pre + alpha L_post (mixed pretraining, Section C.1; alpha is the
        config's ``stages.pre.mix_fraction``);
- post: terms (1-replay) L_post + replay L_pre, reg around theta_0 = theta after pre, dropout p
        (C_d = the data-mixture covariance);
- ft:   L_ft only (Section C.4).

Two code paths:

- ``full``: matrices, any basis / init / width; gradients by ``jax.grad`` of the objective above.
- ``spectral``: the decoupled case (W1 = U diag(a), W2 = diag(b) V^T, h = n). Each mode is the
  scalar recurrence  g_i = 2 sum_t w_t c_ti (a_i b_i - sigma_ti) + 2 reg (a_i b_i - s0_i)
  + 2 p/(1-p) c_di a_i b_i ;  a_i <- a_i - lr g_i b_i ;  b_i <- b_i - lr g_i a_i
  (Saxe et al. 2014; Springer et al. 2025, eq. (2) of the paper corrected, see
  :mod:`linear_theory.checks.errata`).

Each stage loop is one ``jax.jit``-compiled ``lax.fori_loop``/``lax.scan``
(:mod:`linear_theory.descent`). Divergence (a
non-finite or exploding weight) freezes the weights at the last finite step, sets
``diverged`` and stops the pipeline; losses of unfinished stages are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from early_exposure.errors import ConfigError
from early_exposure.frontier import LOSS_COLUMNS, STAGES
from linear_theory.config import SimConfig
from linear_theory.descent import _objective_full, gd_full, gd_spectral
from linear_theory.tasks import (
    TaskMatrices, build_task, ideal_sigma, ideal_weights, printed_sigma_mixed, printed_sigma_unmixed,
    task_stream,
)

__all__ = [
    "SimResult", "StageSpec", "simulate", "expected_loss", "stage_specs", "initial_weights",
    "spectral_applicable", "gd_full", "gd_spectral", "task_losses", "spectrum", "offdiag_norm",
    "enable_precision", "stage_objective", "ideal_init_sigma", "divergence_limit", "SPECTRA_KEYS", "LOSS_KEYS",
]

#: the weights recorded by a run: the init, then the end of each stage
SPECTRA_KEYS: tuple[str, ...] = ("init", *STAGES)
#: the losses of a run: the stage-1 objective L_pretrain, then the paper's four (the frontier's columns)
LOSS_KEYS: tuple[str, ...] = ("L_pretrain", *LOSS_COLUMNS)
_EXPLODE = 1e6  # weights beyond _EXPLODE * sqrt(1 + max target) count as diverged


def divergence_limit(tm: TaskMatrices, W1: np.ndarray, W2: np.ndarray) -> float:
    """Weight magnitude beyond which a run counts as diverged (simulate and the sweep engine):
    1e6 sqrt(1 + max target singular value) times max(1, max|W1| + max|W2| at the init)."""
    max_target = float(max(np.max(np.abs(tm.pre.sigma)), np.max(np.abs(tm.post.sigma)),
                           np.max(np.abs(tm.ft.sigma)), 0.0))
    return _EXPLODE * math.sqrt(1.0 + max_target) * max(1.0, float(np.max(np.abs(W1)) + np.max(np.abs(W2))))


# --------------------------------------------------------------------------- precision
def enable_precision(precision: str) -> jnp.dtype:
    """Resolve the dtype once; float64 turns on ``jax_enable_x64`` (process-wide, idempotent)."""
    if precision == "float64":
        if not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32


# --------------------------------------------------------------------------- losses
def expected_loss(theta: np.ndarray | jax.Array, A: np.ndarray | jax.Array,
                  cov_x: np.ndarray | jax.Array) -> float:
    """E_x ||theta x - A x||^2 = tr((theta - A) cov_x (theta - A)^T), no 1/2 (Section C.1)."""
    d = np.asarray(theta, dtype=np.float64) - np.asarray(A, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", d, np.asarray(cov_x, dtype=np.float64), d))


def task_losses(theta: np.ndarray, tm: TaskMatrices) -> dict[str, float]:
    """L(theta; D_pre), L(theta; D_post), L(theta; D_ft) (exact expectations)."""
    return {t: expected_loss(theta, tm.A(t), tm.C(t)) for t in STAGES}


def spectrum(theta: np.ndarray, tm: TaskMatrices) -> np.ndarray:
    """diag(U^T theta V), shape (n,)."""
    return np.einsum("ij,ik,kj->j", tm.U, theta, tm.V)


def offdiag_norm(theta: np.ndarray, tm: TaskMatrices) -> float:
    """||U^T theta V - diag(U^T theta V)||_F."""
    m = tm.U.T @ theta @ tm.V
    return float(np.linalg.norm(m - np.diag(np.diag(m))))


# --------------------------------------------------------------------------- stage objectives
@dataclass(frozen=True)
class StageSpec:
    """One stage objective in mode form: term t has weight w_t, targets sigma_t, input variances c_t."""

    name: str
    weights: np.ndarray  # (m,)
    sigma: np.ndarray  # (m, n) singular values of the targets A^t
    cov: np.ndarray  # (m, n) input variances along the columns of V
    reg: float = 0.0  # lambda of Section C.3 (post only)
    dropout: float = 0.0  # inverted-dropout rate p on the hidden units (post only)

    @property
    def kappa(self) -> float:
        """p / (1 - p), the variance of an inverted Bernoulli(1-p) mask entry."""
        return self.dropout / (1.0 - self.dropout)

    def matrices(self, tm: TaskMatrices) -> tuple[np.ndarray, np.ndarray]:
        """A_t = U diag(sigma_t) V^T and C_t = V diag(c_t) V^T stacked: (m, n, n) each."""
        A = np.einsum("ij,mj,kj->mik", tm.U, self.sigma, tm.V)
        C = np.einsum("ij,mj,kj->mik", tm.V, self.cov, tm.V)
        return A, C


def stage_specs(cfg: SimConfig, tm: TaskMatrices) -> dict[str, StageSpec]:
    """The three stage objectives of the pipeline (see module docstring)."""
    a, post = cfg.stages.pre.mix_fraction, cfg.stages.post
    r = post.replay
    return {
        "pre": StageSpec("pre", np.array([1 - a, a]), np.stack([tm.pre.sigma, tm.post.sigma]),
                         np.stack([tm.pre.cov, tm.post.cov])),
        "post": StageSpec("post", np.array([1 - r, r]), np.stack([tm.post.sigma, tm.pre.sigma]),
                          np.stack([tm.post.cov, tm.pre.cov]), reg=post.reg, dropout=post.dropout),
        "ft": StageSpec("ft", np.array([1.0]), tm.ft.sigma[None, :], tm.ft.cov[None, :]),
    }


def stage_objective(W1: np.ndarray, W2: np.ndarray, spec: StageSpec, tm: TaskMatrices,
                    theta0: np.ndarray | None = None) -> float:
    """Value of the stage objective (module docstring) at (W1 (n, h), W2 (h, n)), in float64.

    With ``spec.dropout = p`` this is the closed-form expectation over inverted Bernoulli masks
    m_j ~ Bern(1-p)/(1-p):  E_{x,m}||W1 M W2 x - A x||^2 = ||(W1 W2 - A) C^{1/2}||_F^2
    + p/(1-p) sum_j ||W1[:, j]||^2 W2[j, :] C W2[j, :]^T  (plus the regulariser).
    """
    A, C = spec.matrices(tm)
    W1 = np.asarray(W1, dtype=np.float64)
    W2 = np.asarray(W2, dtype=np.float64)
    theta0 = np.zeros((W1.shape[0], W2.shape[1])) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    return float(_objective_full(jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(A), jnp.asarray(C),
                                 jnp.asarray(spec.weights), jnp.asarray(theta0), jnp.asarray(spec.reg),
                                 jnp.asarray(spec.kappa)))


# --------------------------------------------------------------------------- initialisation
def initial_weights(cfg: SimConfig, tm: TaskMatrices) -> tuple[np.ndarray, np.ndarray]:
    """W1 (n, h), W2 (h, n) for ``cfg.model.init`` (see :class:`linear_theory.config.ModelConfig`)."""
    n, h, scale = cfg.task.n, cfg.width, math.exp(-cfg.model.T)
    init = cfg.model.init
    if init == "paper":  # Assumption C.8
        return scale * np.eye(n, h), scale * np.eye(h, n)
    if init == "aligned":
        return scale * tm.U.copy(), scale * tm.V.T.copy()
    if init == "random":
        rng = task_stream(cfg.task.seed, "init")
        return (scale * rng.standard_normal((n, h)) / math.sqrt(n),
                scale * rng.standard_normal((h, n)) / math.sqrt(n))
    return ideal_weights(tm.U, tm.V, ideal_init_sigma(cfg, tm))


def ideal_init_sigma(cfg: SimConfig, tm: TaskMatrices | None = None) -> np.ndarray:
    """The Sigma of the ``ideal`` init (Section C.3), shape (n,).

    ``fixed_point``: the rank-``ideal_rank`` (default n-k) truncation that pretraining with the
    configured alpha (``stages.pre.mix_fraction``) reaches by Theorem C.9, each mode at its fixed
    point sigma_xy/lambda.
    ``printed``: Theorem C.10 as printed (Sigma_mixed if alpha > 0, else Sigma_unmixed).
    """
    tm = build_task(cfg.task) if tm is None else tm
    alpha = cfg.stages.pre.mix_fraction
    if cfg.model.ideal_values == "printed":
        return printed_sigma_mixed(cfg.task, alpha) if alpha > 0 else printed_sigma_unmixed(cfg.task)
    rank = cfg.task.n - cfg.task.k if cfg.model.ideal_rank is None else cfg.model.ideal_rank
    return ideal_sigma(tm, alpha, rank=rank)


def spectral_applicable(cfg: SimConfig) -> bool:
    """The decoupled case: h = n and an init of the form W1 = U diag(a), W2 = diag(b) V^T."""
    if cfg.width != cfg.task.n:
        return False
    init = cfg.model.init
    return init in ("aligned", "ideal") or (init == "paper" and cfg.task.basis == "identity")


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class SimResult:
    """Outcome of :func:`simulate` (losses are exact expectations; NaN when diverged)."""

    losses: dict[str, float]  # L_pretrain, L_im, L_ret, L_ft, L_pre
    spectra: dict[str, np.ndarray]  # init/pre/post/ft: diag(U^T theta V), (n,)
    offdiag: dict[str, float]  # init/pre/post/ft: ||U^T theta V - diag||_F
    diverged: bool
    diverged_stage: str | None
    trajectory: pd.DataFrame | None  # stage, step, global_step, s_0..s_{n-1}, offdiag, L_pre, L_post, L_ft, W1_op, W2_op
    config: SimConfig
    method: str = "full"  # the code path that ran
    pre_skipped: bool = False  # True for init=ideal (theta_pre = the idealized product)
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # stage -> (W1, W2)
    steps_done: dict[str, int] = field(default_factory=dict)

    def thetas(self) -> dict[str, np.ndarray]:
        """theta = W1 W2 after each stage that ran."""
        return {k: w1 @ w2 for k, (w1, w2) in self.weights.items()}

    def to_json(self) -> dict:
        """The result.json body (without provenance)."""
        from early_exposure.configs import to_dict

        return {
            "losses": dict(self.losses),
            "spectra": {k: np.asarray(v).tolist() for k, v in self.spectra.items()},
            "offdiag": dict(self.offdiag),
            "diverged": self.diverged,
            "diverged_stage": self.diverged_stage,
            "method": self.method,
            "pre_skipped": self.pre_skipped,
            "steps_done": dict(self.steps_done),
            "config": to_dict(self.config),
        }


def simulate(cfg: SimConfig, *, method: Literal["auto", "full", "spectral"] = "auto",
             trajectory_stride: int | None = None,
             init_weights: tuple[np.ndarray, np.ndarray] | None = None) -> SimResult:
    """Run pre -> post -> ft (Appendix C) and record the paper's losses and spectra.

    Args:
      cfg: the validated configuration.
      method: ``full`` (matrices), ``spectral`` (decoupled scalar recurrences; needs
        :func:`spectral_applicable`), or ``auto`` (spectral when applicable).
      trajectory_stride: record the spectrum and task losses every this many steps.
      init_weights: explicit (W1 (n, h), W2 (h, n)) overriding ``cfg.model.init`` (full path
        only), e.g. a rotated init for basis-invariance checks.
    """
    if method not in ("auto", "full", "spectral"):
        raise ConfigError("method", f"must be auto, full or spectral, got {method!r}")
    if trajectory_stride is not None and (isinstance(trajectory_stride, bool) or int(trajectory_stride) < 1):
        raise ConfigError("--trajectory-stride", f"must be a positive integer, got {trajectory_stride!r}")
    dtype = enable_precision(cfg.precision)
    tm = build_task(cfg.task)
    n = cfg.task.n
    can_spectral = spectral_applicable(cfg) and init_weights is None
    if method == "spectral" and not can_spectral:
        raise ConfigError("method", "spectral path needs width = n and init aligned/ideal "
                          "(or paper with basis=identity) and no explicit init_weights; use full")
    use_spectral = method == "spectral" or (method == "auto" and can_spectral)
    if init_weights is None:
        W1, W2 = initial_weights(cfg, tm)
    else:
        W1, W2 = (np.asarray(w, dtype=np.float64) for w in init_weights)
        if W1.shape != (n, cfg.width) or W2.shape != (cfg.width, n):
            raise ConfigError("init_weights", f"expected shapes ({n}, {cfg.width}) and ({cfg.width}, {n}), "
                              f"got {W1.shape} and {W2.shape}")
    specs = stage_specs(cfg, tm)
    pre_skipped = cfg.model.init == "ideal" and init_weights is None
    steps_cfg = {"pre": 0 if pre_skipped else cfg.stages.pre.steps, "post": cfg.stages.post.steps,
                 "ft": cfg.stages.ft.steps}
    lrs = {"pre": cfg.stages.pre.lr, "post": cfg.stages.post.lr, "ft": cfg.stages.ft.lr}
    limit = divergence_limit(tm, W1, W2)

    sig3 = np.stack([tm.pre.sigma, tm.post.sigma, tm.ft.sigma])
    cov3 = np.stack([tm.pre.cov, tm.post.cov, tm.ft.cov])
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {"init": (W1, W2)}
    rec_frames: list[pd.DataFrame] = []
    steps_done: dict[str, int] = {}
    diverged_stage: str | None = None
    offset = 0
    cast = partial(jnp.asarray, dtype=dtype)

    if use_spectral:
        state = (np.einsum("ij,ij->j", tm.U, W1), np.einsum("ij,ji->i", W2, tm.V))  # a, b
    else:
        state = (W1, W2)
        A3 = np.stack([tm.A(t) for t in STAGES])
        C3 = np.stack([tm.C(t) for t in STAGES])
        Uj, Vj, A3j, C3j = cast(tm.U), cast(tm.V), cast(A3), cast(C3)

    def to_weights(st: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if use_spectral:
            a, b = st
            return tm.U * a[None, :], b[:, None] * tm.V.T
        return st

    for stage in STAGES:
        spec = specs[stage]
        x, y = state
        if use_spectral:
            s0 = x * y
            out = gd_spectral(cast(x), cast(y), cast(spec.sigma), cast(spec.cov), cast(spec.weights),
                              cast(s0), cast(spec.reg), cast(spec.kappa), cast(lrs[stage]), cast(limit),
                              cast(sig3), cast(cov3), steps=steps_cfg[stage], stride=trajectory_stride)
        else:
            theta0 = x @ y
            A, C = spec.matrices(tm)
            out = gd_full(cast(x), cast(y), cast(A), cast(C), cast(spec.weights), cast(theta0),
                          cast(spec.reg), cast(spec.kappa), cast(lrs[stage]), cast(limit),
                          Uj, Vj, A3j, C3j, steps=steps_cfg[stage], stride=trajectory_stride)
        nx, ny, bad, done, recs = out
        state = (np.asarray(nx, dtype=np.float64), np.asarray(ny, dtype=np.float64))
        steps_done[stage] = int(done)
        if recs is not None:
            rec = np.asarray(recs, dtype=np.float64)
            local = np.arange(rec.shape[0]) * trajectory_stride
            keep = local <= int(done)
            df = pd.DataFrame(rec[keep, :n], columns=[f"s_{i}" for i in range(n)])
            df.insert(0, "global_step", offset + local[keep])
            df.insert(0, "step", local[keep])
            df.insert(0, "stage", stage)
            df["offdiag"] = rec[keep, n]
            df["L_pre"], df["L_post"], df["L_ft"] = rec[keep, n + 1], rec[keep, n + 2], rec[keep, n + 3]
            df["W1_op"], df["W2_op"] = rec[keep, n + 4], rec[keep, n + 5]
            rec_frames.append(df)
        offset += steps_cfg[stage]
        if bool(bad):
            diverged_stage = stage
            break
        weights[stage] = to_weights(state)

    nan = float("nan")
    spectra: dict[str, np.ndarray] = {}
    offdiag: dict[str, float] = {}
    for key in SPECTRA_KEYS:
        if key in weights:
            th = weights[key][0] @ weights[key][1]
            spectra[key] = spectrum(th, tm)
            offdiag[key] = offdiag_norm(th, tm)
        else:
            spectra[key] = np.full(n, nan)
            offdiag[key] = nan
    th = {k: w1 @ w2 for k, (w1, w2) in weights.items()}
    a = cfg.stages.pre.mix_fraction
    losses = {key: nan for key in LOSS_KEYS}
    if "pre" in th:
        lp = task_losses(th["pre"], tm)
        losses["L_pretrain"] = (1 - a) * lp["pre"] + a * lp["post"]
    if "post" in th:
        losses["L_im"] = task_losses(th["post"], tm)["post"]
    if "ft" in th:
        lf = task_losses(th["ft"], tm)
        losses["L_ret"], losses["L_ft"], losses["L_pre"] = lf["post"], lf["ft"], lf["pre"]
    traj = pd.concat(rec_frames, ignore_index=True) if rec_frames else None
    return SimResult(losses=losses, spectra=spectra, offdiag=offdiag, diverged=diverged_stage is not None,
                     diverged_stage=diverged_stage, trajectory=traj, config=cfg,
                     method="spectral" if use_spectral else "full", pre_skipped=pre_skipped,
                     weights=weights, steps_done=steps_done)
