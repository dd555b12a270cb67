"""Vectorised, chunked, resumable sweeps of the three-stage simulation over any config fields.

Command (see ``docs/sweeps.md``)::

    python -m linear_theory sweep --config configs/theory/sweep_alpha_beta.yaml \
        --grid alpha=0:1:64 --grid beta=0.1:4:64 --out results/theory/sweep

How it works:

1. The grid is the Cartesian product of the axes (first axis slowest); point ``p`` has the
   multi-index ``np.unravel_index(p, shape)``.
2. Points are grouped by what fixes array shapes and loop lengths (n, width, steps, precision,
   code path); each group is cut into chunks of ``chunk_size`` points (group-major order).
   Chunk ``c`` of the global list belongs to shard ``c % N``.
3. A chunk runs the batched GD of :mod:`linear_theory.sweep_kernels` (one compiled loop per
   stage for the whole chunk) and is saved atomically as ``DIR/chunks/<plan hash>/cNNNNNN.parquet``.
   A rerun skips finished chunks, so an interrupted sweep resumes and yields the same file.
4. ``sweep.parquet``/``sweep.csv`` hold one tidy row per point sorted by ``point``;
   ``sweep.json`` holds the resolved config, the axes, the plan and the provenance.

Columns: ``point``, the axis paths, ``method``, ``L_pretrain``, ``L_im``, ``L_ret``, ``L_ft``,
``L_pre``, ``Delta`` (= L_ret - L_im, Theorem C.17), block averages of diag(U^T theta V)
``{inv,inc,spec}_{init,pre,post,ft}``, ``offdiag_{pre,post,ft}``, ``diverged``,
``diverged_stage``, and the closed-form assumption flags of
:mod:`linear_theory.sweep_assumptions`.
"""

from __future__ import annotations

import argparse
import functools
import io as _io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.io import atomic_write_bytes, atomic_write_json, stable_hash
from early_exposure.provenance import provenance
from linear_theory.config import SimConfig, load_config
from linear_theory.simulate import enable_precision, initial_weights, spectral_applicable
from linear_theory.sweep_assumptions import assumption_flags
from linear_theory.sweep_grid import Axis, apply_values, parse_grid
from linear_theory.sweep_kernels import compiler_options, flops_full_step, full_stage, spectral_stage
from linear_theory.tasks import blocks, build_task

__all__ = [
    "SweepPlan", "make_plan", "run_points", "run_sweep", "sweep_frame", "merge_parts", "parse_shard",
    "LOSS_COLUMNS", "run_sweep_cli", "run_merge_cli", "KERNEL_VERSION", "use_cpu_devices",
]

LOSS_COLUMNS = ("L_pretrain", "L_im", "L_ret", "L_ft", "L_pre")
STAGE_KEYS = ("init", "pre", "post", "ft")
BLOCK_KEYS = (("inv", "invariant"), ("inc", "inconsistent"), ("spec", "specialized"))
#: stage-scalar fields that enter the kernels as per-point arrays (no recompilation)
SCALAR_FIELDS = ("stages.pre.alpha", "stages.pre.lr", "stages.post.lr", "stages.post.reg",
                 "stages.post.replay", "stages.post.dropout", "stages.ft.lr")
#: bump when the kernels' numerics or the row columns change (enters the plan hash, so chunk
#: files of an older version are never mixed into a resumed sweep)
KERNEL_VERSION = 2
_EXPLODE = 1e6  # same divergence threshold as linear_theory.simulate
_FULL_TILE = 256  # batch tile of the full path (keeps a tile's weights in L2 for all steps)
_NOMINAL_GFLOPS = {"full": 30.0, "spectral": 3.0}  # per device, for the printed time estimate only


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Group:
    """Points sharing shapes and loop lengths (one compiled program per chunk size)."""

    key: tuple  # (n, h, steps_pre, steps_post, steps_ft, precision, path)
    points: np.ndarray  # (P_g,) global point indices, ascending


