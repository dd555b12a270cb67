"""Compute engine of the theory sweeps: one chunk of grid points through the batched kernels.

Command (see ``docs/sweeps.md``)::

    python -m linear_theory sweep --config configs/theory/sweep_alpha_beta.yaml \
        --grid mix_fraction=0:1:64 --grid beta=0.1:4:64 --out results/theory/sweep

A chunk of a :class:`~linear_theory.sweep.plan.SweepPlan` runs the batched GD of
:mod:`linear_theory.sweep.kernels` (one compiled loop per stage for the whole chunk; the full
path split over the grid axis across JAX devices when there are several, the spectral path on
each *distinct* mode once) and becomes the tidy rows of :mod:`linear_theory.sweep.rows`.
:func:`sweep_frame` runs a whole plan in memory (the engine behind the frontier study);
:mod:`linear_theory.sweep.files` runs one into resumable chunk files.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from early_exposure.errors import ConfigError
from early_exposure.frontier import STAGES
from linear_theory.config import SimConfig
from linear_theory.simulate import divergence_limit, enable_precision, initial_weights
from linear_theory.sweep.grid import Axis
from linear_theory.sweep.kernels import FULL_TILE, compiler_options, full_stage, spectral_stage
from linear_theory.sweep.plan import SCALAR_FIELDS, PointConfigs, SweepPlan, make_plan
from linear_theory.sweep.rows import sweep_rows
from linear_theory.tasks import build_task

__all__ = ["run_points", "sweep_frame", "use_cpu_devices"]


def _bucket(size: int, chunk: int, mult: int) -> int:
    """Padded batch size: the chunk size, or the next power of two for a short last chunk."""
    b = 1
    while b < size:
        b *= 2
    b = min(b, max(chunk, size))
    return int(math.ceil(b / mult) * mult)


@functools.lru_cache(maxsize=1)
def _device_mesh() -> jax.sharding.Mesh | None:
    """A 1-D mesh over all JAX devices (None with a single device)."""
    devs = jax.devices()
    if len(devs) < 2:
        return None
    return jax.sharding.Mesh(np.asarray(devs), ("g",))


@functools.lru_cache(maxsize=64)
def _sharded(fn: Callable, mesh: jax.sharding.Mesh, ndims: tuple[int, ...], static: tuple) -> Callable:
    """``fn`` under shard_map over the last (grid) axis of every array, jitted once per signature.

    ``fn`` is a kernel of :mod:`linear_theory.sweep.kernels`; its traced body (``__wrapped__``)
    goes inside, since XLA options can only be set on the outermost jit.
    """
    P = jax.sharding.PartitionSpec
    body = fn.__wrapped__

    def spec(nd: int):
        return P(*([None] * (nd - 1)), "g")

    local = jax.shard_map(lambda s, *xs: body(*xs, s, **dict(static)), mesh=mesh,
                          in_specs=(P(), *(spec(nd) for nd in ndims)),
                          out_specs=(spec(ndims[0]), spec(ndims[1]), P("g")))
    return jax.jit(local, compiler_options=compiler_options())


def _run_stage(fn: Callable, mesh: jax.sharding.Mesh | None, arrays: list[jax.Array], steps: jax.Array,
               **static: Any) -> tuple:
    """Run a batched stage kernel, split over the grid axis across devices when there are several."""
    if mesh is None:
        return fn(*arrays, steps, **static)
    return _sharded(fn, mesh, tuple(x.ndim for x in arrays), tuple(sorted(static.items())))(steps, *arrays)


def run_points(plan: SweepPlan, chunk_id: int) -> pd.DataFrame:
    """Rows of one chunk (the unit of resumption), computed with the batched kernels."""
    gi, pts = plan.chunks[chunk_id]
    n, h, s_pre, s_post, s_ft, precision, path = plan.groups[gi].key
    dtype = enable_precision(precision)
    pc = PointConfigs(plan.base, plan.axes)
    idx = pc.index(pts)
    structs, inv = pc.unique_structs(idx)
    cfgs = [pc.config(k) for k in structs]  # (U,) distinct structural configs; point p uses cfgs[inv[p]]
    P = len(pts)
    sc = {f.split(".", 1)[1]: pc.scalar_values(f, idx, cfgs, inv) for f in SCALAR_FIELDS}
    W1u, W2u, limu, sigu, covu = [], [], [], [], []
    for cfg in cfgs:
        tm = build_task(cfg.task)
        w1, w2 = initial_weights(cfg, tm)
        limu.append(divergence_limit(tm, w1, w2))
        W1u.append(tm.U.T @ w1)  # rotated: U^T W1 (n, h)
        W2u.append(w2 @ tm.V)  # W2 V (h, n)
        sigu.append([tm.pre.sigma, tm.post.sigma, tm.ft.sigma])
        covu.append([tm.pre.cov, tm.post.cov, tm.ft.cov])
    W1, W2, limit = np.asarray(W1u)[inv], np.asarray(W2u)[inv], np.asarray(limu)[inv]
    sig3 = np.moveaxis(np.asarray(sigu)[inv], 1, 0)  # (3, P, n) pre/post/ft singular values
    cov3 = np.moveaxis(np.asarray(covu)[inv], 1, 0)  # (3, P, n) input variances
    al, rp = sc["pre.mix_fraction"][:, None], sc["post.replay"][:, None]
    cp, sp, cq, sq, cf, sf = cov3[0], sig3[0], cov3[1], sig3[1], cov3[2], sig3[2]
    stage_mt = {  # per stage (m, t), each (P, n): mixture input variances and targets
        "pre": ((1 - al) * cp + al * cq, (1 - al) * cp * sp + al * cq * sq),
        "post": ((1 - rp) * cq + rp * cp, (1 - rp) * cq * sq + rp * cp * sp),
        "ft": (cf, cf * sf),
    }
    kappa = sc["post.dropout"] / (1.0 - sc["post.dropout"])
    zero = np.zeros(P)
    stage_par = {"pre": (zero, zero, sc["pre.lr"], s_pre), "post": (sc["post.reg"], kappa, sc["post.lr"], s_post),
                 "ft": (zero, zero, sc["ft.lr"], s_ft)}

    if path == "spectral":
        thetas, alive_after = _spectral_chunk(np.einsum("pii->pi", W1), np.einsum("pii->pi", W2), stage_mt,
                                              stage_par, limit, dtype)
    else:
        thetas, alive_after = _full_chunk(W1, W2, stage_mt, stage_par, limit, dtype, plan.chunk_size)
    return sweep_rows(plan.axes, pts, idx, cfgs, inv, path, thetas, alive_after, sig3, cov3, sc["pre.mix_fraction"])


def _full_chunk(W1: np.ndarray, W2: np.ndarray, stage_mt: dict, stage_par: dict, limit: np.ndarray,
                dtype, chunk_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Full-matrix path for one chunk: W1 (P, n, h), W2 (P, h, n) rotated. Returns stage-end
    products theta (P, n, n) and the alive mask after each stage.

    With several JAX devices the batch is split across them (``shard_map``); on a multi-core
    CPU expose them with ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``.
    """
    P = W1.shape[0]
    mesh = _device_mesh()
    ndev = 1 if mesh is None else len(mesh.devices)
    B = _bucket(P, chunk_size, ndev * (FULL_TILE if P >= FULL_TILE * ndev else 1))

    def dev(x: np.ndarray) -> jax.Array:  # (P, ...) host -> batch-last (..., B) device, edge-padded
        x = np.moveaxis(np.asarray(x, dtype=np.float64), 0, -1)
        pad = [(0, 0)] * (x.ndim - 1) + [(0, B - P)]
        return jnp.asarray(np.pad(x, pad, mode="edge"), dtype=dtype)

    def host(x: jax.Array) -> np.ndarray:  # batch-last device -> (P, ...) float64 host
        return np.moveaxis(np.asarray(x, dtype=np.float64), -1, 0)[:P]

    x, y = dev(W1), dev(W2)
    alive = jnp.asarray(np.ones(B, dtype=bool))
    lim_d = dev(limit)
    # tiles keep a tile's state in a CPU core's cache for all steps; a GPU runs the whole batch
    # per step (tiles there only serialise the work: 12x slower on an H100)
    on_cpu = jax.default_backend() == "cpu"
    tile = FULL_TILE if on_cpu and B % (FULL_TILE * ndev) == 0 and B > FULL_TILE * ndev else None
    thetas = {"init": np.einsum("pij,pjk->pik", W1, W2)}
    alive_after: dict[str, np.ndarray] = {}
    for s in STAGES:
        reg, kap, lr, steps = stage_par[s]
        m, t = stage_mt[s]
        if steps > 0:
            x, y, alive = _run_stage(full_stage, mesh, [x, y, dev(m), dev(t), dev(reg), dev(kap), dev(lr), lim_d, alive],
                                     jnp.asarray(steps, dtype=jnp.int32), use_reg=bool(np.any(reg > 0)),
                                     use_drop=bool(np.any(kap > 0)), tile=tile)
        thetas[s] = np.einsum("pij,pjk->pik", host(x), host(y))
        alive_after[s] = np.asarray(alive)[:P].copy()
    return thetas, alive_after


