"""The report (paper_checks.report): Holm within each LM run set's family against a hand
calculation, self-tests outside the tally, the claim x side matrix first, verdicts.csv."""

from __future__ import annotations

import csv
import io

import pytest

from paper_checks.report import (VERDICT_COLUMNS, adjust_families, make_check, render_markdown, split_self_tests,
                                 summarise, verdicts_csv, write_report)
from paper_checks.report_markdown import anchor


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
    assert md.index("## Claims x sides") < md.index("## Verdicts") < md.index("## Software self-tests")
    # the matrix row of claim (a): theory, then the LM preset q
    assert ("| **a.mixing.ret_ft** claim lm.q.a.mixing.ret_ft.p | src | [FAIL](#v-theory.a.mixing.ret_ft.p) | "
            "[PASS](#v-lm.q.a.mixing.ret_ft.p) |") in md
    rows = list(csv.DictReader(io.StringIO(verdicts_csv(verdicts))))
    assert list(rows[0]) == list(VERDICT_COLUMNS)
    r = rows[0]
    assert (r["id"], r["side"], r["preset"], r["verdict"], r["statistic"], r["estimate"], r["lo"], r["hi"],
            r["n_seeds"], r["p"], r["p_adjusted"], r["reason"], r["paper_ref"], r["claim_key"]) == (
        "lm.q.a.mixing.ret_ft.p", "lm", "q", "PASS", "loss_gap", "0.1", "0.05", "0.15", "5", "0.01", "0.01", "ev",
        "src", "a.mixing.ret_ft")
    assert rows[1]["p"] == "" and rows[1]["side"] == "theory" and rows[1]["preset"] == ""
    write_report(report, tmp_path)
    assert (tmp_path / "verdicts.csv").read_text().count("\n") == 3


def _report(tmp_path):
    """A report over two LM presets and the theory, with an erratum, a cell of two verdicts,
    a one-sided claim and long evidence."""
    long_ev = "interval includes zero: " + ", ".join(f"part {i} = {i / 7:.4f} [a | b]" for i in range(60))
    checks = [
        _c("theory.a.x.pre>post>ft", "PASS", side="theory", analogue="a.x"),
        _c("lm.p1.a.x.pipe", "INCONCLUSIVE", p=0.2, analogue="a.x"),
        _c("lm.p2.a.x.pipe", "FAIL", p=0.6, analogue="a.x"),
        make_check("theory.b.y.N=100", "claim b (N=100)", "Sec 4.1", "theory", "FAIL", "ev b1",
                   {"post_data_size": "N=100", "estimate": {"point": -0.5, "lo": -0.7, "hi": -0.3}, "n_seeds": 5},
                   "pre>post>ft", "b.y"),
        make_check("theory.b.y.N=400", "claim b (N=400)", "Sec 4.1", "theory", "INCONCLUSIVE", long_ev,
                   {"post_data_size": "N=400"}, "pre>post>ft", "b.y"),
        _c("lm.p2.whatwhere.where", "PASS", p=0.001),
        make_check("theory.C.10", "theorem C.10", "Theorem C.10", "theory", "ERRATUM",
                   "printed: x -> corrected: y holds", {}),
    ]
    adjust_families(checks)
    report = {"checks": checks, "self_tests": [], "summary": summarise(checks), "errata": [],
              "results_dir": str(tmp_path / "results"), "analyses": {}}
    return report


def _md_table(md, heading):
    """The rows of the first Markdown table after ``heading`` (cells split at unescaped |)."""
    import re

    lines = md[md.index(heading):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]])
    return rows[0], rows[2:]