@dataclass(frozen=True)
class SweepPlan:
    """Everything that determines the numbers of a sweep (its hash names the chunk folder)."""

    base: SimConfig
    axes: tuple[Axis, ...]
    method: str
    chunk_size: int
    groups: tuple[Group, ...]
    chunks: tuple[tuple[int, np.ndarray], ...] = field(repr=False)  # (group id, point indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    @property
    def n_points(self) -> int:
        return int(math.prod(self.shape))

    def spec(self) -> dict[str, Any]:
        return {"config": to_dict(self.base),
                "axes": [{"path": a.path, "values": list(a.values), "spacing": a.spacing} for a in self.axes],
                "method": self.method, "chunk_size": self.chunk_size, "kernel_version": KERNEL_VERSION}

    @property
    def hash(self) -> str:
        return stable_hash(self.spec())

    def estimate_seconds(self) -> float:
        total = 0.0
        for g in self.groups:
            n, h, s1, s2, s3, _, path = g.key
            per = flops_full_step(n, h) if path == "full" else 10 * n
            rate = _NOMINAL_GFLOPS[path] * (jax.device_count() if path == "full" else 1)  # full: split over devices
            total += per * (s1 + s2 + s3) * len(g.points) / (rate * 1e9)
        return total


class _PointConfigs:
    """Per-point configs without building one dataclass per point.

    Structural axes (everything outside :data:`SCALAR_FIELDS`, plus alpha when the init is
    ``ideal``) are applied once per distinct combination and cached; stage scalars are read
    as vectors.
    """

    def __init__(self, base: SimConfig, axes: tuple[Axis, ...]):
        self.base, self.axes = base, axes
        self.shape = tuple(len(a.values) for a in axes)
        self._cache: dict[tuple, SimConfig] = {}
        ideal_possible = base.model.init == "ideal" or any(
            a.path == "model.init" and "ideal" in a.values for a in axes)
        self.struct = [i for i, a in enumerate(axes)
                       if a.path not in SCALAR_FIELDS or (ideal_possible and a.path == "stages.pre.alpha")]
        self.scalar = [i for i in range(len(axes)) if i not in self.struct]

    def index(self, points: np.ndarray) -> np.ndarray:
        """(P,) point ids -> (P, n_axes) value indices."""
        return np.stack(np.unravel_index(points, self.shape), axis=1) if self.shape else np.zeros((len(points), 0), int)

    def unique_structs(self, idx: np.ndarray) -> tuple[list[tuple], np.ndarray]:
        """Distinct structural combinations among ``idx`` (P, n_axes) and each point's slot (P,)."""
        if not self.struct:
            return [()], np.zeros(len(idx), dtype=np.int64)
        uniq, inv = np.unique(idx[:, self.struct], axis=0, return_inverse=True)
        return [tuple(int(v) for v in row) for row in uniq], inv.reshape(-1)

    def config(self, key: tuple) -> SimConfig:
        cfg = self._cache.get(key)
        if cfg is None:
            values = {self.axes[i].path: self.axes[i].values[j] for i, j in zip(self.struct, key)}
            cfg = apply_values(self.base, values) if values else self.base
            self._cache[key] = cfg
        return cfg

    def scalar_values(self, path: str, idx: np.ndarray, cfgs: list[SimConfig], inv: np.ndarray) -> np.ndarray:
        """(P,) values of a stage scalar: the axis values if swept, else each point's config."""
        for i, a in enumerate(self.axes):
            if a.path == path:
                return np.asarray(a.values, dtype=np.float64)[idx[:, i]]
        _sec, stage, name = path.split(".")
        return np.asarray([getattr(getattr(c.stages, stage), name) for c in cfgs], dtype=np.float64)[inv]


def _path_for(cfg: SimConfig, method: str) -> str:
    ok = spectral_applicable(cfg)
    if method == "spectral" and not ok:
        raise ConfigError("--method", "spectral path needs width = n and init aligned/ideal (or paper with "
                          "basis=identity) at every grid point; use --method full or auto")
    return "spectral" if (method == "spectral" or (method == "auto" and ok)) else "full"


def _group_key(cfg: SimConfig, method: str) -> tuple:
    pre_steps = 0 if cfg.model.init == "ideal" else cfg.stages.pre.steps
    return (cfg.task.n, cfg.width, pre_steps, cfg.stages.post.steps, cfg.stages.ft.steps,
            cfg.precision, _path_for(cfg, method))


