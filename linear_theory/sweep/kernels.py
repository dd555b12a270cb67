"""Batched gradient descent for sweeps: one compiled loop advances a whole grid chunk.

This is the sweep engine's own implementation, independent of :func:`linear_theory.simulate.simulate`
(which runs one configuration through ``jax.grad``); the tests compare the two.

Both paths work in the task's singular basis. GD on theta = W1 W2 is equivariant under
W1 -> U^T W1, W2 -> W2 V (the losses, the regulariser ||theta - theta_0||_F^2 and the
dropout penalty are invariant), so the rotated problem has diagonal targets and input
covariances and the iterates are exactly the rotated iterates of the original problem:

    objective  sum_ij m_j theta_ij^2 - 2 sum_i t_i theta_ii              (data terms, + const)
               + reg ||theta - theta_0||_F^2                              (Section C.3)
               + kappa sum_j ||W1[:, j]||^2 sum_l m_l W2[j, l]^2          (expected dropout)
    gradient   G = 2 (theta diag(m) - diag(t)) + 2 reg (theta - theta_0)
               dW1 = G W2^T + 2 kappa W1 diag(q),  q_j = sum_l m_l W2[j, l]^2
               dW2 = W1^T G + 2 kappa diag(r) W2 diag(m),  r_j = ||W1[:, j]||^2

with m = sum_t w_t c_t (the stage's mixture input variances) and t = sum_t w_t c_t sigma_t,
kappa = p / (1 - p). The kernels take batch-last arrays: W1 (n, h, B), W2 (h, n, B), vectors
(n, B). Inside, the full path works lane-tiled: (B / L, n, h, L) with L points per 512-bit vector,
so every small matrix product is a fused, SIMD-vectorised multiply-add over L points whose
operands stay in L1 (XLA's batched ``dot`` on 16 x 16 blocks is several times slower on CPU).

- full path: the matrices above (any init, basis, width); 3 small matmuls per step.
- spectral path: W1 = U diag(a), W2 = diag(b) V^T stay diagonal (h = n, aligned init), and
  each mode follows g = 2 (m s - t) + 2 reg (s - s0) + 2 kappa m s, a -= lr g b, b -= lr g a
  with s = a b (Saxe et al. 2014 in discrete time).

Divergence: a point whose weights are non-finite or beyond its ``limit`` at the end of a stage
is flagged; its weights are zeroed (so no inf/NaN flows on) and its later stages are void.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["bmm", "full_stage", "spectral_stage", "flops_full_step", "lanes_for", "UNROLL_MAX",
           "COMPILER_OPTIONS", "compiler_options", "FULL_TILE"]

#: contraction sizes up to this are unrolled into fused multiply-adds; larger use einsum
UNROLL_MAX = 32
#: batch tile of the full path on a CPU (``full_stage(tile=...)``: keeps a tile's weights in L2 for all steps)
FULL_TILE = 256

#: XLA options of the engine's programs. XLA:CPU emits 256-bit vectors by default; on a CPU with
#: AVX-512 the lane-tiled loops below run about 1.4x faster with 512-bit ones (LLVM falls back to
#: the widest available width elsewhere; other backends ignore the option).
COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": "512"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """:data:`COMPILER_OPTIONS` if this XLA accepts them (checked once by compiling a no-op, at
    first use, so after any device setup), else ``{}`` with a warning: the options are XLA debug
    options, and an XLA without them must still run the engine (slower), not fail."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=COMPILER_OPTIONS).lower(jnp.zeros(1)).compile()
    except Exception as exc:  # noqa: BLE001 - e.g. "No such compile option": fall back to defaults
        warnings.warn(f"XLA rejects the sweep engine's compiler options {COMPILER_OPTIONS} "
                      f"({str(exc).splitlines()[0]}); compiling without them", RuntimeWarning, stacklevel=2)
        return {}
    return dict(COMPILER_OPTIONS)


_STATIC = ("use_reg", "use_drop", "tile", "unroll")


@functools.cache
def _jitted(fn):
    return jax.jit(fn, static_argnames=_STATIC, compiler_options=compiler_options())


