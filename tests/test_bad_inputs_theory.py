"""Bad input to the theory CLI (needs only the [theory] extra): each class exits 2 with one
line naming the field and the fix, before any work, and leaves the output location untouched.

Classes: a binary config file, ``--config`` naming a directory, ``--out`` under a regular
file (every theory command), ``sweep --shard`` with more shards than chunks, ``merge`` of a
truncated part, ``merge`` of parts split into different shard counts, absurd budgets.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from linear_theory.cli import main as theory_main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _listing(d: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(d)), p.stat().st_size) for p in d.rglob("*"))


def test_binary_config_file_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "bin.yaml"
    cfg.write_bytes(bytes(range(128, 256)) * 3)  # not UTF-8
    out = tmp_path / "out"
    assert theory_main(["run", "--config", str(cfg), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "--config" in line and "not a UTF-8 text file" in line and str(cfg) in line
    assert not out.exists()


def test_config_that_is_a_directory_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert theory_main(["assumptions", "--config", str(tmp_path), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "--config" in line and "is a directory" in line and "file not found" not in line
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["run"], ["verify"], ["latent"], ["matched"], ["assumptions"],
    ["sweep", "--grid", "mix_fraction=0:1:3", "--no-plots"], ["frontier"], ["compute-matched"],
])
def test_out_under_a_regular_file_fails_before_any_work(tmp_path, capsys, argv):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    assert theory_main([*argv, "--out", str(blocker / "sub")]) == 2
    # before the simulation: the slowest of these commands (verify, compute-matched) take many seconds
    assert time.perf_counter() - t0 < 5.0
    line = _one_line(capsys)
    assert line.startswith("error: --out:") and f"{blocker} is a file, not a directory" in line
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_out_that_is_a_regular_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert theory_main(["verify", "--out", str(blocker)]) == 2
    assert "exists and is not a directory" in _one_line(capsys)
    assert blocker.read_text() == "x"


def test_absurd_budget_names_the_field(tmp_path, capsys):
    out = tmp_path / "out"
    assert theory_main(["run", "--set", "stages.pre.steps=1e15", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "stages.pre.steps" in line and "10000000" in line
    assert not out.exists()


def test_more_shards_than_chunks_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    # 3 grid points in one chunk: a second shard would own nothing
    assert theory_main(["sweep", "--grid", "mix_fraction=0:1:3", "--chunk-size", "8", "--shard", "1/2",
                        "--no-plots", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: --shard:") and "only 1 chunk" in line and "--chunk-size" in line
    assert not out.exists()  # no plan.json either


def _cli(*argv: str) -> None:
    """A theory command that does real work, in its own process: JAX started in the pytest
    process would make later tests that fork (the Ray executor's) warn about os.fork()."""
    proc = subprocess.run([sys.executable, "-m", "linear_theory", *argv], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Shards 0/2, 1/2 and 1/3 of one 6-point sweep (chunks of 2 points: 3 chunks)."""
    root = tmp_path_factory.mktemp("parts")
    grid = ["--grid", "mix_fraction=0:1:6", "--chunk-size", "2", "--no-plots"]
    for shard, name in (("0/2", "p0of2"), ("1/2", "p1of2"), ("1/3", "p1of3")):
        _cli("sweep", *grid, "--shard", shard, "--out", str(root / name))
    return root


def test_merge_of_different_shard_counts_says_so(parts, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "merged"
    assert theory_main(["merge", str(parts / "p0of2"), str(parts / "p1of3"), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "different shard counts" in line and "0/2" in line and "1/3" in line
    assert not out.exists()


def test_merge_of_a_truncated_part_names_it(parts, tmp_path, capsys):
    import shutil

    capsys.readouterr()
    bad = tmp_path / "p1of2"
    shutil.copytree(parts / "p1of2", bad)
    part = bad / "sweep.part1of2.parquet"
    part.write_bytes(part.read_bytes()[:100])
    before = _listing(bad)
    out = tmp_path / "merged"
    assert theory_main(["merge", str(parts / "p0of2"), str(bad), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert str(part) in line and "damaged" in line and "rerun the sweep --shard" in line
    assert not out.exists() and _listing(bad) == before
    # the good parts still merge (the check does not refuse valid input)
    _cli("merge", str(parts / "p0of2"), str(parts / "p1of2"), "--no-plots", "--out", str(out))
    assert (out / "sweep.parquet").is_file()


def test_oversized_grid_is_refused_at_once(tmp_path, capsys):
    from linear_theory.sweep.grid import MAX_POINTS

    out = tmp_path / "sweep"
    t0 = time.perf_counter()
    # 1e8 x 1e5 points: building the first axis alone (1e8 values) would take minutes
    assert theory_main(["sweep", "--grid", "mix_fraction=0:1:100000000", "--grid", "beta=0.1:2:100000",
                        "--out", str(out)]) == 2
    assert time.perf_counter() - t0 < 5.0
    line = _one_line(capsys)
    assert line.startswith("error: --grid:") and str(MAX_POINTS) in line
    assert not out.exists()