def default_chunk_size(n: int, h: int, path: str) -> int:
    """Points per chunk: about 128 MB of state per chunk, a multiple of the tile."""
    per_point = 8 * ((2 * n * h + 3 * n * n) * 4 if path == "full" else 12 * n)
    tile = _FULL_TILE if path == "full" else 1024
    c = max(tile, int(128e6 // per_point) // tile * tile)
    return min(c, 65536)


def make_plan(base: SimConfig, axes: list[Axis], *, method: str = "auto",
              chunk_size: int | None = None) -> SweepPlan:
    """Group and chunk the grid (validates every structural combination first)."""
    if method not in ("auto", "full", "spectral"):
        raise ConfigError("--method", f"must be auto, full or spectral, got {method!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError("--chunk-size", f"must be a positive integer, got {chunk_size}")
    pc = _PointConfigs(base, tuple(axes))
    P = int(math.prod(pc.shape))
    pts = np.arange(P)
    idx = pc.index(pts)
    structs, inv = pc.unique_structs(idx)
    gkeys = [_group_key(pc.config(sk), method) for sk in structs]  # validates every combination
    order = list(dict.fromkeys(gkeys[u] for u in inv[np.sort(np.unique(inv, return_index=True)[1])]))
    slot = np.asarray([order.index(g) for g in gkeys], dtype=np.int64)[inv]  # (P,) group of each point
    groups = tuple(Group(key=g, points=pts[slot == j]) for j, g in enumerate(order))
    if chunk_size is None:
        chunk_size = min(default_chunk_size(g.key[0], g.key[1], g.key[6]) for g in groups)
    chunks = []
    for gi, g in enumerate(groups):
        for s in range(0, len(g.points), chunk_size):
            chunks.append((gi, g.points[s:s + chunk_size]))
    return SweepPlan(base=base, axes=tuple(axes), method=method, chunk_size=int(chunk_size),
                     groups=groups, chunks=tuple(chunks))


# --------------------------------------------------------------------------- compute
def _bucket(size: int, chunk: int, mult: int) -> int:
    """Padded batch size: the chunk size, or the next power of two for a short last chunk."""
    b = 1
    while b < size:
        b *= 2
    b = min(b, max(chunk, size))
    return int(math.ceil(b / mult) * mult)


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

    ``fn`` is a kernel of :mod:`linear_theory.sweep_kernels`; its traced body (``__wrapped__``)
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
    pc = _PointConfigs(plan.base, plan.axes)
    idx = pc.index(pts)
    structs, inv = pc.unique_structs(idx)
    cfgs = [pc.config(k) for k in structs]  # (U,) distinct structural configs; point p uses cfgs[inv[p]]
    P = len(pts)
    sc = {f.split(".", 1)[1]: pc.scalar_values(f, idx, cfgs, inv) for f in SCALAR_FIELDS}
    W1u, W2u, limu, sigu, covu = [], [], [], [], []
    for cfg in cfgs:
        tm = build_task(cfg.task)
        w1, w2 = initial_weights(cfg, tm)
        max_target = float(max(np.max(np.abs(tm.pre.sigma)), np.max(np.abs(tm.post.sigma)),
                               np.max(np.abs(tm.ft.sigma)), 0.0))
        limu.append(_EXPLODE * math.sqrt(1.0 + max_target) * max(1.0, float(np.max(np.abs(w1)) + np.max(np.abs(w2)))))
        W1u.append(tm.U.T @ w1)  # rotated: U^T W1 (n, h)
        W2u.append(w2 @ tm.V)  # W2 V (h, n)
        sigu.append([tm.pre.sigma, tm.post.sigma, tm.ft.sigma])
        covu.append([tm.pre.cov, tm.post.cov, tm.ft.cov])
    W1, W2, limit = np.asarray(W1u)[inv], np.asarray(W2u)[inv], np.asarray(limu)[inv]
    sig3 = np.moveaxis(np.asarray(sigu)[inv], 1, 0)  # (3, P, n) pre/post/ft singular values
    cov3 = np.moveaxis(np.asarray(covu)[inv], 1, 0)  # (3, P, n) input variances
    al, rp = sc["pre.alpha"][:, None], sc["post.replay"][:, None]
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
    return _rows(plan, pts, idx, cfgs, inv, path, thetas, alive_after, sig3, cov3, sc["pre.alpha"])


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
    B = _bucket(P, chunk_size, ndev * (_FULL_TILE if P >= _FULL_TILE * ndev else 1))

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
    tile = _FULL_TILE if on_cpu and B % (_FULL_TILE * ndev) == 0 and B > _FULL_TILE * ndev else None
    thetas = {"init": np.einsum("pij,pjk->pik", W1, W2)}
    alive_after: dict[str, np.ndarray] = {}
    for s in ("pre", "post", "ft"):
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
    for s in ("pre", "post", "ft"):
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


def _rows(plan: SweepPlan, pts: np.ndarray, idx: np.ndarray, cfgs: list[SimConfig], inv: np.ndarray, path: str,
          thetas: dict[str, np.ndarray], alive: dict[str, np.ndarray], sig3: np.ndarray, cov3: np.ndarray,
          alpha: np.ndarray) -> pd.DataFrame:
    """Tidy rows from the stage-end products theta (P, n, n) in the singular basis."""
    P = len(pts)
    nan = np.full(P, np.nan)
    L = {t: {s: _losses(thetas[s], sig3[j], cov3[j]) for s in STAGE_KEYS} for j, t in enumerate(("pre", "post", "ft"))}
    ok_pre, ok_post, ok_ft = alive["pre"], alive["post"], alive["ft"]
    df = pd.DataFrame({"point": pts.astype(np.int64)})
    for i, a in enumerate(plan.axes):
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
    for s in STAGE_KEYS:
        d = thetas[s] if diag_only else np.einsum("pii->pi", thetas[s])
        for short, name in BLOCK_KEYS:
            sl = bl[name]
            v = d[:, sl].mean(axis=1) if sl.stop > sl.start else nan
            df[f"{short}_{s}"] = np.where(ok[s], v, nan)
    for s in ("pre", "post", "ft"):
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


# --------------------------------------------------------------------------- files
def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N; ``None`` -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i_s, n_s = text.split("/")
        i, N = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError("--shard", f"expected i/N with integers (0 <= i < N), got {text!r}") from None
    if N < 1 or not 0 <= i < N:
        raise ConfigError("--shard", f"shard index out of range: need 0 <= i < N, got {text!r}")
    return i, N


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = _io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _chunk_path(out: Path, plan: SweepPlan, c: int) -> Path:
    return out / "chunks" / plan.hash / f"c{c:06d}.parquet"


def write_outputs(df: pd.DataFrame, out: Path, meta: dict[str, Any], *, plots: bool = True) -> None:
    """``sweep.parquet``, ``sweep.csv``, ``sweep.json`` (+ heatmaps) for a complete sweep."""
    df = df.sort_values("point", kind="stable").reset_index(drop=True)
    atomic_write_bytes(out / "sweep.parquet", _parquet_bytes(df))
    buf = _io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode("utf-8"))
    if plots:
        from linear_theory.sweep_plots import heatmaps

        meta = dict(meta, figures=[p.name for p in heatmaps(df, meta["axes"], out)])
    atomic_write_json(out / "sweep.json", meta)


def run_sweep(base: SimConfig, axes: list[Axis], out: str | Path, *, method: str = "auto",
              chunk_size: int | None = None, shard: tuple[int, int] = (0, 1), plots: bool = True,
              progress: bool = True, max_chunks: int | None = None,
              on_chunk: Callable[[int], None] | None = None,
              log: Callable[..., None] = print) -> pd.DataFrame | None:
    """Run (or resume) a sweep into ``out``; returns the rows (None if stopped by ``max_chunks``).

    ``on_chunk(c)`` is called after each chunk file is written (tests use it to interrupt).
    """
    out = Path(out)
    plan = make_plan(base, axes, method=method, chunk_size=chunk_size)
    i, N = shard
    mine = [c for c in range(len(plan.chunks)) if c % N == i]
    state = out / "plan.json"
    if state.exists():
        import json

        old = json.loads(state.read_text())
        if old.get("hash") != plan.hash:
            raise ConfigError("--out", f"{out} holds a different sweep (plan {old.get('hash')}, this one {plan.hash}); "
                              "use a new --out or delete it")
    n_pts = sum(len(plan.chunks[c][1]) for c in mine)
    done = [c for c in mine if _chunk_path(out, plan, c).exists()]
    log(f"sweep plan {plan.hash}: {plan.n_points} configs on grid {'x'.join(map(str, plan.shape))} "
        f"({', '.join(a.path for a in plan.axes)}); {len(plan.groups)} group(s), {len(plan.chunks)} chunk(s) "
        f"of <= {plan.chunk_size}; shard {i}/{N}: {len(mine)} chunk(s), {n_pts} configs, {len(done)} already done; "
        f"devices: {jax.device_count()}; rough estimate {plan.estimate_seconds() / N:.1f} s")
    atomic_write_json(state, {"hash": plan.hash, "spec": plan.spec(), "shard": [i, N]})
    from tqdm import tqdm

    bar = tqdm(total=n_pts, unit="cfg", disable=not progress, file=sys.stderr, desc="sweep")
    bar.update(sum(len(plan.chunks[c][1]) for c in done))
    ran = 0
    t0 = time.perf_counter()
    for c in mine:
        path = _chunk_path(out, plan, c)
        if path.exists():
            continue
        if max_chunks is not None and ran >= max_chunks:
            bar.close()
            log(f"stopped after {ran} chunk(s); rerun the same command to resume")
            return None
        rows = run_points(plan, c)
        atomic_write_bytes(path, _parquet_bytes(rows))
        ran += 1
        bar.update(len(rows))
        if on_chunk is not None:
            on_chunk(c)
    bar.close()
    frames = [pd.read_parquet(_chunk_path(out, plan, c)) for c in mine]
    df = pd.concat(frames, ignore_index=True).sort_values("point", kind="stable").reset_index(drop=True)
    meta = {"kind": "sweep", "hash": plan.hash, "spec": plan.spec(), "shard": [i, N],
            "axes": plan.spec()["axes"], "n_points": plan.n_points, "rows": len(df),
            "seconds": time.perf_counter() - t0, "devices": jax.device_count(), "provenance": provenance()}
    if N == 1:
        write_outputs(df, out, meta, plots=plots)
    else:
        atomic_write_bytes(out / f"sweep.part{i}of{N}.parquet", _parquet_bytes(df))
        atomic_write_json(out / f"sweep.part{i}of{N}.json", meta)
    log(f"wrote {len(df)} rows to {out} ({int(df['diverged'].sum())} diverged)")
    return df


def merge_parts(parts: list[str | Path], out: str | Path, *, plots: bool = True) -> pd.DataFrame:
    """Combine the ``--shard i/N`` outputs of one sweep into the file a single run writes."""
    import json

    metas, frames = [], []
    for d in map(Path, parts):
        found = sorted(d.glob("sweep.part*of*.json"))
        if not found:
            raise ConfigError("merge", f"{d} holds no sweep part (sweep.partIofN.json); run sweep --shard i/N there")
        for mpath in found:
            meta = json.loads(mpath.read_text())
            metas.append(meta)
            frames.append(pd.read_parquet(mpath.with_suffix(".parquet")))
    hashes = sorted({m["hash"] for m in metas})
    if len(hashes) != 1:
        raise ConfigError("merge", f"parts come from different sweeps (plans {', '.join(hashes)}); "
                          "merge only shards of one command")
    N = metas[0]["shard"][1]
    got = sorted(m["shard"][0] for m in metas)
    if any(m["shard"][1] != N for m in metas) or got != list(range(N)):
        missing = sorted(set(range(N)) - set(got))
        raise ConfigError("merge", f"need each of the {N} shards exactly once; got {got}"
                          + (f", missing {missing}" if missing else ""))
    df = pd.concat(frames, ignore_index=True).sort_values("point", kind="stable").reset_index(drop=True)
    meta = dict(metas[0], shard=[0, 1], rows=len(df), merged_from=[str(p) for p in parts],
                seconds=sum(m["seconds"] for m in metas), provenance=provenance())
    if len(df) != meta["n_points"]:
        raise ConfigError("merge", f"parts hold {len(df)} rows, the sweep has {meta['n_points']}")
    write_outputs(df, Path(out), meta, plots=plots)
    return df


# --------------------------------------------------------------------------- CLI handlers
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


def run_sweep_cli(args: argparse.Namespace) -> int:
    """``python -m linear_theory sweep`` (see :func:`linear_theory.cli_sweep.add_subcommands`)."""
    cpu_devices = getattr(args, "cpu_devices", None)
    if cpu_devices is not None and cpu_devices < 1:
        raise ConfigError("--cpu-devices", f"must be >= 1, got {cpu_devices}")
    cfg = load_config(args.config, args.set)
    axes = parse_grid(args.grid, cfg)
    shard = parse_shard(args.shard)
    use_cpu_devices(cpu_devices)
    run_sweep(cfg, axes, args.out, method=args.method, chunk_size=args.chunk_size, shard=shard,
              plots=not args.no_plots, max_chunks=args.max_chunks)
    return 0


def run_merge_cli(args: argparse.Namespace) -> int:
    """``python -m linear_theory merge PART_DIR ... --out DIR``."""
    merge_parts(args.parts, args.out, plots=not args.no_plots)
    print(f"merged {len(args.parts)} part dir(s) into {args.out}")
    return 0
