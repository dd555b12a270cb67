"""Theory sweep chunks are verified on resume, and locked per chunk.

- A truncated (or same-size corrupted) chunk file is reported in one line, recomputed, and
  the finished sweep equals the uninterrupted one byte for byte.
- A chunk whose lock another process holds is left to it and waited for; the chunk that
  process wrote is reused, not recomputed.
- A truncated part is refused by ``merge`` with one line naming it.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from early_exposure.errors import ConfigError
from early_exposure.integrity import manifest_path, unit_lock
from linear_theory.config import default_config
from linear_theory.sweep.files import merge_parts, run_sweep
from linear_theory.sweep.grid import parse_grid


def _setup():
    cfg = default_config().replace(["stages.pre.steps=40", "stages.post.steps=20", "stages.ft.steps=20",
                                    "stages.pre.lr=0.02", "model.init=random", "model.width=4"])
    return cfg, parse_grid(["mix_fraction=0:1:3", "beta=1,2"], cfg)


def _kw(log: list[str]) -> dict:
    return dict(chunk_size=2, plots=False, progress=False, log=lambda *a: log.append(" ".join(map(str, a))))


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg, axes = _setup()
    out = tmp_path_factory.mktemp("theory_whole")
    run_sweep(cfg, axes, out, **_kw([]))
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_chunk_is_detected_recomputed_and_the_result_equals_the_uninterrupted_one(
        whole: Path, tmp_path: Path, damage: str) -> None:
    cfg, axes = _setup()
    out = tmp_path / "resumed"
    run_sweep(cfg, axes, out, **_kw([]))
    chunks = sorted((out / "chunks").rglob("c*.parquet"))
    assert len(chunks) == 3 and all(manifest_path(c).is_file() for c in chunks)
    victim = chunks[1]
    data = victim.read_bytes()
    # truncated, or the same number of bytes with a flipped byte in the middle (footer intact)
    victim.write_bytes(data[: len(data) // 2] if damage == "truncate"
                       else data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    (out / "sweep.parquet").unlink()
    log: list[str] = []
    computed: list[int] = []
    run_sweep(cfg, axes, out, on_chunk=computed.append, **_kw(log))
    lines = [ln for ln in log if "damaged artefact" in ln]
    assert len(lines) == 1 and str(victim) in lines[0] and "recomputing" in lines[0]
    assert computed == [1]  # only the damaged chunk
    assert victim.read_bytes() == data
    for name in ("sweep.parquet", "sweep.csv"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()


def test_a_chunk_written_before_manifests_is_checked_structurally(whole: Path, tmp_path: Path) -> None:
    cfg, axes = _setup()
    out = tmp_path / "legacy"
    run_sweep(cfg, axes, out, **_kw([]))
    for m in (out / "chunks").rglob("*.manifest.json"):
        m.unlink()  # as an older version left them
    victim = sorted((out / "chunks").rglob("c*.parquet"))[2]
    victim.write_bytes(victim.read_bytes()[:-10])  # footer gone
    log: list[str] = []
    computed: list[int] = []
    run_sweep(cfg, axes, out, on_chunk=computed.append, **_kw(log))
    assert computed == [2] and sum("damaged artefact" in ln for ln in log) == 1
    assert (out / "sweep.parquet").read_bytes() == (whole / "sweep.parquet").read_bytes()


def _hold(lock: str, ready, release) -> None:
    with unit_lock(lock):
        ready.set()
        release.wait(60)


def test_a_chunk_locked_by_another_process_is_waited_for_and_reused(whole: Path, tmp_path: Path) -> None:
    """Another process holds chunk 0's lock: this run computes chunks 1 and 2 first, then
    waits; the holder writes chunk 0 (here: copied from the finished sweep, with its
    manifest) and releases; this run reuses it without computing it."""
    cfg, axes = _setup()
    out = tmp_path / "locked"
    src = sorted((whole / "chunks").rglob("c000000.parquet"))[0]
    target = out / src.relative_to(whole)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(target.with_suffix(".lock")), ready, release))
    holder.start()
    assert ready.wait(60)

    def finish_chunk0(c: int) -> None:
        if c == 2:  # the other process finishes chunk 0 while this run is busy elsewhere
            target.write_bytes(src.read_bytes())
            manifest_path(target).write_bytes(manifest_path(src).read_bytes())
            release.set()

    log: list[str] = []
    computed: list[int] = []
    t0 = time.time()
    run_sweep(cfg, axes, out, on_chunk=lambda c: (computed.append(c), finish_chunk0(c)), **_kw(log))
    holder.join(60)
    assert computed == [1, 2] and time.time() - t0 < 60
    assert (out / "sweep.parquet").read_bytes() == (whole / "sweep.parquet").read_bytes()


def test_merge_of_a_truncated_part_is_one_clear_error(tmp_path: Path) -> None:
    cfg, axes = _setup()
    for i in range(2):
        run_sweep(cfg, axes, tmp_path / f"part{i}", shard=(i, 2), **_kw([]))
    part = tmp_path / "part1" / "sweep.part1of2.parquet"
    part.write_bytes(part.read_bytes()[:50])
    with pytest.raises(ConfigError) as exc:
        merge_parts([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged", plots=False)
    assert str(part) in exc.value.message and "\n" not in exc.value.message
    assert not (tmp_path / "merged").exists()
