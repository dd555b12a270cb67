"""Bad input to the LM, checks, figures and reproduce command lines (the theory CLI's classes
are in test_bad_inputs_theory.py), and the CLI conventions of issue 15.

Each bad-input class: exit 2, one stderr line naming the field (and the fix), nothing
written to the output location. Also: ``paper_checks --results`` on LM output directories
and several inputs, help text on every option of every parser, console entry points, the
progress relay of ``reproduce``, local training curves, and the frontier PASS rule's
minimum gain in a view without overlap.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paper_checks.synthetic import _row, write_fixture

REPO = Path(__file__).resolve().parent.parent
LM_PRESET = REPO / "configs" / "lm" / "cpu-quick.yaml"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _lm(argv):
    from lm_experiments.cli import run

    return run(argv)


def _checks(argv):
    from paper_checks.cli import main

    return main(argv)


def _figures(argv):
    from figures.__main__ import main

    return main(argv)


def _data(argv):
    from lm_experiments.data.__main__ import run

    return run(argv)


@pytest.fixture(scope="module")
def fixture_tree(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("results") / "results")


# --------------------------------------------------------------------------- configs
def test_binary_and_directory_configs(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    out = tmp_path / "out"
    assert _lm(["run", "--config", str(binary), "--out", str(out), "--cache", str(tmp_path / "c")]) == 2
    assert "--config" in (line := _one_line(capsys)) and "not a UTF-8 text file" in line
    assert _data(["prepare", "--config", str(binary), "--cache", str(tmp_path / "c")]) == 2
    assert "not a UTF-8 text file" in _one_line(capsys)
    assert _lm(["run", "--config", str(tmp_path), "--out", str(out), "--cache", str(tmp_path / "c")]) == 2
    assert "is a directory" in _one_line(capsys)
    assert not out.exists() and not (tmp_path / "c").exists()


def test_empty_lm_config_names_the_missing_section(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = tmp_path / "out"
    assert _lm(["run", "--config", str(empty), "--out", str(out), "--cache", str(tmp_path / "c")]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: data:") and "required section is missing" in line and "__init__" not in line
    assert not out.exists()


@pytest.mark.parametrize("override, field", [
    ("pre.tokens=1e15", "pre.tokens"), ("ft.tokens=1e13", "ft.tokens"), ("post.max_tokens=1e16", "post.max_tokens"),
    ("pre.batch_size=1e7", "pre.batch_size"), ("post.max_epochs=1e6", "post.max_epochs"),
])
def test_absurd_budgets_are_refused(tmp_path, capsys, override, field):
    out = tmp_path / "out"
    assert _lm(["run", "--config", str(LM_PRESET), "--set", override, "--out", str(out), "--dry-run",
                "--cache", str(tmp_path / "c")]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {field}:") and "sane maximum" in line and "lower it" in line
    assert not out.exists()


def test_budget_at_the_bound_is_accepted():
    from lm_experiments.config import MAX_TOKENS, load_config

    assert MAX_TOKENS >= 8_700_000_000  # the paper's pretraining budget must stay allowed
    cfg = load_config(LM_PRESET, [f"pre.tokens={MAX_TOKENS}"])
    assert cfg.pre.tokens == 10**12


# --------------------------------------------------------------------------- output locations
def test_out_and_cache_under_a_regular_file(tmp_path, fixture_tree, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under = str(blocker / "sub")
    cases = [
        (_lm, ["run", "--config", str(LM_PRESET), "--out", under, "--cache", str(tmp_path / "c")], "--out"),
        (_lm, ["run", "--config", str(LM_PRESET), "--out", str(tmp_path / "o"), "--cache", under], "--cache"),
        (_data, ["prepare", "--config", str(LM_PRESET), "--cache", under], "--cache"),
        (_data, ["prepare", "--config", str(LM_PRESET), "--cache", str(tmp_path / "c"),
                 "--json", str(blocker / "s.json")], "--json"),
        (_checks, ["--results", str(fixture_tree), "--out", under], "--out"),
        (_figures, ["all", "--results", str(fixture_tree), "--out", under], "--out"),
        (_checks, ["reproduce", "--out", under, "--dry-run"], "--out"),
    ]
    for fn, argv, flag in cases:
        assert fn(argv) == 2, argv
        line = _one_line(capsys)
        assert line.startswith(f"error: {flag}:") and f"{blocker} is a file, not a directory" in line, line
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_deprecated_cache_root_alias_still_works_and_is_hidden(tmp_path, capsys):
    from lm_experiments.data.__main__ import _parser

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _data(["prepare", "--config", str(LM_PRESET), "--cache-root", str(blocker / "c")]) == 2
    assert _one_line(capsys).startswith("error: --cache:")
    helps = _parser()._subparsers._group_actions[0].choices["prepare"].format_help()
    assert "--cache DIR" in helps and "--cache-root" not in helps


# --------------------------------------------------------------------------- figures on damaged tables
def _damage_sweep(d: Path) -> Path:
    p = d / "theory/sweep/sweep.parquet"
    p.write_bytes(b"PAR1 garbage, not a parquet file")
    return p


def _truncate_result(d: Path) -> Path:
    p = d / "theory/trajectories/mixed/result.json"
    p.write_bytes(p.read_bytes()[:20])
    return p


def _non_utf8_frontier(d: Path) -> Path:
    p = d / "lm/cpu-quick/frontier.csv"
    p.write_bytes(b"side,pipeline\n\xff\xfe\xfd,x\n")
    return p


def _frontier_missing_columns(d: Path) -> Path:
    p = d / "theory/frontier/frontier.csv"
    pd.read_csv(p).drop(columns=["L_ret"]).to_csv(p, index=False)
    return p


@pytest.mark.parametrize("damage, why", [
    (_damage_sweep, "not a readable parquet file"), (_truncate_result, "JSON"),
    (_non_utf8_frontier, "not UTF-8"), (_frontier_missing_columns, "L_ret"),
])
def test_figures_refuse_a_damaged_table_before_drawing(tmp_path, fixture_tree, capsys, damage, why):
    tree = tmp_path / "results"
    shutil.copytree(fixture_tree, tree)
    bad = damage(tree)
    out = tmp_path / "figs"
    assert _figures(["all", "--results", str(tree), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: --results:") and str(bad) in line and why in line and "rerunning" in line
    assert not out.exists()


def test_figures_draw_the_undamaged_tree(tmp_path, fixture_tree):
    out = tmp_path / "figs"
    assert _figures(["phase", "--results", str(fixture_tree), "--out", str(out)]) == 0
    assert list(out.glob("*.png"))


# --------------------------------------------------------------------------- paper_checks --results
def test_checks_accept_an_lm_output_directory_and_say_what_they_found(tmp_path, fixture_tree, capsys):
    lm_out = tmp_path / "my-lm-run"  # what `lm_experiments run --out my-lm-run` writes
    shutil.copytree(fixture_tree / "lm" / "cpu-quick", lm_out)
    (lm_out / "runs").mkdir()
    tree_report, lm_report = tmp_path / "r1", tmp_path / "r2"
    assert _checks(["--results", str(fixture_tree), "--out", str(tree_report), "--quiet", "--n-boot", "50"]) == 0
    capsys.readouterr()
    assert _checks(["--results", str(lm_out), "--out", str(lm_report), "--quiet", "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out
    assert f"found {lm_out}: LM output directory" in printed
    assert f"LM frontier tables (1): my-lm-run = {lm_out / 'frontier.csv'}" in printed
    assert "theory files (0): none" in printed
    a = {c["id"].replace("lm.cpu-quick.", "lm.X."): c["status"]
         for c in json.loads((tree_report / "report.json").read_text())["checks"] if c["side"] == "lm"}
    b = {c["id"].replace("lm.my-lm-run.", "lm.X."): c["status"]
         for c in json.loads((lm_report / "report.json").read_text())["checks"] if c["side"] == "lm"}
    assert a == b and len(a) >= 10
    assert sum(s != "INCONCLUSIVE" for s in b.values()) >= 5  # judged on data, not "no data"


def test_checks_accept_several_inputs(tmp_path, fixture_tree, capsys):
    lm_out = tmp_path / "second"
    shutil.copytree(fixture_tree / "lm" / "cpu-quick", lm_out)
    out = tmp_path / "r"
    assert _checks(["--results", str(fixture_tree), str(lm_out), "--out", str(out), "--quiet", "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out
    assert "LM frontier tables (2)" in printed and "theory files (4)" in printed
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["inputs"]["lm"]) == {"cpu-quick", "second"}
    ids = {c["id"] for c in rep["checks"]}
    assert any(i.startswith("lm.cpu-quick.") for i in ids) and any(i.startswith("lm.second.") for i in ids)


def test_checks_with_nothing_to_judge_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "r"
    assert _checks(["--results", str(empty), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: --results:") and "neither a results tree" in line
    lm_partial = tmp_path / "partial"
    lm_partial.mkdir()
    (lm_partial / "frontier.partial.csv").write_text("side\n")
    assert _checks(["--results", str(lm_partial), "--out", str(out)]) == 2
    assert "nothing to judge" in _one_line(capsys)
    assert not out.exists()


# --------------------------------------------------------------------------- CLI conventions
def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every argparse parser of every CLI (subcommands included)."""
    import paper_checks.reproduce as reproduce
    from figures.__main__ import build_parser as figures_parser
    from linear_theory.cli import build_parser as theory_parser
    from lm_experiments.cli import build_parser as lm_parser
    from lm_experiments.data.__main__ import _parser as data_parser
    from paper_checks.cli import _checks_parser

    captured = {}

    class Stop(Exception):
        pass

    def grab(self, args=None, namespace=None):
        captured["reproduce"] = self
        raise Stop

    orig = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        reproduce.reproduce_main([])
    except Stop:
        pass
    finally:
        argparse.ArgumentParser.parse_args = orig
    from figures.whatwhere import build_parser as ww_figures_parser
    from linear_theory.studies.whatwhere import build_parser as ww_theory_parser
    from lm_experiments.analysis.whatwhere import build_parser as ww_lm_parser

    roots = {"linear_theory": theory_parser(), "lm_experiments": lm_parser(), "lm_experiments.data": data_parser(),
             "paper_checks": _checks_parser(), "figures": figures_parser(), "lm_experiments.analysis.whatwhere": ww_lm_parser(),
             "linear_theory.studies.whatwhere": ww_theory_parser(), "figures.whatwhere": ww_figures_parser(),
             **captured}
    out = {}

    def walk(name, p):
        out[name] = p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, sp in a.choices.items():
                    walk(f"{name} {sub}", sp)

    for name, p in roots.items():
        walk(name, p)
    return out