def test_verdicts_csv_and_matrix_agree_with_report_json(tmp_path):
    import json
    import re

    report = _report(tmp_path)
    write_report(report, tmp_path / "report")
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    with open(tmp_path / "report" / "verdicts.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # one row per verdict of report.json, in its order, with its values
    assert [r["id"] for r in rows] == [c["id"] for c in doc["checks"]]
    for r, c in zip(rows, doc["checks"]):
        assert (r["verdict"], r["claim"], r["paper_ref"], r["side"]) == (c["status"], c["claim"], c["source"], c["side"])
        assert r["preset"] == (c["id"].split(".")[1] if c["side"] == "lm" else "")
        p = c["data"].get("p")
        assert r["p"] == ("" if p is None else f"{p:.6g}")
        assert len(r["reason"]) <= 160 and c["evidence"].startswith(r["reason"].removesuffix(" ...")[:40])
    b4 = next(r for r in rows if r["id"] == "theory.b.y.N=400")
    assert b4["reason"].endswith(" ...") and b4["reason"].startswith("interval includes zero: part 0")
    b1 = next(r for r in rows if r["id"] == "theory.b.y.N=100")
    assert (b1["estimate"], b1["lo"], b1["hi"], b1["n_seeds"]) == ("-0.5", "-0.7", "-0.3", "5")
    assert next(r for r in rows if r["id"] == "theory.C.10")["reason"] == "printed: x -> corrected: y holds"
    # the matrix: claims x (theory, p1, p2); every cell's verdicts are the csv rows of that claim and column
    md = (tmp_path / "report" / "report.md").read_text()
    header, body = _md_table(md, "## Claims x sides")
    assert header == ["claim", "paper", "theory", "p1", "p2"]
    seen = set()
    for cells in body:
        key = re.match(r"\*\*(.+?)\*\*", cells[0]).group(1)
        for col, cell in zip(header[2:], cells[2:]):
            got = re.findall(r"\[(PASS|FAIL|INCONCLUSIVE|ERRATUM)\]\(#([^)]+)\)", cell)
            want = [r for r in rows if r["claim_key"] == key and (r["preset"] or "theory") == col
                    and r["verdict"] != "ERRATUM"]
            assert [s for s, _ in got] == [r["verdict"] for r in want], (key, col)
            assert [a for _, a in got] == [anchor(r["id"]) for r in want]
            assert cell == "-" if not want else True
            seen |= {r["id"] for r in want}
    assert seen == {r["id"] for r in rows if r["verdict"] != "ERRATUM"}  # every claim verdict is in the matrix
    assert "[FAIL](#v-theory.b.y.N-100) (N=100); [INCONCLUSIVE](#v-theory.b.y.N-400) (N=400)" in md
    # every verdict's evidence is in a collapsible block with its anchor; errata after the claim verdicts
    for c in doc["checks"]:
        assert f'<a id="{anchor(c["id"])}"></a>' in md
    assert md.count("<details>") == len(doc["checks"])
    assert md.index("## Verdicts") < md.index("## Theory errata") < md.index('id="v-theory.C.10"')
    # the verdict table has the short reason, never the 1,000-character evidence inline
    _, table = _md_table(md, "## Verdicts")
    assert len(table) == 6 and all(len(r[-1]) <= 170 for r in table)


def test_report_shows_the_key_figures_relative_to_the_report(tmp_path):
    import json

    report = _report(tmp_path)
    figs = tmp_path / "results" / "figures"
    figs.mkdir(parents=True)
    for name in ("fig2_theory_pre-post-ft.png", "fig2_lm-p1.png", "theory_spectra.png", "fig3a_theory.pdf"):
        (figs / name).write_bytes(b"png")
    write_report(report, tmp_path / "results" / "report")  # the results' figures/ found from results_dir
    md = (tmp_path / "results" / "report" / "report.md").read_text()
    assert md.index("## Claims x sides") < md.index("## Key figures") < md.index("## Verdicts")
    assert "![fig2_lm-p1](../figures/fig2_lm-p1.png)" in md and "![fig2_theory_pre-post-ft](../figures/" in md
    assert "[theory_spectra](../figures/theory_spectra.png)" in md and "fig3a_theory" not in md  # PNGs only
    # figures.json: relative and absolute entries, captions (a mapping entry or a captions table)
    (figs / "figures.json").write_text(json.dumps({
        "figures": [{"path": "fig2_lm-p1.png", "caption": "Frontier of p1."}, str(figs / "theory_spectra.png"),
                    "fig2_theory_pre-post-ft.pdf"],
        "captions": {"theory_spectra.png": "Spectra."}}))
    write_report(report, tmp_path / "results" / "report")
    md = (tmp_path / "results" / "report" / "report.md").read_text()
    assert "![fig2_lm-p1](../figures/fig2_lm-p1.png)\n\n*Frontier of p1.*" in md
    assert "fig2_theory_pre-post-ft" not in md  # listed only as PDF
    assert "[theory_spectra](../figures/theory_spectra.png)" in md
