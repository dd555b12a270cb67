"""The report (paper_checks.report): Holm within each LM run set's family against a hand
calculation, self-tests outside the tally, the claim x side matrix first, verdicts.csv."""

from __future__ import annotations

import csv
import io

import pytest

from paper_checks.report import (adjust_families, make_check, render_markdown, split_self_tests, summarise,
                                 verdicts_csv, write_report)


def _c(cid, status="PASS", p=None, side="lm", analogue=None):
    data = {} if p is None else {"p": p, "loss_gap": {"point": 0.1, "lo": 0.05, "hi": 0.15, "n_valid": 5}}
    return make_check(cid, f"claim {cid}", "src", side, status, "ev", data, "pipe", analogue)


def test_holm_within_each_run_set_family():
    checks = [_c("lm.a.x1", p=0.01), _c("lm.a.x2", p=0.04), _c("lm.a.x3", "FAIL", p=0.03), _c("lm.a.x4", p=0.20),
              _c("lm.b.y1", p=0.04), _c("theory.z", p=0.001, side="theory"), _c("lm.a.nop")]
    sizes = adjust_families(checks, alpha=0.05)
    assert sizes == {"lm.a": 4, "lm.b": 1}
    # hand: sorted 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> 0.09 (running max), 0.20
    got = {c["id"]: c["data"].get("p_adjusted") for c in checks}
    assert got["lm.a.x1"] == pytest.approx(0.04) and got["lm.a.x2"] == pytest.approx(0.09)
    assert got["lm.a.x3"] == pytest.approx(0.09) and got["lm.a.x4"] == pytest.approx(0.20)
    assert got["lm.b.y1"] == pytest.approx(0.04)  # a family of one: unchanged
    assert got["theory.z"] is None and got["lm.a.nop"] is None
    st = {c["id"]: c["status"] for c in checks}
    assert st["lm.a.x1"] == "PASS" and st["lm.b.y1"] == "PASS"
    assert st["lm.a.x2"] == "INCONCLUSIVE" and st["lm.a.x4"] == "INCONCLUSIVE"
    assert st["lm.a.x3"] == "FAIL"  # a FAIL is not a discovery: kept
    x2 = next(c for c in checks if c["id"] == "lm.a.x2")
    assert "Holm" in x2["evidence"] and x2["data"]["multiplicity"]["status_before"] == "PASS"


def test_self_tests_apart_matrix_first_and_verdicts_csv(tmp_path):
    checks = [_c("theory.saxe_closed_form", side="theory"), _c("lm.q.whatwhere.rollback_exact"),
              _c("lm.q.a.mixing.ret_ft.p", p=0.01, analogue="a.mixing.ret_ft"),
              _c("theory.a.mixing.ret_ft.p", "FAIL", side="theory", analogue="a.mixing.ret_ft")]
    verdicts, selft = split_self_tests(checks)
    assert [c["id"] for c in selft] == ["theory.saxe_closed_form", "lm.q.whatwhere.rollback_exact"]
    adjust_families(verdicts)
    report = {"checks": verdicts, "self_tests": selft, "summary": summarise(verdicts), "errata": [],
              "results_dir": "r", "analyses": {}}
    assert report["summary"] == {"PASS": 1, "FAIL": 1, "INCONCLUSIVE": 0, "ERRATUM": 0}
    md = render_markdown(report)
    assert md.index("Theory and LM side by side") < md.index("| id | side |") < md.index("## Software self-tests")
    assert "| FAIL (pipe) | PASS (q: pipe) |" in md  # the matrix row of claim (a): theory, LM
    rows = list(csv.DictReader(io.StringIO(verdicts_csv(verdicts))))
    assert list(rows[0]) == ["id", "claim", "side", "status", "estimate", "lo", "hi", "n_seeds", "p", "p_adjusted"]
    r = rows[0]
    assert (r["id"], r["status"], r["estimate"], r["lo"], r["hi"], r["n_seeds"], r["p"], r["p_adjusted"]) == (
        "lm.q.a.mixing.ret_ft.p", "PASS", "0.1", "0.05", "0.15", "5", "0.01", "0.01")
    assert rows[1]["p"] == "" and rows[1]["side"] == "theory"
    write_report(report, tmp_path)
    assert (tmp_path / "verdicts.csv").read_text().count("\n") == 3