def test_every_option_of_every_cli_has_help():
    parsers = _parsers()
    assert {"linear_theory frontier", "linear_theory compute-matched", "linear_theory verify",
            "linear_theory assumptions", "reproduce", "figures", "paper_checks"} <= set(parsers)
    missing = [f"{name}: {'/'.join(a.option_strings) or a.dest}"
               for name, p in parsers.items() for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert missing == []


def test_closed_sets_have_choices():
    parsers = _parsers()
    preset = next(a for a in parsers["reproduce"]._actions if "--preset" in a.option_strings)
    assert set(preset.choices) == {"quick", "full", "gpu"}
    for name in ("linear_theory run", "linear_theory sweep"):
        method = next(a for a in parsers[name]._actions if "--method" in a.option_strings)
        assert set(method.choices) == {"auto", "full", "spectral"}


def test_paper_checks_help_lists_reproduce(capsys):
    with pytest.raises(SystemExit):
        _checks(["--help"])
    assert "reproduce" in capsys.readouterr().out


def test_console_entry_points_resolve_to_the_module_mains():
    import importlib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {"early-exposure": "early_exposure", "linear-theory": "linear_theory", "lm-experiments": "lm_experiments",
                "lm-experiments-data": "lm_experiments.data", "paper-checks": "paper_checks",
                "early-exposure-figures": "figures"}
    assert set(scripts) == set(expected)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module.startswith(expected[name])
        fn = getattr(importlib.import_module(module), func)
        try:  # --help prints and exits 0 through the same entry point (SystemExit or a return code)
            rc = fn(["--help"])
        except SystemExit as exc:
            rc = exc.code
        assert rc == 0, name


# --------------------------------------------------------------------------- reproduce progress
_FAKE_LM = r"""
import sys, time
from tqdm import tqdm
bar = tqdm(total=4, desc="pipeline (serial)", unit="run")
for i in range(4):
    time.sleep(0.4)
    bar.update(1)
bar.close()
"""


@pytest.mark.parametrize("tty", [False, True])
def test_reproduce_relays_the_lm_progress_bar(tmp_path, capsys, tty):
    from paper_checks.reproduce import PIPELINE_BAR, Step, run_plan

    step = Step("LM fake", (sys.executable, "-c", _FAKE_LM), (), progress=PIPELINE_BAR)
    lines: list[str] = []
    rec = run_plan([step], tmp_path, "quick", log=lines.append, poll_s=0.05, tty=tty)
    assert rec["steps"][0]["status"] == "ok"
    relayed = [x for x in lines if "pipeline (serial)" in x] if not tty else \
        [x for x in capsys.readouterr().out.split("\r") if "pipeline (serial)" in x]
    assert len(relayed) >= 2  # several updates, not one line at the end
    assert any("4/4" in x for x in relayed)
    # rate and ETA as tqdm prints them: [elapsed<remaining, rate]
    assert all("<" in x and "/s" in x for x in relayed)
    if not tty:
        assert all(x.startswith("[1/1] LM fake: pipeline (serial)") for x in relayed)


def test_reproduce_lm_steps_run_with_progress(tmp_path):
    from paper_checks.reproduce import PIPELINE_BAR, plan

    for preset, n in (("quick", 1), ("full", 4)):  # the quick preset's one pipeline (synthetic); the longer one's four
        lm = [s for s in plan(preset, tmp_path) if s.argv[1:4] == ("-m", "lm_experiments", "run")]
        assert len(lm) == n  # the pipelines (their what/where steps are not training runs)
        assert lm and all("--no-progress" not in s.argv and s.progress == PIPELINE_BAR for s in lm)


# --------------------------------------------------------------------------- training curves (tests/test_lm_curves.py)
def test_curves_are_off_by_default():
    from lm_experiments.cli import build_parser

    args = build_parser().parse_args(["run", "--config", "cpu-quick", "--out", "y"])
    assert args.curves is None


# --------------------------------------------------------------------------- PASS rule: a minimum in every view
def _disjoint_fronts(a: float) -> pd.DataFrame:
    """Theory rows (one seed) in the ret_ft view (x = L_ft, y = L_ret), fronts disjoint in x:
    baseline (0, 1), (0.4, 0.6 + a); candidate (0.6, 0.4), (1, 0). The box is [0, 1]^2, so by
    hand HV(base) = 1.1*0.1 + 0.7*(0.4 - a) = 0.39 - 0.7a, HV(cand) = 0.5*0.7 + 0.1*0.4 = 0.39."""
    rows = []
    for method, lam, pts in (("unmixed", 0.0, [(0.0, 1.0), (0.4, 0.6 + a)]), ("mixed", 0.5, [(0.6, 0.4), (1.0, 0.0)])):
        for j, (x, y) in enumerate(pts):
            rows.append(_row("theory", "theory", method, lam, False, f"up-{method}", 0, 1e-3 * (j + 1),
                             1.0, y, x, 2.0))
    return pd.DataFrame(rows)


def test_pass_needs_a_meaningful_gain_when_the_fronts_do_not_overlap():
    from paper_checks.checks_frontier import CheckOptions, compare_frontiers

    opts = CheckOptions(n_boot=50)
    status, evidence, data = compare_frontiers(_disjoint_fronts(1e-5), "unmixed", "mixed", "ret_ft", "theory", opts)
    assert data["hv_candidate"] - data["hv_baseline"] == pytest.approx(0.7e-5, rel=1e-3)  # tiny but positive
    assert not np.isfinite(data["loss_gap"]["point"])  # no overlap in L_ft: the gap is undefined
    assert status == "INCONCLUSIVE" and "do not overlap" in evidence
    status, _, data = compare_frontiers(_disjoint_fronts(0.1), "unmixed", "mixed", "ret_ft", "theory", opts)
    assert data["hv_candidate"] - data["hv_baseline"] == pytest.approx(0.07, rel=1e-3)  # 22% of HV(base)
    assert status == "PASS"


def test_figures_refuse_a_sealed_table_cut_at_a_line_end(tmp_path, fixture_tree, capsys):
    """A frontier table cut after a complete line still parses; its manifest gives it away."""
    from early_exposure.integrity import seal

    tree = tmp_path / "results"
    shutil.copytree(fixture_tree, tree)
    csv = tree / "lm/cpu-quick/frontier.csv"
    seal(csv)
    lines = csv.read_bytes().splitlines(keepends=True)
    csv.write_bytes(b"".join(lines[: len(lines) // 2]))
    assert len(pd.read_csv(csv)) == len(lines) // 2 - 1  # still a valid-looking table
    out = tmp_path / "figs"
    assert _figures(["frontiers", "--results", str(tree), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert str(csv) in line and "truncated" in line and "lm_experiments run" in line
    assert not out.exists()