def _engine_kernel(fn):
    """Jit ``fn`` at its first call with :func:`compiler_options`; ``__wrapped__`` is the traced body
    (for callers that put it inside their own jit, where options can only be set on the outer one)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return _jitted(fn)(*args, **kwargs)

    return call

#: SIMD lanes of a 512-bit vector per dtype size in bytes
_LANES = {4: 16, 8: 8, 2: 32}


def lanes_for(batch: int, itemsize: int) -> int:
    """Lane count of the tiled layout: the largest divisor of ``batch`` not above one 512-bit vector."""
    want = _LANES.get(itemsize, 8)
    return max(d for d in range(1, min(want, batch) + 1) if batch % d == 0)


def bmm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Lane-tiled batched matmul: a (T, p, q, L) @ b (T, q, r, L) -> (T, p, r, L)."""
    q = a.shape[2]
    if q > UNROLL_MAX:
        return jnp.einsum("tpql,tqrl->tprl", a, b)
    out = a[:, :, 0, None, :] * b[:, None, 0, :, :]
    for j in range(1, q):
        out = out + a[:, :, j, None, :] * b[:, None, j, :, :]
    return out


def flops_full_step(n: int, h: int) -> int:
    """Multiply-add flops of one full-path step per grid point (3 matmuls of n*h*n)."""
    return 3 * 2 * n * h * n


def _full_step(W1: jax.Array, W2: jax.Array, m: jax.Array, t: jax.Array, eye: jax.Array, reg: jax.Array,
               kappa: jax.Array, lr: jax.Array, theta0: jax.Array | None, use_reg: bool,
               use_drop: bool) -> tuple[jax.Array, jax.Array]:
    """One GD step (module docstring) in the lane-tiled layout: W1 (T, n, h, L), W2 (T, h, n, L),
    m/t (T, n, L), eye (1, n, n, 1), scalars (T, 1, 1, L)."""
    theta = bmm(W1, W2)  # (T, n, n, L)
    G = 2.0 * (theta * m[:, None, :, :] - eye * t[:, :, None, :])
    if use_reg:
        G = G + 2.0 * reg * (theta - theta0)
    g1 = bmm(G, jnp.swapaxes(W2, 1, 2))  # (T, n, h, L)
    g2 = bmm(jnp.swapaxes(W1, 1, 2), G)  # (T, h, n, L)
    if use_drop:
        q = jnp.sum(W2 * W2 * m[:, None, :, :], axis=2)  # (T, h, L)
        r = jnp.sum(W1 * W1, axis=1)  # (T, h, L)
        g1 = g1 + 2.0 * kappa * W1 * q[:, None, :, :]
        g2 = g2 + 2.0 * kappa * W2 * (r[:, :, None, :] * m[:, None, :, :])
    return W1 - lr * g1, W2 - lr * g2


