"""Command line of the LM pipeline (arXiv 2605.12705's three-stage protocol).

Run a preset (CPU, under 15 minutes including data preparation)::

    python -m lm_experiments run --config configs/lm/cpu-quick.yaml --out results/lm/cpu-quick

Options: ``--set post.sweep.lr=[1e-3,3e-3]`` (repeatable overrides of any config field),
``--dry-run`` (print runs, tokens, estimated time and disk from the config alone, in seconds: no
network, no data, no model; ``--dry-run --probe`` prepares the data and times a few steps here),
``--offline`` (no network: a hub corpus or tokenizer missing from the local cache is an error,
the preset's offline fallback corpora are not used silently),
``--cache DIR`` (data cache; default ``$EARLY_EXPOSURE_CACHE`` or ``~/.cache/early_exposure``),
``--no-progress``, ``--curves csv|tensorboard|trackio|wandb-offline`` (write each run's training
curve while it trains: ``<run dir>/curves.csv``, TensorBoard events in ``OUT/tensorboard/<stage>-<id>/``
or a local tracker; off by default, nothing leaves the machine; finished runs' curves:
``python -m lm_experiments.analysis.curves``), ``--executor auto|serial|ray`` (Ray: every run a task, on every core of
this machine or, with ``--address``, on a cluster; auto: Ray when installed on 2+ cores), ``--max-retries``.
``--config`` takes a path or a shipped preset's name (``--config cpu-quick``, :mod:`early_exposure.cliopts`).
Rerunning the same command skips finished runs and resumes interrupted ones; a run that fails is recorded while the
others go on, and the command then exits 1. Bad input exits with code 2 and one line naming the field, before
anything is written to ``--out``.

Several GPUs, one run at a time over all of them (DDP at the same global batch; rank 0
writes every file; :mod:`lm_experiments.engine.distributed`)::

    torchrun --standalone --nproc_per_node 8 -m lm_experiments run --config configs/lm/gpu-135m.yaml --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from early_exposure.cliopts import (add_executor, add_no_progress, add_version, go_offline, preset_type,
                                   resolve_executor)
from early_exposure.configs import check_output_dir
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.runs import RunTree

#: ``--curves`` choices (lm_experiments.engine.curves.CURVE_KINDS; kept here so that parsing imports no torch)
CURVE_CHOICES = ("csv", "tensorboard", "trackio", "wandb-offline")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m lm_experiments",
               description="Three-stage LM pipeline: pretrain (mixing) > post-train > fine-tune.")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="run (or --dry-run) a preset sweep")
    run.add_argument("--config", required=True, type=preset_type("lm"), metavar="PRESET|FILE",
                     help="a shipped preset's name (early-exposure presets lists them), e.g. cpu-quick, "
                          "or a config file, e.g. configs/lm/cpu-quick.yaml")
    run.add_argument("--out", required=True, help="output directory (frontier.csv, runs/, upstream/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set post.sweep.lr=[1e-3] (repeatable)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (runs and tokens per stage), an estimated time and disk footprint from the "
                          "config alone, in seconds (no network, no data, no model); train nothing")
    run.add_argument("--probe", action="store_true",
                     help="with --dry-run: also prepare the data and time a few training steps on this machine")
    run.add_argument("--offline", action="store_true",
                     help="no network (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE): a hub corpus or tokenizer not in the local "
                          "cache is an error naming the field, and the preset's data_fallback is not used")
    run.add_argument("--cache", default=None, metavar="DIR",
                     help="data cache directory (default: $EARLY_EXPOSURE_CACHE or ~/.cache/early_exposure)")
    run.add_argument("--cache-root", dest="cache_root_deprecated", default=None, help=argparse.SUPPRESS)
    add_no_progress(run, help="no progress bars (default: a bar per stage and one for the whole sweep with rate "
                              "and ETA)")
    run.add_argument("--curves", choices=CURVE_CHOICES, default=None,
                     help="write each run's training curve (step, train_loss, val_loss, lr, grad_norm) while it "
                          "trains, locally: csv = <run dir>/curves.csv; tensorboard = OUT/tensorboard/<stage>-<id>/ "
                          "(pip install 'early-exposure[tracking]'); trackio / wandb-offline = a local tracker; default: off")
    add_executor(run)
    run.add_argument("--address", default=None,
                     help="with --executor ray: join a running Ray cluster ('auto' or HOST:PORT)")
    run.add_argument("--max-retries", type=int, default=2, metavar="N",
                     help="with --executor ray: retries of a task whose worker died (default 2)")
    return p



def curves_argv(kind: str | None) -> tuple[str, ...]:
    """The ``run`` arguments that switch live curves on (``()`` for None): what a caller that
    runs ``python -m lm_experiments run`` as a step (``paper_checks reproduce``) appends."""
    return () if kind is None else ("--curves", kind)


def _announce_curves(out: Path, kind: str) -> None:
    """Where the live curves go (printed once before the sweep)."""
    tree = RunTree(out)
    where = {"csv": ", ".join(str(RunTree.curves(tree.run_dir(s, "*"))) for s in ("pre", "post", "ft"))
                    + " (rows appear as each run trains)",
             "tensorboard": f"{tree.tensorboard(tree.run_dir('ft', '*')).parent} (tensorboard --logdir there)"}
    print(f"live training curves -> {where.get(kind, f'{tree.trackers} ({kind}, local)')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run; ``ConfigError`` is mapped to exit code 2 by :func:`run`."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one usage line
        return int(exc.code or 0)
    if args.cache_root_deprecated is not None:
        # the deprecated spelling (hidden from --help), kept silent so scripts keep working
        args.cache = args.cache or args.cache_root_deprecated
    if args.max_retries < 0:
        raise ConfigError("--max-retries", f"must be >= 0, got {args.max_retries}")
    if args.probe and not args.dry_run:
        raise ConfigError("--probe", "only with --dry-run (it times a few steps instead of training); add --dry-run")
    out = check_output_dir("--out", args.out)
    if args.offline:  # before anything imports huggingface_hub / datasets
        go_offline()
    # auto: Ray when installed on 2+ cores; under torchrun every run is data-parallel: serial
    args.executor = "serial" if args.executor == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1 \
        else resolve_executor(args.executor)
    if args.dry_run and not args.probe:  # from the config alone: no network, no data, no model
        from lm_experiments.config import load_config
        from lm_experiments.runner.dryrun import static_dry_run

        static_dry_run(load_config(args.config, args.overrides), executor=args.executor, label=Path(args.config).stem)
        return 0
    from lm_experiments.engine import distributed
    from lm_experiments.config import load_config
    from lm_experiments.data.prepare import default_cache_root
    from lm_experiments.runner.pipeline import run_pipeline

    check_output_dir("--cache", args.cache or default_cache_root())
    from lm_experiments.engine.curves import require

    require(args.curves)  # the chosen writer's package imports (one line, exit 2, otherwise)
    cfg = load_config(args.config, args.overrides)
    if args.offline and cfg.data_fallback is not None:  # a missing hub corpus is an error, not a silent fallback
        import dataclasses

        cfg = dataclasses.replace(cfg, data_fallback=None, fallback_set=())
    distributed.init_from_env()  # under torchrun: one process group, every run data-parallel over it
    if args.curves and not args.dry_run and distributed.context().is_main:
        _announce_curves(out, args.curves)
    try:
        m = run_pipeline(cfg, out, cache_root=Path(args.cache) if args.cache else None, dry_run=args.dry_run,
                         progress=not args.no_progress, executor=args.executor, address=args.address,
                         max_retries=args.max_retries, curves=args.curves)
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