def _distinct_rows(cols: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact deduplication of rows given as equal-length float64 columns.

    Returns (first, inv): indices of one representative per distinct row and, per row, the
    index of its representative in ``first``. Rows are hashed (pandas' vectorised hash +
    factorize, O(rows)); the result is then verified element by element, and a hash
    collision falls back to an exact sort-based ``np.unique``.
    """
    h = np.zeros(len(cols[0]), dtype=np.uint64)
    for c in cols:
        h = (h * np.uint64(0x9E3779B97F4A7C15)) ^ pd.util.hash_array(np.ascontiguousarray(c))
    codes, _ = pd.factorize(h)
    first = np.full(codes.max() + 1 if len(codes) else 0, -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # first occurrence of each code
    if all(np.array_equal(c[first][codes], c) for c in cols):
        return first, codes
    rec = np.ascontiguousarray(np.stack(cols, axis=1))
    _, first, inv = np.unique(rec.view(np.dtype((np.void, rec.dtype.itemsize * rec.shape[1]))).ravel(),
                              return_index=True, return_inverse=True)
    return first, inv.ravel()


def _spectral_chunk(a: np.ndarray, b: np.ndarray, stage_mt: dict, stage_par: dict, limit: np.ndarray,
                    dtype) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Spectral path for one chunk: a, b (P, n) diagonals of the rotated weights.

    Modes are decoupled, so a mode's trajectory is a function of its own scalars
    (a, b, m, t, reg, kappa, lr) only. Each stage simulates every *distinct* mode once (exact
    deduplication on the bit patterns) and scatters the results back: on an alpha x beta grid
    the invariant modes are shared by all points and the inconsistent ones by each alpha.
    Returns the stage-end diagonals theta_ii (P, n) and the alive mask after each stage.
    """
    P, n = a.shape
    alive = np.ones(P, dtype=bool)
    thetas = {"init": a * b}
    alive_after: dict[str, np.ndarray] = {}
    for s in STAGES:
        reg, kap, lr, steps = stage_par[s]
        m, t = stage_mt[s]
        if steps > 0:
            lr_eff = np.where(alive, lr, 0.0)
            cols7 = [a.ravel(), b.ravel(), np.asarray(m, np.float64).ravel(), np.asarray(t, np.float64).ravel(),
                     np.repeat(reg, n), np.repeat(kap, n), np.repeat(lr_eff, n)]
            first, inv = _distinct_rows(cols7)
            u = np.stack([c[first] for c in cols7], axis=1)  # (U, 7) distinct modes
            U = len(u)
            Bu = _bucket(U, U, 1)

            def dev(col: np.ndarray) -> jax.Array:
                return jnp.asarray(np.pad(col, (0, Bu - U), mode="edge"), dtype=dtype)

            cols = [dev(u[:, j]) for j in range(7)]
            an, bn, fin = spectral_stage(cols[0][None, :], cols[1][None, :], cols[2][None, :], cols[3][None, :],
                                       cols[4], cols[5], cols[6], jnp.full((Bu,), jnp.inf, dtype),
                                       jnp.ones(Bu, dtype=bool), jnp.asarray(steps, dtype=jnp.int32),
                                       use_reg=bool(np.any(reg > 0)), use_drop=bool(np.any(kap > 0)))
            a = np.asarray(an, dtype=np.float64)[0, :U][inv.ravel()].reshape(P, n)
            b = np.asarray(bn, dtype=np.float64)[0, :U][inv.ravel()].reshape(P, n)
            fin_p = np.asarray(fin)[:U][inv.ravel()].reshape(P, n).all(axis=1)  # kernel zeroes non-finite modes
            big = np.maximum(np.abs(a), np.abs(b)).max(axis=1)
            ok = alive & fin_p & (big < limit)
            a = np.where(ok[:, None], a, 0.0)
            b = np.where(ok[:, None], b, 0.0)
            alive = ok
        thetas[s] = a * b
        alive_after[s] = alive.copy()
    return thetas, alive_after


def sweep_frame(base: SimConfig, axes: list[Axis], *, method: str = "auto", chunk_size: int | None = None,
                progress: bool = False, desc: str = "sweep") -> pd.DataFrame:
    """All rows of a sweep, in memory (no files): the engine behind ``frontier`` and friends."""
    from tqdm import tqdm

    plan = make_plan(base, axes, method=method, chunk_size=chunk_size)
    frames = []
    with tqdm(total=plan.n_points, unit="cfg", disable=not progress, file=sys.stderr, desc=desc) as bar:
        for c in range(len(plan.chunks)):
            frames.append(run_points(plan, c))
            bar.update(len(frames[-1]))
    return pd.concat(frames, ignore_index=True).sort_values("point", kind="stable").reset_index(drop=True)


def use_cpu_devices(n: int | None) -> int:
    """Expose ``n`` XLA CPU devices (default: the usable cores) so the full path splits the grid
    over the cores (XLA runs each of the engine's small fused loops on one thread).

    Only possible before JAX runs its first computation; later calls keep the current devices.
    Returns the number of devices in use.
    """
    if n is not None and n < 1:
        raise ConfigError("--cpu-devices", f"must be >= 1, got {n}")
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    if n > 1:
        try:
            jax.config.update("jax_num_cpu_devices", int(n))
        except RuntimeError:  # the backend is already initialised (e.g. called in-process)
            pass
    return jax.device_count()
