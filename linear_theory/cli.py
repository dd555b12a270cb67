"""Command line of the theory simulator: every ``python -m linear_theory`` command.

Commands (run from the repository root)::

    python -m linear_theory run --config configs/theory/default.yaml --out results/theory/run \
        [--set stages.pre.mix_fraction=0.25] [--trajectory-stride 10] [--method auto|full|spectral]
    python -m linear_theory assumptions --config configs/theory/default.yaml [--out DIR]
    python -m linear_theory verify --out results/theory/verify
    python -m linear_theory sweep --config configs/theory/sweep_alpha_beta.yaml \
        --grid mix_fraction=0:1:64 --grid beta=0.1:2:64 --out results/theory/sweep
    python -m linear_theory merge --out results/theory/sweep PART_DIR [PART_DIR ...]
    python -m linear_theory frontier --config configs/theory/sweep_frontier.yaml --out results/theory/frontier
    python -m linear_theory compute-matched --config configs/theory/sweep_compute_matched.yaml \
        --out results/theory/compute_matched

This module owns the parser and one handler per command; a handler turns the parsed
arguments into typed values (config dataclasses, axes, paths) and calls the engine or study
function, which never sees an ``argparse.Namespace``. Bad input exits with code 2 and one
line naming the field; nothing is written to ``--out`` then. All files are written atomically.
Heavy modules (JAX, the sweep engine) are imported by the handler that needs them.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from early_exposure.cliopts import add_version, preset_type
from early_exposure.configs import check_output_dir
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.io import atomic_write_bytes, atomic_write_json
from early_exposure.provenance import provenance

__all__ = ["build_parser", "main", "run_command"]


# --------------------------------------------------------------------------- single runs and checks
def _run(args: argparse.Namespace) -> int:
    """``run``: simulate one config, write DIR/result.json (+ DIR/trajectory.csv)."""
    from linear_theory.config import load_config
    from linear_theory.simulate import simulate

    if args.trajectory_stride is not None and args.trajectory_stride < 1:
        raise ConfigError("--trajectory-stride", f"must be a positive integer, got {args.trajectory_stride}")
    check_output_dir("--out", args.out)
    cfg = load_config(args.config, args.set)
    res = simulate(cfg, method=args.method, trajectory_stride=args.trajectory_stride)
    out = Path(args.out)
    body = res.to_json()
    body["command"] = " ".join(["python", "-m", "linear_theory", *(sys.argv[1:] if args.argv is None else args.argv)])
    body["seed"] = cfg.task.seed
    body["provenance"] = provenance()
    if res.trajectory is not None:
        buf = io.StringIO()
        res.trajectory.to_csv(buf, index=False)
        atomic_write_bytes(out / "trajectory.csv", buf.getvalue().encode("utf-8"))
    atomic_write_json(out / "result.json", body)
    status = f"diverged in stage {res.diverged_stage}" if res.diverged else "ok"
    losses = ", ".join(f"{k}={v:.6g}" for k, v in res.losses.items())
    print(f"[{res.method}] {status}: {losses} -> {out / 'result.json'}")
    return 0


def _assumptions(args: argparse.Namespace) -> int:
    """``assumptions``: print the verdict table; with ``--out`` write DIR/assumptions.json."""
    from linear_theory.checks.assumptions import assumptions_table, run_assumptions
    from linear_theory.config import load_config

    if args.out is not None:
        check_output_dir("--out", args.out)
    body = run_assumptions(load_config(args.config, args.set))
    body["provenance"] = provenance()
    print(assumptions_table(body))
    if args.out is not None:
        path = atomic_write_json(Path(args.out) / "assumptions.json", body)
        print(f"-> {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """``verify``: DIR/theorems.json; exit 1 if a check fails."""
    from linear_theory.checks import theorems

    check_output_dir("--out", args.out)
    body = theorems.run_checks()
    body["provenance"] = provenance()
    path = atomic_write_json(Path(args.out) / "theorems.json", body)
    for c in body["checks"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['id']:<18} {c['claim'][:90]}")
    print(f"{len(body['errata'])} errata recorded -> {path}")
    return 0 if all(c["passed"] for c in body["checks"]) else 1


def _latent(args: argparse.Namespace) -> int:
    """``latent``: DIR/latent.json, the beyond-the-paper verdict rows (docs/theory_latent.md)."""
    from linear_theory.latent.check import latent_check

    check_output_dir("--out", args.out)
    rows = latent_check()
    path = atomic_write_json(Path(args.out) / "latent.json", {"checks": rows, "provenance": provenance()})
    for r in rows:
        print(f"{r['status']:<12} {r['id']:<32} {r['claim'][:80]}")
    print(f"-> {path}")
    return 0


def _matched(args: argparse.Namespace) -> int:
    """``matched``: DIR/matched.csv, L_ret against L_im along the stage-2 trajectory per arm."""
    from linear_theory.studies.matched import run_matched

    check_output_dir("--out", args.out)
    df = run_matched(args.out, args.config, args.set)
    for (pipe, method), g in df.groupby(["pipeline", "method"]):
        print(f"{pipe:<18} {method:<8} L_im {g['L_im'].min():.4g}..{g['L_im'].max():.4g}  "
              f"L_ret {g['L_ret'].min():.4g}..{g['L_ret'].max():.4g}  ({len(g)} checkpoints)")
    print(f"-> {Path(args.out) / 'matched.csv'}")
    return 0


# --------------------------------------------------------------------------- sweeps and studies
def _sweep(args: argparse.Namespace) -> int:
    """``sweep``: grid sweep into DIR (resumable; ``--shard i/N`` writes a part)."""
    from linear_theory.config import load_config
    from linear_theory.sweep.engine import use_cpu_devices
    from linear_theory.sweep.files import parse_shard, run_sweep
    from linear_theory.sweep.grid import parse_grid
    from linear_theory.sweep.plan import make_plan

    if args.cpu_devices is not None and args.cpu_devices < 1:
        raise ConfigError("--cpu-devices", f"must be >= 1, got {args.cpu_devices}")
    check_output_dir("--out", args.out)
    cfg = load_config(args.config, args.set)
    _check_grid_size(args.grid)
    axes = parse_grid(args.grid, cfg)
    shard = parse_shard(args.shard)
    # a shard must own at least one chunk, else it would write a plan and then find nothing to merge
    n_chunks = len(make_plan(cfg, axes, method=args.method, chunk_size=args.chunk_size).chunks)
    if shard[1] > n_chunks:
        raise ConfigError("--shard", f"{args.shard} asks for {shard[1]} shards but this grid has only {n_chunks} "
                          f"chunk(s); use at most {n_chunks} shards or a smaller --chunk-size")
    use_cpu_devices(args.cpu_devices)
    run_sweep(cfg, axes, args.out, method=args.method, chunk_size=args.chunk_size, shard=shard,
              plots=not args.no_plots, max_chunks=args.max_chunks)
    return 0


def _check_grid_size(items: list[str]) -> None:
    """Refuse an oversized grid from the point counts of its ``a:b:n`` specs, before the axes
    (n values each) are built: ``mix_fraction=0:1:1e8`` fails at once instead of hanging."""
    from linear_theory.sweep.grid import MAX_POINTS

    total = 1
    for item in items:
        spec = item.split("=", 1)[-1]
        count = spec.rsplit(":", 1)[-1] if ":" in spec else None
        try:
            n = int(float(count)) if count is not None else len(spec.split(","))
        except ValueError:
            continue  # parse_grid names the malformed spec
        total *= max(n, 1)
        if total > MAX_POINTS:
            raise ConfigError("--grid", f"more than {MAX_POINTS} grid points (at {item!r}); "
                              "coarsen the axes or split the study into several sweeps")


def _merge(args: argparse.Namespace) -> int:
    """``merge PART_DIR ... --out DIR``: the shards of one sweep -> the files of an unsharded run."""
    from linear_theory.sweep.files import merge_parts

    check_output_dir("--out", args.out)
    _check_parts(args.parts)
    merge_parts(args.parts, args.out, plots=not args.no_plots)
    print(f"merged {len(args.parts)} part dir(s) into {args.out}")
    return 0


def _check_parts(parts: list[str]) -> None:
    """Every part directory holds readable sweep parts of one shard count (ConfigError otherwise)."""
    import json

    import pyarrow.parquet as pq

    counts: dict[int, list[str]] = {}
    for d in map(Path, parts):
        if not d.is_dir():
            raise ConfigError("merge", f"part directory not found: {d}" if not d.exists()
                              else f"{d} is a file; give the --out directories of the sweep --shard i/N runs")
        for mpath in sorted(d.glob("sweep.part*of*.json")):
            fix = f"rerun the sweep --shard command that wrote it (--out {d}) to rewrite it"
            try:
                meta = json.loads(mpath.read_bytes().decode("utf-8"))
                i, n = (int(v) for v in meta["shard"])
                if not {"hash", "n_points", "seconds"} <= set(meta):
                    raise KeyError("hash, n_points, seconds")
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
                raise ConfigError("merge", f"{mpath} is damaged (unreadable or incomplete); {fix}") from None
            part = mpath.with_suffix(".parquet")
            try:
                pq.read_table(part)
            except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError
                raise ConfigError("merge", f"{part} is missing or damaged (not a readable Parquet file); {fix}") from None
            counts.setdefault(n, []).append(f"{i}/{n} in {d}")
    if len(counts) > 1:
        listed = "; ".join(", ".join(v) for v in counts.values())
        raise ConfigError("merge", f"the parts were split into different shard counts ({listed}); "
                          f"merge the parts of one sweep --shard i/N family (one N)")


def _frontier(args: argparse.Namespace) -> int:
    """``frontier``: the side=theory frontier table -> DIR/frontier.csv, DIR/frontier.json."""
    from linear_theory.studies.frontier import load_frontier_config, run_frontier

    out = check_output_dir("--out", args.out)
    rows = run_frontier(load_frontier_config(args.config, args.set), out)
    print(f"wrote {len(rows)} theory frontier rows ({sum(r['diverged'] for r in rows)} diverged) to {out / 'frontier.csv'}")
    return 0


def _compute_matched(args: argparse.Namespace) -> int:
    """``compute-matched``: Sections 4.1 / 4.2 analogues on finite samples -> DIR."""
    from linear_theory.studies.compute_matched import load_cm_config, run_compute_matched

    check_output_dir("--out", args.out)
    df, summary = run_compute_matched(load_cm_config(args.config, args.set), args.out)
    for key, s in summary.items():
        print(f"Sec {key}: best mix_fraction for L_ret {s['best_mix_fraction_L_ret']:g}, "
              f"for L_im {s['best_mix_fraction_L_im']:g}")
    print(f"wrote {len(df)} runs to {args.out}")
    return 0


# --------------------------------------------------------------------------- parser
def _config_options(p: argparse.ArgumentParser, what: str = "YAML/JSON config (default: the built-in default)",
                    example: str = "stages.pre.mix_fraction=0.25") -> None:
    p.add_argument("--config", default=None, type=preset_type("theory"), metavar="PRESET|FILE",
                   help=f"{what}; a shipped theory preset's name (e.g. default, sweep_frontier) or a path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"override, e.g. {example}")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m linear_theory`` parser."""
    parser = Parser(prog="python -m linear_theory",
                     description="Two-layer linear network simulator for Appendix C of arXiv 2605.12705")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="simulate pre -> post -> ft for one config")
    _config_options(p, "YAML/JSON config (default: configs/theory/default.yaml values)")
    p.add_argument("--out", required=True, help="output directory (result.json, trajectory.csv)")
    p.add_argument("--trajectory-stride", type=int, default=None, metavar="N",
                   help="record the spectrum every N steps in DIR/trajectory.csv (default: no trajectory)")
    p.add_argument("--method", default="auto", choices=["auto", "full", "spectral"],
                   help="simulation path: full (weight matrices), spectral (decoupled scalar recurrences; needs "
                        "width = n and an aligned or ideal init), auto (spectral when applicable; default)")
    p.set_defaults(func=_run)

    p = sub.add_parser("assumptions", help="check the assumptions of Appendix C for a config")
    _config_options(p)
    p.add_argument("--out", default=None, help="also write DIR/assumptions.json (default: print only)")
    p.set_defaults(func=_assumptions)

    p = sub.add_parser("verify", help="numerical checks of Theorems C.9-C.17 -> DIR/theorems.json")
    p.add_argument("--out", required=True, help="output directory (theorems.json)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("latent", help="the latent-benefit witness beyond the paper -> DIR/latent.json")
    p.add_argument("--out", required=True, help="output directory (latent.json)")
    p.set_defaults(func=_latent)

    p = sub.add_parser("matched", help="retention at matched L_im along the stage-2 trajectory -> DIR/matched.csv")
    _config_options(p, "YAML/JSON SimConfig of the Appendix C pipeline (default: built-in default)")
    p.add_argument("--out", required=True, help="output directory (matched.csv)")
    p.set_defaults(func=_matched)

    p = sub.add_parser("sweep", help="vectorised grid sweep over config fields")
    _config_options(p, "YAML/JSON SimConfig (default: built-in default)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=SPEC",
                   help="grid axis: a:b:n (linear), log:a:b:n, or v1,v2,... ; FIELD is a short "
                        "name (mix_fraction, beta, T, ...) or a dotted path (stages.post.steps)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", default="auto", choices=["auto", "full", "spectral"],
                   help="simulation path: full (weight matrices), spectral (decoupled scalar recurrences; needs "
                        "width = n and an aligned or ideal init), auto (spectral when applicable; default)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="grid points per chunk (the unit of resumption; default: sized to the problem)")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="run the i-th (0-based) of N slices of the chunks (N at most the number of chunks); "
                        "combine the parts with merge")
    p.add_argument("--no-plots", action="store_true", help="skip heatmap PNGs")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="XLA CPU devices to split the grid over (default: the usable cores; 1 = off)")
    p.add_argument("--max-chunks", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("merge", help="merge sharded sweep parts into one sweep.parquet")
    p.add_argument("parts", nargs="+", metavar="PART_DIR", help="output directories of the sweep --shard i/N runs")
    p.add_argument("--out", required=True, help="output directory (sweep.parquet, sweep.csv, sweep.json, heatmaps)")
    p.add_argument("--no-plots", action="store_true", help="skip heatmap PNGs")
    p.set_defaults(func=_merge)

    p = sub.add_parser("frontier", help="theory frontier table (side=theory)")
    _config_options(p, "study config (configs/theory/sweep_frontier.yaml; default: built-in defaults)",
                    "mix_fraction=[0.25,0.5]")
    p.add_argument("--out", required=True, help="output directory (frontier.csv, frontier.json)")
    p.set_defaults(func=_frontier)

    p = sub.add_parser("compute-matched", help="Section 4.1/4.2 analogues (finite samples)")
    _config_options(p, "study config (configs/theory/sweep_compute_matched.yaml; default: built-in defaults)",
                    "n_samples=400")
    p.add_argument("--out", required=True, help="output directory (frontier.csv, compute_matched.csv/.json/.png)")
    p.set_defaults(func=_compute_matched)
    return parser


def run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ConfigError -> one stderr line and exit code 2."""
    return cli_main(run_command, argv)
