"""Three-stage gradient descent on a two-layer linear network (Appendix C of arXiv 2605.12705).

theta = W1 W2 with W1: (n, h), W2: (h, n).  Every stage minimises an exact expected loss
(computed from covariances, no sampling)

    L(W1, W2) = sum_t w_t tr((theta - A^t) C_t (theta - A^t)^T)          data terms (no 1/2)
              + reg ||theta - theta_0||_F^2                               Section C.3 regulariser
              + p/(1-p) sum_j ||W1[:, j]||^2 W2[j, :] C_d W2[j, :]^T      expected dropout penalty

with plain gradient descent W <- W - lr grad_W L:

- pre:  terms (1-alpha) L_pre + alpha L_post (mixed pretraining, Section C.1);
- post: terms (1-replay) L_post + replay L_pre, reg around theta_0 = theta after pre, dropout p
        (C_d = the data-mixture covariance);
- ft:   L_ft only (Section C.4).

Two code paths:

- ``full``: matrices, any basis / init / width; gradients by ``jax.grad`` of the objective above.
- ``spectral``: the decoupled case (W1 = U diag(a), W2 = diag(b) V^T, h = n). Each mode is the
  scalar recurrence  g_i = 2 sum_t w_t c_ti (a_i b_i - sigma_ti) + 2 reg (a_i b_i - s0_i)
  + 2 p/(1-p) c_di a_i b_i ;  a_i <- a_i - lr g_i b_i ;  b_i <- b_i - lr g_i a_i
  (Saxe et al. 2014; Springer et al. 2025, eq. (2) of the paper corrected, see verify.py).

Each stage loop is one ``jax.jit``-compiled ``lax.fori_loop``/``lax.scan``. Divergence (a
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
from linear_theory.config import SimConfig
from linear_theory.tasks import (
    TaskMatrices, build_task, ideal_sigma, ideal_weights, printed_sigma_mixed, printed_sigma_unmixed,
    _seeds,
)

__all__ = [
    "SimResult", "StageSpec", "simulate", "expected_loss", "stage_specs", "initial_weights",
    "spectral_applicable", "gd_full", "gd_spectral", "task_losses", "spectrum", "offdiag_norm",
    "enable_precision", "STAGES", "stage_objective", "ideal_init_sigma",
]

STAGES = ("pre", "post", "ft")
SPECTRA_KEYS = ("init", "pre", "post", "ft")
LOSS_KEYS = ("L_pretrain", "L_im", "L_ret", "L_ft", "L_pre")
_EXPLODE = 1e6  # weights beyond _EXPLODE * sqrt(1 + max target) count as diverged


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
    a, post = cfg.stages.pre.alpha, cfg.stages.post
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


# --------------------------------------------------------------------------- full-matrix path
def _objective_full(W1: jax.Array, W2: jax.Array, A: jax.Array, C: jax.Array, w: jax.Array,
                    theta0: jax.Array, reg: jax.Array, kappa: jax.Array) -> jax.Array:
    """Stage objective (module docstring). W1 (n, h), W2 (h, n), A/C (m, n, n), w (m,)."""
    theta = W1 @ W2  # (n, n)
    D = theta[None, :, :] - A  # (m, n, n)
    data = jnp.einsum("m,mij,mjk,mik->", w, D, C, D)
    Cd = jnp.einsum("m,mij->ij", w, C)  # data-mixture covariance (n, n)
    r = jnp.sum(W1 * W1, axis=0)  # (h,)  ||W1[:, j]||^2
    q = jnp.einsum("ji,ik,jk->j", W2, Cd, W2)  # (h,)  W2[j] Cd W2[j]^T
    return data + reg * jnp.sum((theta - theta0) ** 2) + kappa * jnp.sum(r * q)


def _record_full(W1: jax.Array, W2: jax.Array, U: jax.Array, V: jax.Array,
                 A3: jax.Array, C3: jax.Array) -> jax.Array:
    """[diag(U^T theta V) (n), offdiag, L_pre, L_post, L_ft, ||W1||_op, ||W2||_op] for the trajectory."""
    m = U.T @ (W1 @ W2) @ V
    d = jnp.diagonal(m)
    off = jnp.sqrt(jnp.sum((m - jnp.diag(d)) ** 2))
    D = (W1 @ W2)[None, :, :] - A3
    losses = jnp.einsum("mij,mjk,mik->m", D, C3, D)
    ops = jnp.stack([jnp.linalg.norm(W1, ord=2), jnp.linalg.norm(W2, ord=2)])
    return jnp.concatenate([d, off[None], losses, ops])


def gd_full(W1: jax.Array, W2: jax.Array, A: jax.Array, C: jax.Array, w: jax.Array,
            theta0: jax.Array, reg: jax.Array, kappa: jax.Array, lr: jax.Array, limit: jax.Array,
            U: jax.Array, V: jax.Array, A3: jax.Array, C3: jax.Array, *, steps: int,
            stride: int | None = None):
    """``steps`` GD steps on :func:`_objective_full`; one compiled loop.

    Returns (W1, W2, diverged, steps_done, records) with records (steps//stride + 1, n + 6)
    (or None without a stride). A3/C3 (3, n, n) are (A, C) of pre/post/ft for the records.
    ``steps`` and ``stride`` are traced: only steps // stride triggers a recompilation.
    """
    args = (W1, W2, A, C, w, theta0, reg, kappa, lr, limit, U, V, A3, C3)
    n_chunks = None if stride is None else steps // stride
    return _gd_full_jit(*args, jnp.asarray(steps, dtype=jnp.int32),
                        jnp.asarray(stride or 1, dtype=jnp.int32), n_chunks=n_chunks)


def _guarded(x: jax.Array, y: jax.Array, nx: jax.Array, ny: jax.Array, bad: jax.Array,
             done: jax.Array, limit: jax.Array) -> tuple:
    """Accept the update (nx, ny) unless it is non-finite or beyond ``limit``; once diverged,
    the weights stay frozen at the last finite step and ``done`` stops counting."""
    ok = jnp.all(jnp.isfinite(nx)) & jnp.all(jnp.isfinite(ny)) & (
        jnp.maximum(jnp.max(jnp.abs(nx)), jnp.max(jnp.abs(ny))) < limit)
    nbad = bad | ~ok
    return (jnp.where(nbad, x, nx), jnp.where(nbad, y, ny), nbad, done + (~nbad).astype(done.dtype))


def _run_loop(step, x: jax.Array, y: jax.Array, record, steps, stride, n_chunks):
    """``steps`` calls of ``step`` on (x, y, diverged, steps_done); with ``n_chunks`` also the
    records ``record(x, y)`` at step 0 and every ``stride`` steps (shape (n_chunks + 1, ...))."""
    carry = (x, y, jnp.asarray(False), jnp.asarray(0, dtype=jnp.int32))
    if n_chunks is None:
        carry = jax.lax.fori_loop(0, steps, lambda _, c: step(c), carry)
        return (*carry, None)
    first = record(x, y)

    def chunk(c, _):
        c = jax.lax.fori_loop(0, stride, lambda _, cc: step(cc), c)
        return c, record(c[0], c[1])

    carry, recs = jax.lax.scan(chunk, carry, None, length=n_chunks)
    carry = jax.lax.fori_loop(0, steps - n_chunks * stride, lambda _, c: step(c), carry)
    return (*carry, jnp.concatenate([first[None, :], recs], axis=0))


def _gd_full_impl(W1, W2, A, C, w, theta0, reg, kappa, lr, limit, U, V, A3, C3, steps, stride, n_chunks):
    """Body of :func:`gd_full` (jitted with ``n_chunks`` static)."""
    grad = jax.grad(_objective_full, argnums=(0, 1))

    def step(carry):
        W1, W2, bad, done = carry
        g1, g2 = grad(W1, W2, A, C, w, theta0, reg, kappa)
        return _guarded(W1, W2, W1 - lr * g1, W2 - lr * g2, bad, done, limit)

    return _run_loop(step, W1, W2, lambda x, y: _record_full(x, y, U, V, A3, C3), steps, stride, n_chunks)


# steps and stride are traced; only the number of recorded chunks is static
_gd_full_jit = jax.jit(_gd_full_impl, static_argnames=("n_chunks",))


# --------------------------------------------------------------------------- spectral path
def _record_spectral(a: jax.Array, b: jax.Array, sig3: jax.Array, cov3: jax.Array) -> jax.Array:
    s = a * b
    losses = jnp.sum(cov3 * (s[None, :] - sig3) ** 2, axis=1)  # (3,)
    ops = jnp.stack([jnp.max(jnp.abs(a)), jnp.max(jnp.abs(b))])  # ||U diag(a)||_op, ||diag(b) V^T||_op
    return jnp.concatenate([s, jnp.zeros((1,), s.dtype), losses, ops])


def gd_spectral(a: jax.Array, b: jax.Array, sigma: jax.Array, cov: jax.Array, w: jax.Array,
                s0: jax.Array, reg: jax.Array, kappa: jax.Array, lr: jax.Array, limit: jax.Array,
                sig3: jax.Array, cov3: jax.Array, *, steps: int, stride: int | None = None):
    """Per-mode scalar recurrence of the decoupled case (module docstring); a, b, s0: (n,).

    sigma/cov (m, n) are the stage terms, w (m,); sig3/cov3 (3, n) the pre/post/ft tasks for
    the records. Returns (a, b, diverged, steps_done, records) as :func:`gd_full`.
    """
    args = (a, b, sigma, cov, w, s0, reg, kappa, lr, limit, sig3, cov3)
    n_chunks = None if stride is None else steps // stride
    return _gd_spectral_jit(*args, jnp.asarray(steps, dtype=jnp.int32),
                            jnp.asarray(stride or 1, dtype=jnp.int32), n_chunks=n_chunks)


def _gd_spectral_impl(a, b, sigma, cov, w, s0, reg, kappa, lr, limit, sig3, cov3, steps, stride, n_chunks):
    """Body of :func:`gd_spectral` (jitted with ``n_chunks`` static)."""
    cd = jnp.sum(w[:, None] * cov, axis=0)  # (n,) data-mixture input variance

    def step(carry):
        a, b, bad, done = carry
        s = a * b
        g = (2.0 * jnp.sum(w[:, None] * cov * (s[None, :] - sigma), axis=0)
             + 2.0 * reg * (s - s0) + 2.0 * kappa * cd * s)
        return _guarded(a, b, a - lr * g * b, b - lr * g * a, bad, done, limit)

    return _run_loop(step, a, b, lambda x, y: _record_spectral(x, y, sig3, cov3), steps, stride, n_chunks)


# steps and stride are traced; only the number of recorded chunks is static
_gd_spectral_jit = jax.jit(_gd_spectral_impl, static_argnames=("n_chunks",))


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
        rng = np.random.default_rng(_seeds(cfg.task.seed)[2])
        return (scale * rng.standard_normal((n, h)) / math.sqrt(n),
                scale * rng.standard_normal((h, n)) / math.sqrt(n))
    return ideal_weights(tm.U, tm.V, ideal_init_sigma(cfg, tm))


def ideal_init_sigma(cfg: SimConfig, tm: TaskMatrices | None = None) -> np.ndarray:
    """The Sigma of the ``ideal`` init (Section C.3), shape (n,).

    ``fixed_point``: the rank-``ideal_rank`` (default n-k) truncation that pretraining with the
    configured alpha reaches by Theorem C.9, each mode at its fixed point sigma_xy/lambda.
    ``printed``: Theorem C.10 as printed (Sigma_mixed if alpha > 0, else Sigma_unmixed).
    """
    tm = build_task(cfg.task) if tm is None else tm
    alpha = cfg.stages.pre.alpha
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
    max_target = float(max(np.max(np.abs(tm.pre.sigma)), np.max(np.abs(tm.post.sigma)),
                           np.max(np.abs(tm.ft.sigma)), 0.0))
    limit = _EXPLODE * math.sqrt(1.0 + max_target) * max(1.0, float(np.max(np.abs(W1)) + np.max(np.abs(W2))))

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
    a = cfg.stages.pre.alpha
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
