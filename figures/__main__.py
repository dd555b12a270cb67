"""Draw the paper's figures from saved results.

    python -m figures all --results results/ --out results/figures
    python -m figures frontiers|lambda|spectra|phase|theory_vs_lm|matched --results DIR --out OUT

Missing data: the figure is skipped with a printed note (exit 0). Inputs that are not
comparable (several pipelines or evaluation sets in one panel): that figure is refused,
the others are drawn, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from early_exposure.errors import ConfigError, cli_main
from early_exposure.io import atomic_write_json
from figures.common import Logger

FAMILIES = ("frontiers", "lambda", "spectra", "phase", "theory_vs_lm", "matched")


def make_figures(results: Path, out: Path, which: str = "all", log: Logger = print) -> tuple[list[Path], list[str]]:
    """Draw the chosen family (or all) -> (paths written, refusals)."""
    from figures.common import NotComparable
    from figures.frontiers import frontier_figures, theory_vs_lm
    from figures.lambda_studies import lambda_figures
    from figures.matched import matched_figures
    from figures.theory import phase_figure, spectra_figure

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
            else:
                paths += theory_vs_lm(results, out, log)
        except NotComparable as e:
            failures.append(f"{fam}: {e}")
            log(f"REFUSED {fam}: not comparable: {e}")
    return paths, failures


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m figures", description=__doc__.split("\n")[0])
    ap.add_argument("which", choices=("all", *FAMILIES))
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    if not results.is_dir():
        raise ConfigError("--results", f"not a directory: {results}")
    paths, failures = make_figures(results, out, args.which)
    if paths:
        atomic_write_json(out / "figures.json", {"figures": [str(p) for p in paths], "refused": failures})
    for p in paths:
        print(p)
    print(f"{len(paths)} files written, {len(failures)} figure(s) refused")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(cli_main(_main))
