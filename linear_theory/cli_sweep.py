"""Sweep subcommands of ``python -m linear_theory`` (issue 3).

Registered by the core CLI (``linear_theory/cli.py``) through :func:`add_subcommands`::

    python -m linear_theory sweep --config configs/theory/sweep_alpha_beta.yaml \
        --grid alpha=0:1:64 --grid beta=0.1:2:64 --out results/theory/sweep
    python -m linear_theory merge --out results/theory/sweep PART_DIR [PART_DIR ...]
    python -m linear_theory frontier --config configs/theory/sweep_frontier.yaml --out results/theory/frontier
    python -m linear_theory compute-matched --config configs/theory/sweep_compute_matched.yaml \
        --out results/theory/compute_matched
"""

from __future__ import annotations

import argparse


def _sweep(args: argparse.Namespace) -> int:
    from linear_theory.sweep import run_sweep_cli

    return run_sweep_cli(args)


def _merge(args: argparse.Namespace) -> int:
    from linear_theory.sweep import run_merge_cli

    return run_merge_cli(args)


def _frontier(args: argparse.Namespace) -> int:
    from linear_theory.frontier import run_frontier_cli

    return run_frontier_cli(args)


def _compute_matched(args: argparse.Namespace) -> int:
    from linear_theory.compute_matched import run_compute_matched_cli

    return run_compute_matched_cli(args)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``sweep``, ``merge``, ``frontier`` and ``compute-matched`` on ``subparsers``."""
    p = subparsers.add_parser("sweep", help="vectorised grid sweep over config fields")
    p.add_argument("--config", default=None, help="YAML/JSON SimConfig (default: built-in default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=SPEC",
                   help="grid axis: a:b:n (linear), log:a:b:n, or v1,v2,... ; FIELD is a short "
                        "name (alpha, beta, T, ...) or a dotted path (stages.post.steps)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", default="auto", choices=["auto", "full", "spectral"])
    p.add_argument("--chunk-size", type=int, default=None, help="grid points per chunk")
    p.add_argument("--shard", default=None, metavar="i/N", help="run the i-th (0-based) of N slices")
    p.add_argument("--no-plots", action="store_true", help="skip heatmap PNGs")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="XLA CPU devices to split the grid over (default: the usable cores; 1 = off)")
    p.add_argument("--max-chunks", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_sweep)

    p = subparsers.add_parser("merge", help="merge sharded sweep parts into one sweep.parquet")
    p.add_argument("parts", nargs="+", help="output directories of the --shard runs")
    p.add_argument("--out", required=True)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_merge)

    p = subparsers.add_parser("frontier", help="theory frontier table (side=theory)")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_frontier)

    p = subparsers.add_parser("compute-matched", help="Section 4.1/4.2 analogues (finite samples)")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_compute_matched)
