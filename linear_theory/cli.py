"""Command line of the theory simulator.

Commands (run from the repository root)::

    python -m linear_theory run --config configs/theory/default.yaml --out results/theory/run \
        [--set stages.pre.alpha=0.25] [--trajectory-stride 10] [--method auto|full|spectral]
    python -m linear_theory assumptions --config configs/theory/default.yaml [--out DIR]
    python -m linear_theory verify --out results/theory/verify

plus the sweep subcommands registered by :mod:`linear_theory.cli_sweep`. Bad input exits
with code 2 and one line naming the field; nothing is written to ``--out`` then. All files
are written atomically.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from early_exposure.errors import ConfigError, cli_main
from early_exposure.io import atomic_write_bytes, atomic_write_json
from early_exposure.provenance import provenance

__all__ = ["build_parser", "main", "run_command"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become one-line ConfigErrors (exit 2 via cli_main)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(self.prog, message)


def _run(args: argparse.Namespace) -> int:
    """``run``: simulate one config, write DIR/result.json (+ DIR/trajectory.csv)."""
    from linear_theory.config import load_config
    from linear_theory.simulate import simulate

    cfg = load_config(args.config, args.set)
    res = simulate(cfg, method=args.method, trajectory_stride=args.trajectory_stride)
    out = Path(args.out)
    body = res.to_json()
    body["command"] = " ".join(["python", "-m", "linear_theory", *sys.argv[1:]]) if args.argv is None else \
        " ".join(["python", "-m", "linear_theory", *args.argv])
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
    from linear_theory.assumptions import run_assumptions_cli

    return run_assumptions_cli(args)


def _verify(args: argparse.Namespace) -> int:
    from linear_theory.verify import run_verify_cli

    return run_verify_cli(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m linear_theory`` parser, including the sweep engineer's subcommands."""
    parser = _Parser(prog="python -m linear_theory",
                     description="Two-layer linear network simulator for Appendix C of arXiv 2605.12705")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="simulate pre -> post -> ft for one config")
    p.add_argument("--config", default=None, help="YAML/JSON config (default: configs/theory/default.yaml values)")
    p.add_argument("--out", required=True, help="output directory (result.json, trajectory.csv)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. stages.pre.alpha=0.25")
    p.add_argument("--trajectory-stride", type=int, default=None, metavar="N", help="record the spectrum every N steps")
    p.add_argument("--method", default="auto", choices=["auto", "full", "spectral"])
    p.set_defaults(func=_run)

    p = sub.add_parser("assumptions", help="check the assumptions of Appendix C for a config")
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="write DIR/assumptions.json")
    p.set_defaults(func=_assumptions)

    p = sub.add_parser("verify", help="numerical checks of Theorems C.9-C.17 -> DIR/theorems.json")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_verify)

    from linear_theory.cli_sweep import add_subcommands  # the sweep engineer's module (issue 3)

    add_subcommands(sub)
    return parser


def run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run" and args.trajectory_stride is not None and args.trajectory_stride < 1:
        raise ConfigError("--trajectory-stride", f"must be a positive integer, got {args.trajectory_stride}")
    args.argv = argv
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ConfigError -> one stderr line and exit code 2."""
    return cli_main(run_command, argv)
