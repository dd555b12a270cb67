"""Draw the paper's figures from saved results.

    python -m figures [all] --results results/ --out results/figures
    python -m figures frontiers|lambda|spectra|phase|theory_vs_lm|matched --results DIR --out OUT

Bad arguments and damaged input files (a table that cannot be read: truncated, not UTF-8,
missing columns) stop the command before anything is drawn: one line naming the file and how
to rebuild it, exit 2. Missing data: the figure is skipped with a printed note (exit 0). Inputs that are not
comparable (several pipelines or evaluation sets in one panel): that figure is refused,
the others are drawn, and the exit code is 1.

Every file is named ``<source>_<family>_<name>.png|pdf`` and listed in ``figures.json`` with its
caption (paths relative to --out; docs/figures.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from early_exposure.cliopts import add_version
from early_exposure.configs import check_input_dir, check_output_dir
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.io import atomic_write_json
from figures.common import Logger, manifest

FAMILIES = ("frontiers", "lambda", "spectra", "phase", "theory_vs_lm", "matched", "whatwhere")
FAMILY_HELP = {
    "all": "every family below",
    "frontiers": "loss frontiers per pipeline (LM presets and the theory study)",
    "lambda": "losses against the mix fraction lambda (plain and compute-matched)",
    "spectra": "theory singular-value staircases, mixed vs unmixed",
    "phase": "theory phase diagram over (mix_fraction, beta) from the sweep",
    "theory_vs_lm": "theory and LM frontiers side by side",
    "matched": "L_ret against L_im along stage 2 (matched-L_im study)",
    "whatwhere": "beyond the paper: item-level forgetting map and layer-rollback depth profile per LM preset",
}
#: which input tables each family reads (relative to --results; globs) and the command that rebuilds them
_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "frontiers": (("lm/*/frontier.csv", "python -m lm_experiments run"),
                  ("theory/frontier/frontier.csv", "python -m linear_theory frontier")),
    "lambda": (("lm/*/frontier.csv", "python -m lm_experiments run"),
               ("theory/compute_matched/frontier.csv", "python -m linear_theory compute-matched")),
    "spectra": (("theory/trajectories/*/trajectory.csv", "python -m linear_theory run --trajectory-stride N"),
                ("theory/trajectories/*/result.json", "python -m linear_theory run --trajectory-stride N")),
    "phase": (("theory/sweep/sweep.parquet", "python -m linear_theory sweep"),),
    "theory_vs_lm": (("lm/*/frontier.csv", "python -m lm_experiments run"),
                     ("theory/frontier/frontier.csv", "python -m linear_theory frontier")),
    "matched": (("lm/*/matched.csv", "python -m lm_experiments run"),
                ("theory/matched/matched.csv", "python -m linear_theory matched")),
    "whatwhere": (("lm/*/whatwhere/forgetting_map.csv", "python -m lm_experiments.analysis.whatwhere"),
                  ("lm/*/whatwhere/depth_profile.csv", "python -m lm_experiments.analysis.whatwhere")),
}


def _damage(path: Path) -> str | None:
    """Why ``path`` cannot be read as the table its name says, or None when it can: its
    integrity manifest when its writer sealed it (a truncation at a line end is caught too),
    then whether it parses as the table its name says."""
    import json

    import pandas as pd

    from early_exposure.integrity import check

    why = check(path)
    if why is not None:
        return why

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pq.read_table(path)
        except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError
            return "not a readable Parquet file: truncated or corrupted"
        return None
    try:
        if path.suffix == ".json":
            try:
                json.loads(path.read_bytes().decode("utf-8"))
            except json.JSONDecodeError:
                return "not valid JSON: truncated or corrupted"
        elif path.name == "frontier.csv":
            from early_exposure.frontier import read_frontier

            path.read_bytes().decode("utf-8")
            read_frontier(path)
        else:
            path.read_bytes().decode("utf-8")
            pd.read_csv(path)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"unreadable: {msg[:100]}"
    return None


def check_inputs(results: Path, which: str) -> None:
    """ConfigError naming the first damaged input table of the chosen figures and the command
    that rebuilds it; run before anything is drawn."""
    for fam in FAMILIES if which == "all" else (which,):
        for pattern, fix in _INPUTS[fam]:
            for path in sorted(results.glob(pattern)):
                why = _damage(path) if path.is_file() else None
                if why is not None:
                    what = why if str(path) in why else f"{path} ({why})"
                    raise ConfigError("--results", f"damaged input {what}; rebuild it by rerunning `{fix}` with its --out "
                                      "(or move it away to draw the other figures)")


def make_figures(results: Path, out: Path, which: str = "all", log: Logger = print) -> tuple[list[Path], list[str]]:
    """Draw the chosen family (or all) -> (paths written, refusals)."""
    from figures.common import NotComparable
    from figures.frontiers import frontier_figures, theory_vs_lm
    from figures.lambda_studies import lambda_figures
    from figures.matched import matched_figures
    from figures.theory import phase_figure, spectra_figure
    from figures.whatwhere import make_whatwhere_figures

    paths: list[Path] = []
    failures: list[str] = []
    for fam in FAMILIES if which == "all" else (which,):
        try:
            if fam == "frontiers":
                p, f = frontier_figures(results, out, log)
                paths += p
                failures += f
            elif fam == "lambda":
                paths += lambda_figures(results, out, log)
            elif fam == "spectra":
                paths += spectra_figure(results, out, log)
            elif fam == "phase":
                paths += phase_figure(results, out, log)
            elif fam == "matched":
                paths += matched_figures(results, out, log)
            elif fam == "whatwhere":
                paths += make_whatwhere_figures(results, out, log)
            else:
                paths += theory_vs_lm(results, out, log)
        except NotComparable as e:
            failures.append(f"{fam}: {e}")
            log(f"REFUSED {fam}: not comparable: {e}")
    return paths, failures


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m figures", description=__doc__.split("\n")[0],
                 epilog="figure families: " + "; ".join(f"{k}: {v}" for k, v in FAMILY_HELP.items()))
    ap.add_argument("which", nargs="?", default="all", choices=("all", *FAMILIES), metavar="FAMILY",
                    help=f"which figures: {', '.join(('all', *FAMILIES))} (described below; default all)")
    ap.add_argument("--results", required=True,
                    help="results tree (DIR/theory/..., DIR/lm/<preset>/..., as paper_checks reproduce writes it)")
    ap.add_argument("--out", required=True, help="output directory (PNG and PDF files, figures.json)")
    add_version(ap)
    return ap


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    results = check_input_dir("--results", args.results)
    out = check_output_dir("--out", args.out)
    check_inputs(results, args.which)
    paths, failures = make_figures(results, out, args.which)
    if paths:
        atomic_write_json(out / "figures.json", manifest(paths, out, failures))
    for p in paths:
        print(p)
    print(f"{len(paths)} files written, {len(failures)} figure(s) refused")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``python -m figures``, ``early-exposure-figures``): ConfigError -> one line, exit 2."""
    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
