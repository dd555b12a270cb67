"""Command line of the paper checks.

Judge saved results (never trains)::

    python -m paper_checks --results results/ --out results/report
    python -m paper_checks --results results/lm/cpu-quick --out report/       # one LM output directory
    python -m paper_checks --results results/ other_lm_out/ --out report/      # several of either

``--results`` takes results trees (``DIR/theory/...``, ``DIR/lm/<preset>/frontier.csv``, as
``reproduce`` writes them) and LM output directories (``DIR/frontier.csv`` + ``DIR/runs/``, as
``python -m lm_experiments run --out DIR`` writes them), one or several; the command prints
what it found (which frontier tables, which theory files) before judging, and exits 2 when
it finds nothing to judge. It writes ``OUT/report.json``, ``OUT/report.md`` and ``OUT/verdicts.csv`` atomically and
prints the verdict table; exit 0 whenever the report was produced, whatever the verdicts.

Run the whole study (theory, LM preset, figures, checks), resumable::

    python -m paper_checks reproduce --preset quick --out results/
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure.cliopts import add_version
from early_exposure.configs import check_input_dir, check_output_dir
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.frontier import read_frontier
from early_exposure.provenance import provenance
from early_exposure.runs import ResultsRoot, RunTree
from paper_checks.analyses import forgetting_analysis, layerwise_analysis
from paper_checks.checks_frontier import CheckOptions, frontier_checks, lambda_checks
from paper_checks.checks_matched import matched_checks
from paper_checks.checks_beyond import lm_rows as beyond_lm_rows
from paper_checks.checks_beyond import theory_rows as beyond_theory_rows
from paper_checks.checks_theory import collect_errata, latent_checks, theory_checks
from paper_checks.regime import gate_checks
from paper_checks.report import adjust_families, print_table, split_self_tests, summarise, write_report


def _load(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """A frontier table, or (None, reason) when absent or invalid (a check then says 'no data')."""
    if not path.is_file():
        return None, f"{path} not found"
    from early_exposure import integrity

    damage = integrity.check(path)  # against its manifest (a table cut at a line end parses as a shorter one)
    if damage is not None:
        return None, f"{path} damaged ({damage}); rerun the command that wrote it"
    try:
        return read_frontier(path), None
    except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"{path} invalid ({str(exc).splitlines()[0]})"


def lm_preset_dirs(results: Path) -> list[Path]:
    """``results/lm/<preset>/`` directories holding a frontier table."""
    return [t.out for t in ResultsRoot(results).lm_trees()]


#: the theory files the checks read, relative to a results tree
THEORY_FILES = ("theory/verify/theorems.json", "theory/verify/assumptions.json", "theory/frontier/frontier.csv",
                "theory/compute_matched/frontier.csv", "theory/latent/latent.json", "theory/matched/matched.csv")


@dataclass
class Inputs:
    """What ``--results`` pointed at: one results tree for the theory side (or none) and the
    LM output directories, each with the label its checks carry (``lm.<label>.*``)."""

    theory_root: Path | None = None
    lm_dirs: list[tuple[str, Path]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # one line per --results argument

    @classmethod
    def from_tree(cls, results: Path) -> "Inputs":
        """A results tree as ``reproduce`` writes it (no checks on what it holds)."""
        return cls(Path(results), [(p.name, p) for p in lm_preset_dirs(Path(results))], [f"{results}: results tree"])

    def theory_found(self) -> list[str]:
        root = self.theory_root
        return [] if root is None else [f for f in THEORY_FILES if (root / f).is_file()]

    def summary(self) -> list[str]:
        """Lines saying exactly what was found."""
        lines = list(self.sources)
        theory = self.theory_found()
        lines.append(f"theory files ({len(theory)}): " + (", ".join(str(self.theory_root / f) for f in theory)
                                                           if theory else "none"))
        lines.append(f"LM frontier tables ({len(self.lm_dirs)}): " + (
            ", ".join(f"{label} = {d / 'frontier.csv'}" for label, d in self.lm_dirs) if self.lm_dirs else "none"))
        return lines


def _is_lm_out(d: Path) -> bool:
    return RunTree(d).looks_like_run_tree()


def discover(paths: list[str | Path]) -> Inputs:
    """Classify each ``--results`` path (results tree or LM output directory); ConfigError when a
    path holds neither, when two trees both hold theory results, or when nothing can be judged."""
    found = Inputs()
    for raw in paths:
        d = check_input_dir("--results", raw)
        if _is_lm_out(d):
            if not RunTree(d).frontier.is_file():
                why = ("only frontier.partial.csv: some runs failed or are unfinished; rerun the same "
                       "lm_experiments run command" if RunTree(d).frontier_partial.is_file() else "no frontier.csv yet")
                found.sources.append(f"{d}: LM output directory, {why}")
                continue
            found.lm_dirs.append((d.resolve().name, d))
            found.sources.append(f"{d}: LM output directory")
            continue
        presets = lm_preset_dirs(d)
        has_theory = any((d / f).is_file() for f in THEORY_FILES)
        if not presets and not has_theory:
            raise ConfigError("--results", f"{d} holds neither a results tree (theory/..., lm/<preset>/frontier.csv) "
                              "nor an LM output directory (frontier.csv, runs/); give the --out of "
                              "`paper_checks reproduce` or of `lm_experiments run`")
        if has_theory:
            if found.theory_root is not None:
                raise ConfigError("--results", f"both {found.theory_root} and {d} hold theory results; "
                                  "give one results tree with theory/ (LM directories may be several)")
            found.theory_root = d
        found.lm_dirs += [(p.name, p) for p in presets]
        found.sources.append(f"{d}: results tree ({'theory, ' if has_theory else ''}{len(presets)} LM preset(s))")
    # labels become check ids (lm.<label>.*): unique and without dots
    seen: dict[str, int] = {}
    labelled = []
    for label, d in found.lm_dirs:
        label = label.replace(".", "_") or "lm"
        seen[label] = seen.get(label, 0) + 1
        labelled.append((label if seen[label] == 1 else f"{label}_{seen[label]}", d))
    found.lm_dirs = labelled
    if not found.lm_dirs and not found.theory_found():
        raise ConfigError("--results", "nothing to judge: no frontier.csv and no theory results in "
                          f"{', '.join(map(str, paths))}; run `python -m paper_checks reproduce` or "
                          "`python -m lm_experiments run` first (or wait for its frontier.csv)")
    return found


def _regime(inputs: Inputs) -> dict[str, Any]:
    """The regime report of every LM directory, keyed by its label (regime_report per tree)."""
    from paper_checks.regime import regime_report

    reports: dict[Path, dict[str, Any]] = {}
    out: dict[str, Any] | None = None
    presets: dict[str, Any] = {}
    for label, d in inputs.lm_dirs:
        tree = d.parent.parent if d.parent.name == "lm" else None
        if tree is None:
            # an LM output directory outside a results tree: judge it through a one-entry tree view
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "lm").mkdir()
                (Path(tmp) / "lm" / label).symlink_to(d.resolve(), target_is_directory=True)
                rep = regime_report(Path(tmp))
            presets[label] = rep["presets"].get(label)
        else:
            if tree not in reports:
                reports[tree] = regime_report(tree)
            rep = reports[tree]
            presets[label] = rep["presets"].get(d.name)
        out = out or rep
    if out is None:
        out = regime_report(inputs.theory_root or Path("/nonexistent"))
    return {**out, "presets": {k: v for k, v in presets.items() if v is not None}}


def build_report(results: Path | Inputs, opts: CheckOptions, chance_k: int | None = None) -> dict[str, Any]:
    """Every check and analysis on the saved results (a results tree, or what :func:`discover` found)."""
    inputs = results if isinstance(results, Inputs) else Inputs.from_tree(Path(results))
    # the theory side reads a results tree; without one, every theory check says "no data"
    results = inputs.theory_root if inputs.theory_root is not None else Path("/nonexistent-theory-results")
    checks: list[dict[str, Any]] = theory_checks(results)

    root = ResultsRoot(results)
    theory_front, why_f = _load(root.theory("frontier") / "frontier.csv")
    theory_cm, why_c = _load(root.theory("compute_matched") / "frontier.csv")
    checks += frontier_checks(theory_front, "theory", "theory", opts, claims="ad", what=why_f or "")
    checks += lambda_checks(theory_cm, "theory", "theory", opts, what=why_c or "")
    checks += latent_checks(results)
    checks += beyond_theory_rows(results)  # beyond the paper: what / where (docs/whatwhere.md)
    checks += matched_checks(root.theory("matched") / "matched.csv", "theory", "theory", opts)

    analyses: dict[str, Any] = {}
    if not inputs.lm_dirs:
        checks += frontier_checks(None, "lm", "lm", opts, what="no LM frontier.csv given")
        checks += lambda_checks(None, "lm", "lm", opts, what="no LM frontier.csv given")
        analyses["forgetting"] = {"note": "no data: no LM results", "table": []}
        analyses["layerwise"] = {"note": "no data: no LM results", "table": []}
    for label, pdir in inputs.lm_dirs:
        tree = RunTree(pdir)
        df, why = _load(tree.frontier)
        prefix = f"lm.{label}"
        checks += frontier_checks(df, "lm", prefix, opts, what=why or "", run_dir=pdir)
        checks += lambda_checks(df, "lm", prefix, opts, what=why or "", run_dir=pdir)
        if tree.matched.is_file():
            checks += matched_checks(tree.matched, "lm", prefix, opts)
        if tree.whatwhere.is_dir():
            checks += beyond_lm_rows(tree.whatwhere, label)
        analyses[f"forgetting ({label})"] = forgetting_analysis(df, pdir, k=chance_k)
        analyses[f"layerwise ({label})"] = layerwise_analysis(df, pdir)
    checks, not_planned = split_not_planned(checks)
    checks, self_tests = split_self_tests(checks)  # software self-tests: outside the verdict tally
    adjust_families(checks, 1 - opts.level)  # Holm within each LM run set's family
    regime = _regime(inputs)
    gate_checks(checks, regime)  # an LM verdict on a run set outside the paper's regime is INCONCLUSIVE
    return {
        "checks": checks,
        "not_planned": not_planned,
        "self_tests": self_tests,
        "regime": regime,
        "errata": collect_errata(results),
        "summary": summarise(checks),
        "analyses": analyses,
        "settings": asdict(opts),
        "results_dir": str(inputs.theory_root or (inputs.lm_dirs[0][1] if inputs.lm_dirs else "")),
        "inputs": {"theory": [str(inputs.theory_root / f) for f in inputs.theory_found()],
                   "lm": {label: str(d) for label, d in inputs.lm_dirs}},
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


EPILOG = """commands:
  reproduce   run the whole study (theory, LM presets, figures, these checks), resumable:
              python -m paper_checks reproduce --preset quick --out results/
              (python -m paper_checks reproduce --help for its options)"""


def _checks_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m paper_checks", usage="%(prog)s [reproduce ...] | --results DIR [DIR ...] --out DIR ...",
                 description="Judge every claim of the paper against saved results (or, with `reproduce`, "
                             "produce them first).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, nargs="+", action="extend", metavar="DIR",
                    help="results tree(s) (DIR/theory/..., DIR/lm/<preset>/frontier.csv, as reproduce writes them) "
                         "and/or LM output directories (DIR/frontier.csv + DIR/runs/, as lm_experiments run "
                         "--out DIR writes them); several allowed, at most one with theory results")
    ap.add_argument("--out", required=True, help="where report.json and report.md go")
    ap.add_argument("--min-seeds", type=int, default=CheckOptions.min_seeds, metavar="N",
                    help=f"fewest independent seeds for a PASS or FAIL on noisy data; fewer -> INCONCLUSIVE "
                         f"(default {CheckOptions.min_seeds})")
    ap.add_argument("--n-boot", type=int, default=CheckOptions.n_boot, metavar="N",
                    help=f"bootstrap replicates (theory intervals over upstream units), >= 20 (default {CheckOptions.n_boot})")
    ap.add_argument("--level", type=float, default=CheckOptions.level,
                    help=f"two-sided confidence level of every interval, in (0.5, 1) (default {CheckOptions.level})")
    ap.add_argument("--seed", type=int, default=CheckOptions.seed, help="bootstrap RNG seed")
    ap.add_argument("--quiet", action="store_true", help="do not print the verdict table")
    add_version(ap)
    return ap


def run_checks(argv: list[str] | None) -> int:
    args = _checks_parser().parse_args(argv)
    opts = CheckOptions(min_seeds=args.min_seeds, n_boot=args.n_boot, level=args.level, seed=args.seed)
    out = check_output_dir("--out", args.out)
    inputs = discover(args.results)
    for line in inputs.summary():
        print(f"found {line}")
    report = build_report(inputs, opts)
    pj, pm = write_report(report, out)
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
