"""The compiled gradient-descent loops of one simulation (both code paths of :mod:`linear_theory.simulate`).

- full-matrix path (:func:`gd_full`): GD on the stage objective

      L(W1, W2) = sum_t w_t tr((theta - A^t) C_t (theta - A^t)^T) + reg ||theta - theta_0||_F^2
                  + kappa sum_j ||W1[:, j]||^2 W2[j, :] C_d W2[j, :]^T,   theta = W1 W2,

  gradients by ``jax.grad`` (C_d = sum_t w_t C_t, kappa = p / (1 - p) for dropout rate p);
- spectral path (:func:`gd_spectral`): the per-mode scalar recurrence of the decoupled case,
  g_i = 2 sum_t w_t c_ti (a_i b_i - sigma_ti) + 2 reg (a_i b_i - s0_i) + 2 kappa c_di a_i b_i,
  a_i <- a_i - lr g_i b_i, b_i <- b_i - lr g_i a_i.

Each stage is one ``jax.jit``-compiled ``lax.fori_loop`` (``lax.scan`` over chunks of
``stride`` steps when a trajectory is recorded). An update that is non-finite or beyond
``limit`` freezes the weights at the last finite step and sets ``diverged``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gd_full", "gd_spectral"]


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
