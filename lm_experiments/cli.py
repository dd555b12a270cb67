"""Command line of the LM pipeline (arXiv 2605.12705's three-stage protocol).

Run a preset (CPU, under 15 minutes including data preparation)::

    python -m lm_experiments run --config configs/lm/cpu-quick.yaml --out results/lm/cpu-quick

Options: ``--set post.sweep.lr=[1e-3,3e-3]`` (repeatable overrides of any config field),
``--dry-run`` (print runs, tokens per stage and an estimated time; train nothing),
``--cache DIR`` (data cache; default ``$EARLY_EXPOSURE_CACHE`` or ``~/.cache/early_exposure``),
``--no-progress``, ``--executor serial|ray`` (Ray: every run a task, on every core of this
machine or, with ``--address``, on a cluster), ``--max-retries``. Rerunning the same command
skips finished runs and resumes interrupted ones; a run that fails is recorded while the
others go on, and the command then exits 1. Bad input exits with code 2 and one line naming the field, before
anything is written to ``--out``.

Several GPUs, one run at a time over all of them (DDP at the same global batch; rank 0
writes every file; :mod:`lm_experiments.distributed`)::

    torchrun --standalone --nproc_per_node 8 -m lm_experiments run --config configs/lm/gpu-135m.yaml --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from early_exposure.errors import ConfigError, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lm_experiments",
                                description="Three-stage LM pipeline: pretrain (mixing) > post-train > fine-tune.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or --dry-run) a preset sweep")
    run.add_argument("--config", required=True, help="preset file, e.g. configs/lm/cpu-quick.yaml")
    run.add_argument("--out", required=True, help="output directory (frontier.csv, runs/, upstream/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set post.sweep.lr=[1e-3] (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and estimated time; train nothing")
    run.add_argument("--cache", default=None, help="data cache directory")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--executor", choices=("serial", "ray"), default="serial",
                     help="serial: one run at a time in this process; ray: every run a Ray task "
                          "(local Ray on every core, or a cluster with --address)")
    run.add_argument("--address", default=None,
                     help="with --executor ray: join a running Ray cluster ('auto' or HOST:PORT)")
    run.add_argument("--max-retries", type=int, default=2,
                     help="with --executor ray: retries of a task whose worker died (default 2)")
    return p



def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run; ``ConfigError`` is mapped to exit code 2 by :func:`run`."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one usage line
        return int(exc.code or 0)
    from lm_experiments import distributed
    from lm_experiments.config import load_config
    from lm_experiments.sweep import run_pipeline

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a directory")
    if args.max_retries < 0:
        raise ConfigError("--max-retries", f"must be >= 0, got {args.max_retries}")
    distributed.init_from_env()  # under torchrun: one process group, every run data-parallel over it
    try:
        m = run_pipeline(cfg, out, cache_root=Path(args.cache) if args.cache else None, dry_run=args.dry_run,
                         progress=not args.no_progress, executor=args.executor, address=args.address,
                         max_retries=args.max_retries)
    finally:
        distributed.shutdown()
    if m.get("failed"):
        print(f"error: {len(m['failed'])} runs failed (listed above and in {out / 'manifest.json'}); "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def run(argv: list[str] | None = None) -> int:
    """Entry point: :func:`main` wrapped in :func:`early_exposure.errors.cli_main`."""
    return cli_main(main, argv)


if __name__ == "__main__":
    sys.exit(run())
