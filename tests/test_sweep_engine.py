"""Sweep engine: rows equal independent single ``simulate`` calls; shards, merge, resume, bad input.

References: :func:`linear_theory.simulate` (its own ``jax.grad`` full-matrix path, one config
at a time) for every number; hand-computed inequalities for the assumption flags; an
uninterrupted / unsharded run for resume and merge (byte-identical files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from early_exposure.errors import ConfigError
from linear_theory import default_config, simulate
from linear_theory.sweep.files import merge_parts, run_sweep
from linear_theory.sweep.flags import assumption_flags
from linear_theory.sweep.grid import apply_values, parse_grid
from linear_theory.sweep.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ("L_pretrain", "L_im", "L_ret", "L_ft", "L_pre")


def _small(extra: list[str] | None = None):
    base = default_config().replace(["stages.pre.steps=80", "stages.post.steps=30", "stages.ft.steps=30",
                                      "stages.pre.lr=0.02"])
    return base.replace(extra or [])


def _compare(df: pd.DataFrame, cfg, axes, rtol: float = 1e-10) -> int:
    """Every row against simulate(method='full') on the same point; returns rows checked."""
    checked = 0
    for _, row in df.iterrows():
        pc = apply_values(cfg, {a.path: row[a.path] for a in axes})
        ref = simulate(pc, method="full")
        assert bool(row["diverged"]) == ref.diverged
        if ref.diverged:
            assert row["diverged_stage"] == ref.diverged_stage
            assert np.isnan(row["L_ret"])
            continue
        for key in LOSSES:
            np.testing.assert_allclose(row[key], ref.losses[key], rtol=rtol, atol=1e-12, err_msg=key)
        for stage in ("pre", "post", "ft"):
            s = ref.spectra[stage]
            k = pc.task.k
            np.testing.assert_allclose(row[f"inv_{stage}"], s[: pc.task.n - 2 * k].mean(), rtol=rtol, atol=1e-12)
            np.testing.assert_allclose(row[f"spec_{stage}"], s[pc.task.n - k:].mean(), rtol=rtol, atol=1e-12)
            np.testing.assert_allclose(row[f"offdiag_{stage}"], ref.offdiag[stage], rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(row["Delta"], ref.losses["L_ret"] - ref.losses["L_im"], rtol=1e-9, atol=1e-11)
        checked += 1
    return checked


def _rows(cfg, grid, method="auto", chunk_size=None):
    from linear_theory.sweep.engine import run_points

    axes = parse_grid(grid, cfg)
    plan = make_plan(cfg, axes, method=method, chunk_size=chunk_size)
    df = pd.concat([run_points(plan, c) for c in range(len(plan.chunks))]).sort_values("point")
    return df.reset_index(drop=True), axes, plan


@pytest.mark.parametrize("extra,method,expect", [
    ([], "auto", "spectral"),
    ([], "full", "full"),
    (["model.init=random", "model.width=5", "stages.post.reg=0.1", "stages.post.dropout=0.2",
      "stages.post.replay=0.3"], "auto", "full"),
    (["task.basis=random", "stages.post.dropout=0.1", "stages.post.reg=0.05"], "auto", "full"),
    (["model.init=ideal", "stages.post.dropout=0.1", "stages.post.replay=0.2"], "auto", "spectral"),
])
def test_rows_equal_single_simulate_calls(extra, method, expect):
    """Batched sweep rows == one simulate() call per point (a different code path), float64."""
    cfg = _small(extra)
    df, axes, _ = _rows(cfg, ["mix_fraction=0:1:3", "beta=1,3"], method=method)
    assert len(df) == 6 and set(df["method"]) == {expect}
    assert _compare(df, cfg, axes) == 6


def test_tiled_lane_layout_rows_equal_simulate_at_sampled_points():
    """A grid big enough for the engine's tiled path (several 256-point tiles, 8-point float64
    lane blocks, padding): rows at the edges of lane blocks and tiles equal simulate()."""
    import linear_theory.sweep.engine as sweep_mod

    cfg = _small(["task.basis=random", "stages.post.dropout=0.1", "stages.post.reg=0.05",
                  "stages.pre.steps=20", "stages.post.steps=10", "stages.ft.steps=10"])
    axes = parse_grid(["mix_fraction=0:1:10", "beta=1:3:6", "post.lr=0.02:0.06:5"], cfg)
    plan = make_plan(cfg, axes, method="full")
    assert len(plan.chunks) == 1 and len(plan.chunks[0][1]) == 300 > sweep_mod.FULL_TILE
    df = sweep_mod.run_points(plan, 0).sort_values("point").reset_index(drop=True)
    assert list(df["point"]) == list(range(300)) and set(df["method"]) == {"full"}
    sample = df.iloc[[0, 7, 8, 15, 16, 131, 255, 256, 263, 299]]
    assert _compare(sample, cfg, axes) == 10


def test_rejected_compiler_options_fall_back_with_a_warning(monkeypatch):
    """An XLA that does not know the engine's (debug) compiler options: a warning, default
    compilation, and the same rows as simulate()."""
    import linear_theory.sweep.engine as sweep_mod
    import linear_theory.sweep.kernels as K

    monkeypatch.setattr(K, "COMPILER_OPTIONS", {"xla_cpu_no_such_option_for_this_test": "1"})
    for cached in (K.compiler_options, K._jitted, sweep_mod._sharded):
        cached.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="compiling without them"):
            assert K.compiler_options() == {}
        cfg = _small()
        df, axes, _ = _rows(cfg, ["mix_fraction=0:1:2", "beta=1,2"], method="full")
        assert _compare(df, cfg, axes) == 4
    finally:
        for cached in (K.compiler_options, K._jitted, sweep_mod._sharded):
            cached.cache_clear()


def test_steps_and_width_axes_group_and_match():
    """Axes that change loop lengths and shapes are grouped; rows still equal simulate()."""
    cfg = _small(["model.init=random"])
    df, axes, plan = _rows(cfg, ["post.steps=10,25", "width=3,8"])
    assert len(plan.groups) == 4
    assert list(df["point"]) == list(range(4))
    assert _compare(df, cfg, axes) == 4


def test_divergence_is_recorded_and_sweep_goes_on():
    """A too-large ft lr diverges like simulate() says; the other points are untouched."""
    cfg = _small()
    df, axes, _ = _rows(cfg, ["ft.lr=0.01,3.0"])
    assert list(df["diverged"]) == [False, True]
    assert df.loc[1, "diverged_stage"] == "ft"
    assert np.isnan(df.loc[1, "L_ret"]) and np.isfinite(df.loc[1, "L_im"])
    assert _compare(df, cfg, axes) == 1


def test_assumption_flags_hand_computed():
    """C.3/C.4, C.5 and C.6 on a hand-checked task."""
    task = default_config().replace(["task.beta=0.4", "task.sigma_inc_pre=[0.1,0.1]",
                                     "task.sigma_inc_post=[1.5,1.5]", "task.sigma_inc_ft=[0.0,0.0]"]).task
    # gap = min(1.5-0.1, 1.5-0.0) = 1.4 > 2*0.4: C3_C4 holds; min inv 3.5 > max(1.5, 0.4): C5 holds.
    # C6: a*0.4 > (1-a)*0.1 + a*1.5 never holds for a in [0, 1] (needs 0.4 > 1.5 at a = 1).
    f = assumption_flags(task, np.array([0.0, 0.5, 1.0]))
    assert f["C3_C4"].all() and f["C5"].all() and not f["C6"].any() and not f["C5_C6_hold"].any()
    task2 = default_config().replace(["task.beta=3.0", "task.sigma_inc_post=[1.4,1.3]",
                                      "task.sigma_inc_pre=[0.4,0.3]"]).task
    # C6 at alpha: 3a > 0.4(1-a) + 1.4a <=> a > 0.4/2.0 = 0.2 (the binding feature); gap 1.0 < 6: C3_C4 fails
    f2 = assumption_flags(task2, np.array([0.1, 0.19, 0.21, 0.9]))
    assert list(f2["C6"]) == [False, False, True, True] and list(f2["C5_C6_hold"]) == [False, False, True, True]
    assert not f2["C3_C4"].any() and not f2["assumptions_hold"].any()


def test_shard_merge_and_resume_equal_uninterrupted(tmp_path):
    """--shard 0/2 + 1/2 then merge == one run; an interrupted run resumed == one run (bytes)."""
    cfg = _small(["model.init=random", "model.width=4"])
    axes = parse_grid(["mix_fraction=0:1:5", "beta=1,2"], cfg)
    kw = dict(chunk_size=3, plots=False, progress=False, log=lambda *a: None)
    full = run_sweep(cfg, axes, tmp_path / "one", **kw)
    assert full is not None and len(full) == 10
    for i in range(2):
        run_sweep(cfg, axes, tmp_path / f"part{i}", shard=(i, 2), **kw)
    merge_parts([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged", plots=False)
    for name in ("sweep.parquet", "sweep.csv"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()

    class Stop(KeyboardInterrupt):
        pass

    def stop(_c):
        raise Stop

    with pytest.raises(Stop):
        run_sweep(cfg, axes, tmp_path / "resumed", on_chunk=stop, **kw)
    assert len(list((tmp_path / "resumed" / "chunks").rglob("*.parquet"))) == 1
    assert not (tmp_path / "resumed" / "sweep.parquet").exists()
    seen = []
    run_sweep(cfg, axes, tmp_path / "resumed", on_chunk=seen.append, **kw)
    assert len(seen) == 3  # 4 chunks in all, the first was kept
    for name in ("sweep.parquet", "sweep.csv"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    # merging parts of different sweeps is refused
    other = parse_grid(["mix_fraction=0:1:5", "beta=1,3"], cfg)
    run_sweep(cfg, other, tmp_path / "otherpart", shard=(1, 2), **kw)
    with pytest.raises(ConfigError, match="different sweeps"):
        merge_parts([tmp_path / "part0", tmp_path / "otherpart"], tmp_path / "bad", plots=False)
    with pytest.raises(ConfigError, match="missing"):
        merge_parts([tmp_path / "part0"], tmp_path / "bad", plots=False)
    assert not (tmp_path / "bad").exists()
    # reusing an output dir for a different sweep is refused
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(cfg, other, tmp_path / "one", **kw)


@pytest.mark.parametrize("argv,field", [
    (["--grid", "gamma=0:1:3"], "gamma"),
    (["--grid", "mix_fraction=1:0:3"], "reversed"),
    (["--grid", "mix_fraction=0:1:0"], "empty"),
    (["--grid", "mix_fraction=0:1:3", "--grid", "beta=log:0:1:3"], "a > 0"),
    (["--grid", "mix_fraction=0:2:3"], "stages.pre.mix_fraction"),
    (["--grid", "steps=1,2"], "ambiguous"),
    (["--grid", "mix_fraction=0:1:3", "--shard", "2/2"], "out of range"),
    (["--grid", "mix_fraction=0:1:3", "--shard", "x"], "i/N"),
    (["--grid", "mix_fraction=0:1:3", "--set", "stages.pre.mix_fractionn=1"], "unknown key"),
    ([], "at least one axis"),
    (["--grid", "mix_fraction=0:1:3", "--cpu-devices", "0"], "--cpu-devices"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, field):
    from linear_theory.cli import main

    out = tmp_path / "out"
    rc = main(["sweep", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and field in err[0], err
    assert not out.exists()


def test_cli_sweep_writes_tidy_files_and_heatmaps(tmp_path, capsys):
    from linear_theory.cli import main

    cfgfile = tmp_path / "c.json"
    cfgfile.write_text(json.dumps(_small().to_dict()))
    out = tmp_path / "s"
    rc = main(["sweep", "--config", str(cfgfile), "--grid", "mix_fraction=0:1:4", "--grid", "beta=log:0.5:4:3", "--out", str(out)])
    assert rc == 0
    df = pd.read_parquet(out / "sweep.parquet")
    assert len(df) == 12 and list(df["point"]) == list(range(12))
    np.testing.assert_allclose(sorted(set(df["task.beta"])), [0.5, np.sqrt(2.0), 4.0], rtol=1e-12)
    csv = pd.read_csv(out / "sweep.csv")
    np.testing.assert_allclose(csv["L_ret"], df["L_ret"], rtol=1e-15)
    for q in ("Delta", "L_im", "L_ret"):
        assert (out / f"heatmap_{q}.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["provenance"]["versions"]["jax"] and meta["spec"]["config"]["task"]["n"] == 8
    assert "sweep plan" in capsys.readouterr().out


def test_two_host_devices_shard_the_grid(tmp_path):
    """With 2 XLA CPU devices (--cpu-devices 2) the batch is split across them; rows equal the 1-device run."""
    cfg = _small(["model.init=random", "model.width=4"])
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "linear_theory", "sweep", "--config", str(tmp_path / "c.json"),
           "--grid", "mix_fraction=0:1:4", "--grid", "beta=1,2", "--out", str(tmp_path / "two"), "--no-plots",
           "--cpu-devices", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "devices: 2" in proc.stdout
    two = pd.read_parquet(tmp_path / "two" / "sweep.parquet")
    axes = parse_grid(["mix_fraction=0:1:4", "beta=1,2"], cfg)
    one = run_sweep(cfg, axes, tmp_path / "one", plots=False, progress=False, log=lambda *a: None)
    num = [c for c in one.columns if one[c].dtype.kind == "f"]
    np.testing.assert_allclose(two[num].to_numpy(), one[num].to_numpy(), rtol=1e-12, atol=1e-14)
    # the same per-point arithmetic on each device: in practice bit-identical
    assert (tmp_path / "two" / "sweep.csv").read_bytes() == (tmp_path / "one" / "sweep.csv").read_bytes()


def test_sigkill_mid_sweep_then_rerun_equals_uninterrupted(tmp_path):
    """A sweep process killed with SIGKILL after its first chunk resumes to the same bytes."""
    import signal
    import time

    cfg = _small(["model.init=random", "model.width=3"])
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    grid = ["mix_fraction=0:1:12", "beta=1,2,3"]
    out = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "linear_theory", "sweep", "--config", str(tmp_path / "c.json"),
           *[a for g in grid for a in ("--grid", g)], "--chunk-size", "1", "--out", str(out), "--no-plots",
           "--cpu-devices", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("chunks/*/c*.parquet")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = list(out.glob("chunks/*/c*.parquet"))
    assert proc.returncode == -signal.SIGKILL and 1 <= len(done) < 36 and not (out / "sweep.parquet").exists()
    axes = parse_grid(grid, cfg)
    kw = dict(chunk_size=1, plots=False, progress=False, log=lambda *a: None)
    seen = []
    run_sweep(cfg, axes, out, on_chunk=seen.append, **kw)
    assert len(seen) == 36 - len(done)
    run_sweep(cfg, axes, tmp_path / "whole", **kw)
    for name in ("sweep.parquet", "sweep.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_grid_specs_resolve_and_space_values():
    """Short names, dotted suffixes, linear/log/list specs, int fields, tuple broadcast."""
    cfg = default_config()
    axes = parse_grid(["width=2:8:4", "T=log:0.5:50:3", "post.steps=1e2,1e3", "sigma_inc_post=2",
                       "precision=float32,float64"], cfg)
    assert [a.path for a in axes] == ["model.width", "model.T", "stages.post.steps", "task.sigma_inc_post",
                                      "precision"]
    assert axes[0].values == (2, 4, 6, 8) and all(isinstance(v, int) for v in axes[0].values)
    np.testing.assert_allclose(axes[1].values, [0.5, 5.0, 50.0], rtol=1e-12)
    assert axes[2].values == (100, 1000)
    assert apply_values(cfg, {"task.sigma_inc_post": 2.0}).task.sigma_inc_post == (2.0, 2.0)
    with pytest.raises(ConfigError, match="distinct"):
        parse_grid(["post.steps=1:2:5"], cfg)  # rounds to repeated integers
