"""The plan of a theory sweep: which grid points run together, in which chunks, with which hash.

1. The grid is the Cartesian product of the axes (first axis slowest); point ``p`` has the
   multi-index ``np.unravel_index(p, shape)``.
2. Points are grouped by what fixes array shapes and loop lengths (n, width, steps, precision,
   code path); each group is cut into chunks of ``chunk_size`` points (group-major order).
   Chunk ``c`` of the global list belongs to shard ``c % N``.
3. The plan's :attr:`SweepPlan.hash` (config, axes, method, chunk size, :data:`KERNEL_VERSION`)
   names the folder of its chunk files, so a resumed sweep never mixes in another plan's chunks.

Stage scalars (:data:`SCALAR_FIELDS`) enter the kernels as per-point arrays; every other axis is
*structural* and is applied once per distinct combination (:class:`PointConfigs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.io import stable_hash
from linear_theory.config import SimConfig
from linear_theory.simulate import spectral_applicable
from linear_theory.sweep.grid import Axis, apply_values
from linear_theory.sweep.kernels import FULL_TILE, flops_full_step

__all__ = ["Group", "SweepPlan", "PointConfigs", "make_plan", "default_chunk_size", "SCALAR_FIELDS",
           "KERNEL_VERSION"]

#: stage-scalar fields that enter the kernels as per-point arrays (no recompilation)
SCALAR_FIELDS = ("stages.pre.mix_fraction", "stages.pre.lr", "stages.post.lr", "stages.post.reg",
                 "stages.post.replay", "stages.post.dropout", "stages.ft.lr")
#: bump when the kernels' numerics or the row columns change (enters the plan hash, so chunk
#: files of an older version are never mixed into a resumed sweep)
KERNEL_VERSION = 2
_NOMINAL_GFLOPS = {"full": 30.0, "spectral": 3.0}  # per device, for the printed time estimate only


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


class PointConfigs:
    """Per-point configs without building one dataclass per point.

    Structural axes (everything outside :data:`SCALAR_FIELDS`, plus ``mix_fraction`` when the
    init is ``ideal``, which it shapes) are applied once per distinct combination and cached;
    stage scalars are read as vectors.
    """

    def __init__(self, base: SimConfig, axes: tuple[Axis, ...]):
        self.base, self.axes = base, axes
        self.shape = tuple(len(a.values) for a in axes)
        self._cache: dict[tuple, SimConfig] = {}
        ideal_possible = base.model.init == "ideal" or any(
            a.path == "model.init" and "ideal" in a.values for a in axes)
        self.struct = [i for i, a in enumerate(axes)
                       if a.path not in SCALAR_FIELDS or (ideal_possible and a.path == "stages.pre.mix_fraction")]
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
    tile = FULL_TILE if path == "full" else 1024
    c = max(tile, int(128e6 // per_point) // tile * tile)
    return min(c, 65536)


def make_plan(base: SimConfig, axes: list[Axis], *, method: str = "auto",
              chunk_size: int | None = None) -> SweepPlan:
    """Group and chunk the grid (validates every structural combination first)."""
    if method not in ("auto", "full", "spectral"):
        raise ConfigError("--method", f"must be auto, full or spectral, got {method!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError("--chunk-size", f"must be a positive integer, got {chunk_size}")
    pc = PointConfigs(base, tuple(axes))
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
