"""Command line of the paper checks.

Judge saved results (never trains)::

    python -m paper_checks --results results/ --out results/report

writes ``OUT/report.json`` and ``OUT/report.md`` atomically and prints the verdict table;
exit 0 whenever the report was produced, whatever the verdicts.

Run the whole study (theory, LM preset, figures, checks), resumable::

    python -m paper_checks reproduce --preset quick --out results/
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure.errors import ConfigError, cli_main
from early_exposure.frontier import read_frontier
from early_exposure.provenance import provenance
from paper_checks.analyses import forgetting_analysis, layerwise_analysis
from paper_checks.checks_frontier import CheckOptions, frontier_checks, lambda_checks
from paper_checks.checks_matched import matched_checks
from paper_checks.checks_theory import collect_errata, latent_checks, theory_checks
from paper_checks.regime import gate_checks, regime_report
from paper_checks.report import print_table, summarise, write_report


def _load(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """A frontier table, or (None, reason) when absent or invalid (a check then says 'no data')."""
    if not path.is_file():
        return None, f"{path} not found"
    try:
        return read_frontier(path), None
    except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"{path} invalid ({str(exc).splitlines()[0]})"


def lm_preset_dirs(results: Path) -> list[Path]:
    """``results/lm/<preset>/`` directories holding a frontier table."""
    return sorted(p.parent for p in (results / "lm").glob("*/frontier.csv"))


def build_report(results: Path, opts: CheckOptions, chance_k: int | None = None) -> dict[str, Any]:
    """Every check and analysis on the saved results under ``results``."""
    checks: list[dict[str, Any]] = theory_checks(results)

    theory_front, why_f = _load(results / "theory" / "frontier" / "frontier.csv")
    theory_cm, why_c = _load(results / "theory" / "compute_matched" / "frontier.csv")
    checks += frontier_checks(theory_front, "theory", "theory", opts, claims="ad", what=why_f or "")
    checks += lambda_checks(theory_cm, "theory", "theory", opts, what=why_c or "")
    checks += latent_checks(results)
    checks += matched_checks(results / "theory" / "matched" / "matched.csv", "theory", "theory", opts)

    analyses: dict[str, Any] = {}
    presets = lm_preset_dirs(results)
    if not presets:
        checks += frontier_checks(None, "lm", "lm", opts, what=f"no {results / 'lm'}/<preset>/frontier.csv")
        checks += lambda_checks(None, "lm", "lm", opts, what=f"no {results / 'lm'}/<preset>/frontier.csv")
        analyses["forgetting"] = {"note": "no data: no LM results", "table": []}
        analyses["layerwise"] = {"note": "no data: no LM results", "table": []}
    for pdir in presets:
        df, why = _load(pdir / "frontier.csv")
        prefix = f"lm.{pdir.name}"
        checks += frontier_checks(df, "lm", prefix, opts, what=why or "")
        checks += lambda_checks(df, "lm", prefix, opts, what=why or "")
        if (pdir / "matched.csv").is_file():
            checks += matched_checks(pdir / "matched.csv", "lm", prefix, opts)
        analyses[f"forgetting ({pdir.name})"] = forgetting_analysis(df, pdir, k=chance_k)
        analyses[f"layerwise ({pdir.name})"] = layerwise_analysis(df, pdir)
    checks, not_planned = split_not_planned(checks)
    regime = regime_report(results)
    gate_checks(checks, regime)  # an LM verdict on a run set outside the paper's regime is INCONCLUSIVE
    return {
        "checks": checks,
        "not_planned": not_planned,
        "regime": regime,
        "errata": collect_errata(results),
        "summary": summarise(checks),
        "analyses": analyses,
        "settings": asdict(opts),
        "results_dir": str(results),
        "provenance": provenance(),
    }


def split_not_planned(checks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """LM checks of a pipeline whose preset did not plan the claim's arms ("no data"), when
    another LM pipeline judges the same claim on data: listed apart (not verdicts), so a
    preset that runs only some arms in its second pipeline does not fill the table with
    "no data" rows. A claim judged nowhere keeps its "no data" row."""
    judged = {c["analogue"] for c in checks
              if c["side"] == "lm" and c.get("analogue") and not c["evidence"].startswith("no data")}
    keep, apart = [], []
    for c in checks:
        if (c["side"] == "lm" and c.get("pipeline") and c["evidence"].startswith("no data")
                and c.get("analogue") in judged):
            apart.append({"id": c["id"], "reason": c["evidence"],
                          "judged_in": sorted(x["id"] for x in checks if x["side"] == "lm"
                                              and x.get("analogue") == c["analogue"]
                                              and not x["evidence"].startswith("no data"))})
        else:
            keep.append(c)
    return keep, apart


def _checks_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m paper_checks",
                                 description="Judge every claim of the paper against saved results.")
    ap.add_argument("--results", required=True, help="results directory (as written by reproduce)")
    ap.add_argument("--out", required=True, help="where report.json and report.md go")
    ap.add_argument("--min-seeds", type=int, default=CheckOptions.min_seeds)
    ap.add_argument("--n-boot", type=int, default=CheckOptions.n_boot)
    ap.add_argument("--level", type=float, default=CheckOptions.level)
    ap.add_argument("--seed", type=int, default=CheckOptions.seed, help="bootstrap RNG seed")
    ap.add_argument("--quiet", action="store_true", help="do not print the verdict table")
    return ap


def run_checks(argv: list[str] | None) -> int:
    args = _checks_parser().parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        raise ConfigError("--results", f"not a directory: {results}")
    opts = CheckOptions(min_seeds=args.min_seeds, n_boot=args.n_boot, level=args.level, seed=args.seed)
    report = build_report(results, opts)
    pj, pm = write_report(report, Path(args.out))
    if not args.quiet:
        print_table(report)
    print(f"wrote {pj} and {pm}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reproduce":
        from paper_checks.reproduce import reproduce_main

        return cli_main(reproduce_main, argv[1:])
    return cli_main(run_checks, argv)
