"""Finite-sample mode: a finite D_post of N samples, seeded minibatch SGD, exact evaluation.

The analogue of the paper's data budget (Sections 4.1 and 4.2). Targets are noise-free
(y = A^post x), so a minibatch's loss gradient is 2 (theta - A) S_B with S_B = X_B^T X_B / |B|
its empirical second moment; D_pre and D_ft stay exact expectations (their data are
"unlimited", as C4 is for the LM side), and every reported loss is the exact expectation.

Pipeline of one run (original coordinates, full matrices, float64):

- **pre**: ``stages.pre.steps`` GD steps. The ``n_mix = round(mix_fraction N)`` mixed samples are
  dealt out once, in order, over the steps (``np.array_split``). Step t minimises
  (1 - a_t) L_pre + a_t L_hat(B_t) with a_t = |B_t| / (|B_t| + pre_pool / steps): the pretraining
  "batch" holds pre_pool/steps samples of D_pre per step next to the |B_t| post samples.
  ``stages.pre.mix_fraction`` is not used here (the mixing share follows from the spec's
  mix_fraction, N and pre_pool).
- **post**: ``epochs`` passes over the remaining N - n_mix samples in seeded random minibatches
  of ``batch``; each step minimises (1 - r) L_hat(B) + r L_pre + reg ||theta - theta_0||^2 with
  **sampled** inverted dropout: every sample draws its own Bernoulli(1 - p) / (1 - p) mask on the
  h hidden units (W1 diag(d) W2 x). Its expectation over masks is the closed form of
  :func:`linear_theory.simulate` (tested in ``tests/test_sweep_finite.py``); the replayed D_pre
  term, an exact expectation, carries the closed-form penalty, so the expected objective is
  exactly simulate's post-training objective.
- **ft**: ``stages.ft.steps`` exact GD steps on L_ft (Section C.4).

Runs that share shapes (same N, batch, epochs, steps) are vmapped over (mix_fraction, seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from early_exposure.frontier import STAGES
from early_exposure.seeding import seed_sequence
from linear_theory.config import SimConfig
from linear_theory.simulate import enable_precision, initial_weights
from linear_theory.tasks import TaskMatrices, build_task

__all__ = ["FiniteSpec", "FiniteBatch", "prepare", "run_finite", "dropout_loss_sampled"]


@dataclass(frozen=True)
class FiniteSpec:
    """Data budget of one finite-sample run."""

    n_samples: int  # N = |D_post|
    mix_fraction: float  # fraction of the N samples mixed into pretraining (one pass)
    seed: int  # root seed of the samples, minibatch order and dropout masks
    pre_pool: float  # D_pre samples per pretraining run (sets the mixing share a_t)
    batch: int = 16  # post-training minibatch size
    epochs: int = 1  # passes over the N - n_mix post-training samples


@dataclass(frozen=True)
class FiniteBatch:
    """Stacked per-run arrays (leading axis R = runs) for :func:`run_finite`."""

    pre_S: np.ndarray  # (R, S_pre, n, n) empirical second moments of the mixed batches
    pre_a: np.ndarray  # (R, S_pre) mixing share a_t
    post_X: np.ndarray  # (R, S_post, b, n) post-training minibatches (zero-padded)
    post_w: np.ndarray  # (R, S_post, b) sample weights 1/|B| (0 for padding)
    post_valid: np.ndarray  # (R, S_post) 1 for real steps, 0 for padding steps
    masks: np.ndarray  # (R, S_post, b, h) inverted-dropout masks (ones without dropout)
    n_mix: np.ndarray  # (R,) samples mixed into pretraining
    post_steps: np.ndarray  # (R,) real post-training steps


def _post_steps(spec: FiniteSpec) -> int:
    rest = spec.n_samples - int(round(spec.mix_fraction * spec.n_samples))
    return spec.epochs * math.ceil(rest / spec.batch) if rest > 0 else 0


def prepare(cfg: SimConfig, specs: list[FiniteSpec], tm: TaskMatrices | None = None) -> FiniteBatch:
    """Draw samples, minibatch orders and dropout masks for every run (seeded, host side).

    All runs are padded to the same number of post-training steps (padding steps are no-ops)
    so they can be vmapped.
    """
    tm = build_task(cfg.task) if tm is None else tm
    n, h = cfg.task.n, cfg.width
    p = cfg.stages.post.dropout
    S_pre = cfg.stages.pre.steps
    b = max(s.batch for s in specs)
    S_post = max([_post_steps(s) for s in specs] + [1])
    R = len(specs)
    out = {"pre_S": np.zeros((R, S_pre, n, n)), "pre_a": np.zeros((R, S_pre)),
           "post_X": np.zeros((R, S_post, b, n)), "post_w": np.zeros((R, S_post, b)),
           "post_valid": np.zeros((R, S_post)), "masks": np.ones((R, S_post, b, h)),
           "n_mix": np.zeros(R, dtype=np.int64), "post_steps": np.zeros(R, dtype=np.int64)}
    for r, s in enumerate(specs):
        # the run's three streams under its root seed (early_exposure.seeding)
        k_x, k_order, k_mask = (seed_sequence(s.seed, "finite", name) for name in ("inputs", "order", "dropout"))
        # D_post inputs: x ~ N(0, I_n) in the original coordinates (Section C.1)
        X = np.random.default_rng(k_x).standard_normal((s.n_samples, n))
        n_mix = int(round(s.mix_fraction * s.n_samples))
        out["n_mix"][r] = n_mix
        if n_mix and S_pre:
            per_step_pre = s.pre_pool / S_pre
            for t, part in enumerate(np.array_split(X[:n_mix], S_pre)):
                if len(part):
                    out["pre_S"][r, t] = part.T @ part / len(part)
                    out["pre_a"][r, t] = len(part) / (len(part) + per_step_pre)
        rest = X[n_mix:]
        rng_o = np.random.default_rng(k_order)
        rng_m = np.random.default_rng(k_mask)
        t = 0
        for _ in range(s.epochs if len(rest) else 0):
            perm = rng_o.permutation(len(rest))
            for start in range(0, len(rest), s.batch):
                idx = perm[start:start + s.batch]
                out["post_X"][r, t, :len(idx)] = rest[idx]
                out["post_w"][r, t, :len(idx)] = 1.0 / len(idx)
                out["post_valid"][r, t] = 1.0
                if p > 0:
                    out["masks"][r, t, :len(idx)] = (rng_m.random((len(idx), h)) >= p) / (1.0 - p)
                t += 1
        out["post_steps"][r] = t
    return FiniteBatch(**out)


def dropout_loss_sampled(W1: jax.Array, W2: jax.Array, X: jax.Array, w: jax.Array, masks: jax.Array,
                         A: jax.Array) -> jax.Array:
    """sum_i w_i ||W1 diag(d_i) W2 x_i - A x_i||^2 for samples X (b, n), masks d (b, h), weights w (b,)."""
    hid = (X @ W2.T) * masks  # (b, h)
    err = hid @ W1.T - X @ A.T  # (b, n)
    return jnp.sum(w * jnp.sum(err * err, axis=1))


def _exact_loss(theta: jax.Array, A: jax.Array, C: jax.Array) -> jax.Array:
    """E||theta x - A x||^2 = tr((theta - A) C (theta - A)^T)."""
    D = theta - A
    return jnp.sum((D @ C) * D)


@partial(jax.jit, static_argnames=("pre_steps", "ft_steps"))
def _pipeline(W1, W2, A_pre, A_post, A_ft, C_pre, C_post, C_ft, lrs, reg, replay, kappa,
              pre_S, pre_a, post_X, post_w, post_valid, masks, *, pre_steps: int, ft_steps: int):
    """One run (vmapped over runs by the caller). Returns (theta_pre, theta_post, theta_ft), (n, n) each."""
    lr_pre, lr_post, lr_ft = lrs[0], lrs[1], lrs[2]

    def pre_step(c, xs):
        W1, W2 = c
        S, a = xs
        G = 2.0 * ((1.0 - a) * (W1 @ W2 - A_pre) @ C_pre + a * (W1 @ W2 - A_post) @ S)
        return (W1 - lr_pre * G @ W2.T, W2 - lr_pre * W1.T @ G), None

    (W1, W2), _ = jax.lax.scan(pre_step, (W1, W2), (pre_S, pre_a), length=pre_steps)
    theta0 = W1 @ W2

    def post_obj(W1, W2, X, w, mk):
        theta = W1 @ W2
        data = dropout_loss_sampled(W1, W2, X, w, mk, A_post)
        # the replayed D_pre term is an exact expectation, so its dropout is the closed form
        # kappa sum_j ||W1[:, j]||^2 W2[j] C_pre W2[j]^T (the post samples' dropout is sampled)
        pen = kappa * jnp.sum(jnp.sum(W1 * W1, axis=0) * jnp.einsum("ji,ik,jk->j", W2, C_pre, W2))
        return ((1.0 - replay) * data + replay * (_exact_loss(theta, A_pre, C_pre) + pen)
                + reg * jnp.sum((theta - theta0) ** 2))

    grad = jax.grad(post_obj, argnums=(0, 1))

    def post_step(c, xs):
        W1, W2 = c
        X, w, valid, mk = xs
        g1, g2 = grad(W1, W2, X, w, mk)
        return (W1 - valid * lr_post * g1, W2 - valid * lr_post * g2), None

    (W1, W2), _ = jax.lax.scan(post_step, (W1, W2), (post_X, post_w, post_valid, masks))
    theta_post = W1 @ W2

    def ft_step(c, _):
        W1, W2 = c
        G = 2.0 * (W1 @ W2 - A_ft) @ C_ft
        return (W1 - lr_ft * G @ W2.T, W2 - lr_ft * W1.T @ G), None

    (W1, W2), _ = jax.lax.scan(ft_step, (W1, W2), None, length=ft_steps)
    return theta0, theta_post, W1 @ W2


def run_finite(cfg: SimConfig, specs: list[FiniteSpec]) -> list[dict[str, float]]:
    """Run every spec through pre -> post -> ft; exact L_im, L_ret, L_ft, L_pre per run, and
    ``L_post_stage1`` (theta_pre's exact loss on D_post).

    ``cfg`` supplies the task, model, learning rates, steps of pre/ft, reg, replay and the
    dropout rate; ``specs`` the data budget of each run. Non-finite results are ``diverged``.
    """
    dtype = enable_precision(cfg.precision)
    tm = build_task(cfg.task)
    fb = prepare(cfg, specs, tm)
    W1, W2 = initial_weights(cfg, tm)
    R = len(specs)
    c = partial(jnp.asarray, dtype=dtype)
    mats = [c(tm.A(t)) for t in STAGES] + [c(tm.C(t)) for t in STAGES]
    lrs = c([cfg.stages.pre.lr, cfg.stages.post.lr, cfg.stages.ft.lr])
    run = jax.vmap(partial(_pipeline, pre_steps=cfg.stages.pre.steps, ft_steps=cfg.stages.ft.steps),
                   in_axes=(None,) * 12 + (0,) * 6)
    p = cfg.stages.post.dropout
    th_pre, th_post, th_ft = run(c(W1), c(W2), *mats, lrs, c(cfg.stages.post.reg), c(cfg.stages.post.replay), c(p / (1 - p)),
                         c(fb.pre_S), c(fb.pre_a), c(fb.post_X), c(fb.post_w), c(fb.post_valid), c(fb.masks))
    th_pre = np.asarray(th_pre, dtype=np.float64)
    th_post = np.asarray(th_post, dtype=np.float64)
    th_ft = np.asarray(th_ft, dtype=np.float64)
    out = []
    for r in range(R):
        loss = {"L_im": _np_loss(th_post[r], tm, "post"), "L_ret": _np_loss(th_ft[r], tm, "post"),
                "L_ft": _np_loss(th_ft[r], tm, "ft"), "L_pre": _np_loss(th_ft[r], tm, "pre")}
        diverged = not all(math.isfinite(v) for v in loss.values())
        if diverged:
            loss = {k: float("nan") for k in loss}
        out.append({**loss, "diverged": diverged, "n_mix": int(fb.n_mix[r]), "post_steps": int(fb.post_steps[r]),
                    "L_post_stage1": _np_loss(th_pre[r], tm, "post")})  # theta_pre on D_post (the (c) precondition)
    return out


def _np_loss(theta: np.ndarray, tm: TaskMatrices, t: str) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        D = theta - tm.A(t)
        return float(np.einsum("ij,jk,ik->", D, tm.C(t), D))
