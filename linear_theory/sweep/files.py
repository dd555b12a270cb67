"""Sweeps on disk: resumable chunk files, shards, merge, and the finished sweep's files.

A chunk of the plan (:mod:`linear_theory.sweep.plan`) is computed by
:func:`linear_theory.sweep.engine.run_points` and saved atomically as
``DIR/chunks/<plan hash>/cNNNNNN.parquet``. A rerun skips finished chunks, so an interrupted
sweep resumes and yields the same bytes. ``--shard i/N`` runs the chunks ``c % N == i`` and
writes ``sweep.partIofN.{parquet,json}``; :func:`merge_parts` turns the N parts into the files
of an unsharded run: ``sweep.parquet``/``sweep.csv`` (one tidy row per point sorted by
``point``, columns in :mod:`linear_theory.sweep.rows`), ``sweep.json`` (resolved config, axes,
plan, provenance) and the heatmaps of :mod:`linear_theory.sweep.plots`.
"""

from __future__ import annotations

import io as _io
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import pandas as pd

from early_exposure.errors import ConfigError
from early_exposure.integrity import check, read_json, report, seal, structural_check, unit_lock
from early_exposure.io import atomic_write_bytes, atomic_write_json
from early_exposure.provenance import provenance
from linear_theory.config import SimConfig
from linear_theory.sweep.engine import run_points
from linear_theory.sweep.grid import Axis
from linear_theory.sweep.plan import SweepPlan, make_plan

__all__ = ["run_sweep", "merge_parts", "parse_shard", "write_outputs"]


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


def _chunk_done(path: Path, log: Callable[..., None]) -> bool:
    """Whether chunk file ``path`` exists and is intact (its manifest, else a readable
    parquet footer); a damaged one is reported in one line and will be recomputed."""
    if not path.exists():
        return False
    why = check(path)
    if why is not None:
        report(why, "recomputing this chunk", log)
    return why is None


def write_outputs(df: pd.DataFrame, out: Path, meta: dict[str, Any], *, plots: bool = True) -> None:
    """``sweep.parquet``, ``sweep.csv``, ``sweep.json`` (+ heatmaps) for a complete sweep."""
    df = df.sort_values("point", kind="stable").reset_index(drop=True)
    atomic_write_bytes(out / "sweep.parquet", _parquet_bytes(df))
    buf = _io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode("utf-8"))
    if plots:
        from linear_theory.sweep.plots import heatmaps

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
    old, why = read_json(state) if state.exists() else ({}, None)
    if why is not None:
        report(why, "rewriting it", log)
    elif state.exists():
        if not isinstance(old, dict) or old.get("hash") != plan.hash:
            raise ConfigError("--out", f"{out} holds a different sweep (plan {dict(old).get('hash')}, this one "
                              f"{plan.hash}); "
                              "use a new --out or delete it")
    n_pts = sum(len(plan.chunks[c][1]) for c in mine)
    done = [c for c in mine if _chunk_done(_chunk_path(out, plan, c), log)]
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
    todo = [c for c in mine if c not in set(done)]
    for blocking in (False, True):  # chunks another process holds: skipped first, waited for after
        held = []
        for c in todo:
            path = _chunk_path(out, plan, c)
            if max_chunks is not None and ran >= max_chunks:
                bar.close()
                log(f"stopped after {ran} chunk(s); rerun the same command to resume")
                return None
            with unit_lock(path.with_suffix(".lock"), blocking=blocking) as got:
                if not got:
                    held.append(c)
                    continue
                if path.exists() and check(path) is None:  # finished by another process meanwhile
                    bar.update(len(plan.chunks[c][1]))
                    continue
                rows = run_points(plan, c)
                atomic_write_bytes(path, _parquet_bytes(rows))
                seal(path)
            ran += 1
            bar.update(len(rows))
            if on_chunk is not None:
                on_chunk(c)
        todo = held
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
    metas, frames = [], []
    for d in map(Path, parts):
        found = sorted(d.glob("sweep.part*of*.json"))
        if not found:
            raise ConfigError("merge", f"{d} holds no sweep part (sweep.partIofN.json); run sweep --shard i/N there")
        for mpath in found:
            meta, why = read_json(mpath)
            why = why or structural_check(mpath.with_suffix(".parquet"))
            if why is not None:
                raise ConfigError("merge", f"{why}; rerun its sweep --shard i/N command to rewrite the part")
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