def _to_lanes(x: jax.Array, L: int) -> jax.Array:
    """Batch-last (..., B) -> lane-tiled (B / L, ..., L)."""
    return jnp.moveaxis(x.reshape(*x.shape[:-1], x.shape[-1] // L, L), -2, 0)


def _from_lanes(x: jax.Array) -> jax.Array:
    """Lane-tiled (T, ..., L) -> batch-last (..., T * L)."""
    y = jnp.moveaxis(x, 0, -2)
    return y.reshape(*y.shape[:-2], -1)


def _check(x: jax.Array, y: jax.Array, limit: jax.Array) -> jax.Array:
    """(B,) True where both weight arrays are finite and below ``limit`` in magnitude."""
    ax_x = tuple(range(x.ndim - 1))
    ax_y = tuple(range(y.ndim - 1))
    fin = jnp.all(jnp.isfinite(x), axis=ax_x) & jnp.all(jnp.isfinite(y), axis=ax_y)
    big = jnp.maximum(jnp.max(jnp.abs(x), axis=ax_x), jnp.max(jnp.abs(y), axis=ax_y))
    return fin & (big < limit)


def _tiled(fn: Callable[..., tuple], tile: int | None, *arrays: jax.Array) -> tuple:
    """Run ``fn`` on batch tiles of ``tile`` points (sequentially, so a tile's state stays in
    cache for all steps); arrays are batch-last. ``tile=None`` runs the whole batch at once."""
    B = arrays[0].shape[-1]
    if tile is None or tile >= B or B % tile:
        return fn(*arrays)
    nt = B // tile
    split = [jnp.moveaxis(x.reshape(*x.shape[:-1], nt, tile), -2, 0) for x in arrays]
    outs = jax.lax.map(lambda xs: fn(*xs), split)
    return tuple(jnp.moveaxis(o, 0, -2).reshape(*o.shape[1:-1], B) for o in outs)


def _loop(step: Callable[[tuple], tuple], carry: tuple, steps: jax.Array, unroll: int) -> tuple:
    """``steps`` (traced) applications of ``step``: blocks of ``unroll`` inlined steps, then the rest.

    The trip count is a runtime value, so one compiled program serves every step count.
    """
    def block(_, c):
        for _u in range(unroll):
            c = step(c)
        return c

    carry = jax.lax.fori_loop(0, steps // unroll, block, carry)
    if unroll > 1:
        carry = jax.lax.fori_loop(0, steps % unroll, lambda _, c: step(c), carry)
    return carry


@_engine_kernel
def full_stage(W1: jax.Array, W2: jax.Array, m: jax.Array, t: jax.Array, reg: jax.Array,
               kappa: jax.Array, lr: jax.Array, limit: jax.Array, alive: jax.Array, steps: jax.Array, *,
               use_reg: bool = False, use_drop: bool = False, tile: int | None = None,
               unroll: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``steps`` GD steps of one stage for a batch of grid points (full matrices).

    Args:
      W1: (n, h, B) and W2: (h, n, B), rotated weights U^T W1, W2 V.
      m, t: (n, B) mixture input variances and targets (module docstring).
      reg, kappa, lr, limit: (B,). alive: (B,) bool, False for points that already diverged.
      steps: int32 scalar (a runtime value: no recompilation per step count).
    Returns:
      (W1, W2, alive) after the stage; diverged points have zero weights and alive False.
    """
    n = W1.shape[0]
    eye = jnp.eye(n, dtype=W1.dtype)[None, :, :, None]

    def run(W1, W2, m, t, reg, kappa, lr):
        # lane-tiled layout: each (n, h, L) block of L points fits in L1, and every small matmul
        # becomes L-wide fused multiply-adds over a block (batch-last over the whole tile
        # streams the tile's matrices through L2 for every output row: ~1.7x slower)
        L = lanes_for(W1.shape[-1], W1.dtype.itemsize)
        W1, W2, m, t = (_to_lanes(x, L) for x in (W1, W2, m, t))
        reg, kappa, lr = (_to_lanes(x, L)[:, None, None, :] for x in (reg, kappa, lr))
        theta0 = bmm(W1, W2) if use_reg else None

        def body(c):
            return _full_step(*c, m, t, eye, reg, kappa, lr, theta0, use_reg, use_drop)

        W1, W2 = _loop(body, (W1, W2), steps, unroll)
        return _from_lanes(W1), _from_lanes(W2)

    lr = jnp.where(alive, lr, 0.0)
    W1n, W2n = _tiled(run, tile, W1, W2, m, t, reg, kappa, lr)
    ok = alive & _check(W1n, W2n, limit)
    return jnp.where(ok[None, None, :], W1n, 0.0), jnp.where(ok[None, None, :], W2n, 0.0), ok


@_engine_kernel
def spectral_stage(a: jax.Array, b: jax.Array, m: jax.Array, t: jax.Array, reg: jax.Array,
                   kappa: jax.Array, lr: jax.Array, limit: jax.Array, alive: jax.Array, steps: jax.Array, *,
                   use_reg: bool = False, use_drop: bool = False, tile: int | None = None,
                   unroll: int = 8) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``steps`` GD steps of one stage in the decoupled case: a, b, m, t (n, B); scalars (B,)."""

    def run(a, b, m, t, reg, kappa, lr):
        s0 = a * b
        mk = m * (1.0 + kappa[None, :]) if use_drop else m  # dropout adds 2 kappa m s to g
        lr_, reg_ = lr[None, :], reg[None, :]

        def body(c):
            a, b = c
            s = a * b
            g = 2.0 * (mk * s - t)
            if use_reg:
                g = g + 2.0 * reg_ * (s - s0)
            return a - lr_ * (g * b), b - lr_ * (g * a)

        return _loop(body, (a, b), steps, unroll)

    lr = jnp.where(alive, lr, 0.0)
    an, bn = _tiled(run, tile, a, b, m, t, reg, kappa, lr)
    ok = alive & _check(an, bn, limit)
    return jnp.where(ok[None, :], an, 0.0), jnp.where(ok[None, :], bn, 0.0), ok
