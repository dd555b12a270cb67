"""Export the training curves of finished runs from their ``result.json`` (no retraining).

Every finished pretraining, post-training and fine-tuning run of an LM results directory
keeps its per-step history in its ``result.json`` (``train.history``; a fine-tuning run's
in ``stages.ft.history``). This command writes it as the same curve file the live path
writes (``--curves csv`` of ``python -m lm_experiments run``, :mod:`lm_experiments.engine.curves`):
``DEST/<stage>-<id>.csv``, byte for byte the run's ``curves.csv`` had it been written live,
or TensorBoard scalars in ``DEST/<stage>-<id>/``::

    python -m lm_experiments.analysis.curves --results results/lm/cpu-quick --out curves/
    python -m lm_experiments.analysis.curves --results OUT --out tb/ --format tensorboard
    tensorboard --logdir tb/

Runs whose directory does not match its integrity record are left out and listed (one line
each, :class:`early_exposure.runs.RunReader`); unfinished runs have no record yet (their
live ``curves.csv``, if any, is in their directory). Exit code 2 with one line for bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.runs import RunReader, RunTree
from lm_experiments.engine.curves import csv_text, require

#: the stages whose records carry a training history, in the order they are exported
STAGES = ("pre", "post", "ft")
FORMATS = ("csv", "tensorboard")


def history_of(stage: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-step training history of one run's record (``[]`` when it trained no step)."""
    train = (record.get("stages") or {}).get("ft") if stage == "ft" else record.get("train")
    hist = train.get("history") if isinstance(train, dict) else None
    return [h for h in hist if isinstance(h, dict) and "step" in h] if isinstance(hist, list) else []


def finished_histories(results: Path, reader: RunReader | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{<stage>-<id>: history}`` of every intact finished run under ``results`` with a history."""
    tree = RunTree(results)
    reader = reader or RunReader()
    out: dict[str, list[dict[str, Any]]] = {}
    for stage in STAGES:
        for d in tree.run_dirs(stage):
            rec = reader.run(d)
            hist = history_of(stage, rec) if rec is not None else []
            if hist:
                out[tree.curve_name(d)] = hist
    return out


def export(results: Path, dest: Path, fmt: str = "csv", reader: RunReader | None = None) -> list[Path]:
    """Write the curve of every finished run of ``results`` into ``dest``; the paths written."""
    from early_exposure.io import atomic_write_bytes
    from lm_experiments.engine.curves import TensorBoardCurves

    written: list[Path] = []
    for name, hist in finished_histories(results, reader).items():
        if fmt == "csv":
            written.append(atomic_write_bytes(dest / f"{name}.csv", csv_text(hist).encode("utf-8")))
        else:
            tb = TensorBoardCurves(dest / name)
            try:
                tb.begin(hist)
            finally:
                tb.close()
            written.append(dest / name)
    return written


def build_parser() -> Parser:
    p = Parser(prog="python -m lm_experiments.analysis.curves",
               description="Export the training curves of finished LM runs from their result.json files.")
    p.add_argument("--results", required=True, help="an LM results directory (lm_experiments run --out)")
    p.add_argument("--out", required=True, help="where to write the curves")
    p.add_argument("--format", choices=FORMATS, default="csv",
                   help="csv: OUT/<stage>-<id>.csv; tensorboard: OUT/<stage>-<id>/ event files (default csv)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    results = Path(args.results)
    if not results.is_dir() or not RunTree(results).looks_like_run_tree():
        raise ConfigError("--results", f"{results} is not an LM results directory (no manifest.json, frontier or runs/)")
    require(None if args.format == "csv" else args.format)
    reader = RunReader()
    written = export(results, Path(args.out), args.format, reader)
    for line in reader.skipped:
        print(f"damaged run left out: {line}", file=sys.stderr)
    if not written:
        print(f"no finished run with a training history under {results}", file=sys.stderr)
        return 1
    print(f"training curves of {len(written)} run(s) -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command (also the ``curves`` subcommand of an umbrella CLI): 0 when at least one
    run's curve was written, 1 when none was found, 2 with one line for bad input."""
    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
