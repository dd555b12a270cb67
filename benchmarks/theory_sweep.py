"""Speed of the theory sweep engine against a naive baseline and the sgemm roofline.

Command (from the repository root)::

    python benchmarks/theory_sweep.py            # the target sizes (a few minutes on 2 cores)
    python benchmarks/theory_sweep.py --steps 200 --spectral-grid 64   # quick look
    python benchmarks/theory_sweep.py --cpu-devices 1   # the engine on a single XLA device

Times, in one process on the same machine, float32:

1. the sweep engine's full-matrix path on a 64 x 64 mix_fraction x beta grid (the alpha x beta
   phase diagram), n = h = 16, 3 x 2000 steps (``method=full``: no spectral shortcut), end to end
   through :func:`linear_theory.sweep.engine.run_points` (host preparation + kernels + losses),
   compiled first;
2. the naive baseline of the same computation: ``jax.vmap`` over configs of a ``lax.scan`` of
   the plain update W1 -= lr G W2^T, W2 -= lr W1^T G with G = 2 sum_t w_t (theta - A_t) C_t
   on the full (n, n) matrices (kept as the yardstick);
3. the spectral path on a 256 x 256 grid with the same schedule;
4. one large sgemm (4096^3) for the machine's matmul rate.

XLA runs the engine's small fused loops on one thread per device; like the sweep CLI, the
benchmark exposes one XLA CPU device per usable core (``--cpu-devices``) and the full path
splits the grid across them (``jax.shard_map``).

Prints times, the speedup over the baseline, GFLOP/s (counted as 2 n h n per small matmul,
3 per step for the engine) and the fraction of the sgemm rate. Targets (2-core CPU):
full >= 10x faster than the baseline and within 3x of the sgemm rate; spectral 256^2 < 2 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from early_exposure.frontier import STAGES
from linear_theory.config import SimConfig, config_from_dict
from linear_theory.simulate import stage_specs
from linear_theory.sweep.engine import run_points, use_cpu_devices
from linear_theory.sweep.grid import parse_grid
from linear_theory.sweep.kernels import flops_full_step
from linear_theory.sweep.plan import make_plan
from linear_theory.tasks import build_task


def bench_config(steps: int, n: int = 16, k: int = 4) -> SimConfig:
    """n = h = 16 task of the benchmark (paper init, identity basis), float32."""
    inv = list(np.linspace(5.0, 2.2, n - 2 * k))
    return config_from_dict({
        "task": {"n": n, "k": k, "sigma_inv": inv, "sigma_inc_pre": [0.4] * k, "sigma_inc_post": [1.4] * k,
                 "sigma_inc_ft": [0.1] * k, "beta": 2.0, "basis": "identity", "seed": 0},
        "model": {"width": n, "init": "paper", "T": 6.0},
        "stages": {"pre": {"mix_fraction": 0.5, "steps": steps, "lr": 0.01},
                   "post": {"steps": steps, "lr": 0.01, "reg": 0.0, "replay": 0.0, "dropout": 0.0},
                   "ft": {"steps": steps, "lr": 0.01}},
        "precision": "float32",
    })


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def engine_seconds(steps: int, grid: int, method: str) -> tuple[float, float]:
    """(compile+warm-up seconds, run seconds) of the engine on a grid x grid mix_fraction x beta sweep."""
    axes_spec = [f"mix_fraction=0:1:{grid}", f"beta=0.1:4:{grid}"]
    # the full path compiles once per shape (step counts are runtime values): warm up with 1 step;
    # the spectral path's batch is the number of distinct modes, which depends on the schedule:
    # warm up with the timed run itself
    warm_cfg, cfg = bench_config(1 if method == "full" else steps), bench_config(steps)
    warm_plan = make_plan(warm_cfg, parse_grid(axes_spec, warm_cfg), method=method, chunk_size=grid * grid)
    plan = make_plan(cfg, parse_grid(axes_spec, cfg), method=method, chunk_size=grid * grid)
    t0 = time.perf_counter()
    run_points(warm_plan, 0)  # same shapes, 1 step: compiles every program
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = run_points(plan, 0)
    run = time.perf_counter() - t0
    assert len(df) == grid * grid and set(df["method"]) == {method}
    return warm, run


def naive_baseline(steps: int, grid: int) -> tuple[float, float]:
    """vmap over configs of lax.scan of the plain update on full matrices (the yardstick)."""
    cfg = bench_config(steps)
    tm = build_task(cfg.task)
    fractions = np.linspace(0, 1, grid)
    betas = np.linspace(0.1, 4, grid)
    A_all, C_all, w_all = {s: [] for s in STAGES}, {s: [] for s in STAGES}, \
        {s: [] for s in STAGES}
    for a in fractions:
        for b in betas:
            c = cfg.replace([f"stages.pre.mix_fraction={a}", f"task.beta={b}"])
            tmb = build_task(c.task)
            for s, spec in stage_specs(c, tmb).items():
                A, C = spec.matrices(tmb)
                A_all[s].append(A)
                C_all[s].append(C)
                w_all[s].append(spec.weights)
    f32 = jnp.float32
    arrs = {s: (jnp.asarray(np.stack(A_all[s]), f32), jnp.asarray(np.stack(C_all[s]), f32),
                jnp.asarray(np.stack(w_all[s]), f32)) for s in A_all}
    n = cfg.task.n
    e = np.exp(-cfg.model.T)
    W1 = jnp.asarray(e * np.eye(n), f32)
    W2 = jnp.asarray(e * np.eye(n), f32)
    lr = 0.01
    del tm

    def one(pre, post, ft):
        def stage(W, A, C, w):
            def step(c, _):
                W1, W2 = c
                theta = W1 @ W2
                G = 2.0 * jnp.einsum("m,mij,mjk->ik", w, theta[None] - A, C)
                return (W1 - lr * G @ W2.T, W2 - lr * W1.T @ G), None

            return jax.lax.scan(step, W, None, length=steps)[0]

        W = stage((W1, W2), *pre)
        W = stage(W, *post)
        return stage(W, *ft)

    fn = jax.jit(jax.vmap(one))
    args = tuple(arrs[s] for s in STAGES)
    t0 = time.perf_counter()
    fn.lower(*args).compile()
    comp = time.perf_counter() - t0
    return comp, timed(lambda: fn(*args))


def sgemm_gflops(size: int = 4096) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    return 2 * size ** 3 / timed(lambda: mm(a), repeat=5) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="steps per stage (target: 2000)")
    ap.add_argument("--grid", type=int, default=64, help="full-path grid side (target: 64)")
    ap.add_argument("--spectral-grid", type=int, default=256, help="spectral grid side (target: 256)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="XLA CPU devices the engine's full path splits the grid over (default: the usable "
                         "cores, as the sweep CLI; 1 = one device); the baseline and sgemm run as usual")
    args = ap.parse_args(argv)
    use_cpu_devices(args.cpu_devices)  # before any JAX computation
    n = h = 16
    pts = args.grid ** 2
    total_steps = 3 * args.steps
    flops = flops_full_step(n, h) * pts * total_steps
    print(f"devices: {jax.devices()}  cpu count: {os.cpu_count()}  (timings include any load from other processes)")
    peak = sgemm_gflops()
    print(f"sgemm 4096^3 float32: {peak:.1f} GFLOP/s")
    warm, full_s = engine_seconds(args.steps, args.grid, "full")
    gf = flops / full_s / 1e9
    print(f"full-matrix engine  {args.grid}x{args.grid}, n=h=16, 3x{args.steps} steps: {full_s:.2f} s "
          f"(compile/warm-up {warm:.2f} s)  {gf:.1f} GFLOP/s = {gf / peak:.3f} of sgemm (1/{peak / gf:.1f})")
    res = {"cpu_devices": jax.device_count(), "sgemm_gflops": peak, "full_seconds": full_s, "full_compile_seconds": warm, "full_gflops": gf,
           "full_fraction_of_sgemm": gf / peak, "grid": args.grid, "steps_per_stage": args.steps}
    if not args.skip_baseline:
        comp, base_s = naive_baseline(args.steps, args.grid)
        print(f"naive vmap(lax.scan) baseline, same grid/schedule: {base_s:.2f} s (compile {comp:.2f} s)  "
              f"speedup of the engine: {base_s / full_s:.1f}x")
        res.update(baseline_seconds=base_s, speedup=base_s / full_s)
    warm_s, spec_s = engine_seconds(args.steps, args.spectral_grid, "spectral")
    print(f"spectral engine {args.spectral_grid}x{args.spectral_grid}, 3x{args.steps} steps: {spec_s:.2f} s "
          f"(compile/warm-up {warm_s:.2f} s)")
    res.update(spectral_seconds=spec_s, spectral_grid=args.spectral_grid)
    if args.json:
        from early_exposure.io import atomic_write_json
        from early_exposure.provenance import provenance

        atomic_write_json(args.json, {**res, "provenance": provenance()})
    return 0


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    sys.exit(main())
