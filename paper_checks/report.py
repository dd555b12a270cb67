"""The verdict report: one record per claim, written as JSON and Markdown, printed as a table.

``report.json`` schema::

    {"checks": [{"id", "claim", "source", "side", "status", "evidence", "data",
                 "pipeline", "analogue"}],
     "errata": [{"id", "location", "printed", "observed", "corrected", "evidence", "origin"}],
     "summary": {"PASS": int, "FAIL": int, "INCONCLUSIVE": int, "ERRATUM": int},
     "analyses": {"forgetting": ..., "layerwise": ...},
     "regime": {"envelope", "criteria", "presets": {preset: {pipeline: {"inside", "failed", "arms"}}}},
     "settings": {...}, "results_dir": str, "provenance": {...}}

``status`` is one of :data:`STATUSES`. An INCONCLUSIVE record says why in ``evidence``
(no data, too few seeds, interval includes zero); an ERRATUM record gives the printed and
the corrected statement.

Software self-tests (the simulator against a closed form, a second code path, an exact
rollback) are not findings about the paper: :func:`split_self_tests` moves them to
``report["self_tests"]``, outside ``summary``. Multiplicity: every LM check of one run set
(``lm.<label>.*``) that records a p (``data["p"]``) is one family; :func:`adjust_families`
adds Holm's adjusted p (``data["p_adjusted"]``) and turns a PASS whose adjusted p is not
below alpha into INCONCLUSIVE (a FAIL says "no meaningful effect" and is not a discovery, so
it is not adjusted). ``verdicts.csv`` has one row per verdict, flat columns
:data:`VERDICT_COLUMNS`; ``report.md`` opens with the claim x side matrix and the key
figures (:mod:`paper_checks.report_markdown`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from early_exposure.io import atomic_write_bytes, atomic_write_json, atomic_write_text

STATUSES = ("PASS", "FAIL", "INCONCLUSIVE", "ERRATUM")
SIDES = ("theory", "lm")
CHECK_KEYS = ("id", "claim", "source", "side", "status", "evidence", "data", "pipeline", "analogue")


def make_check(
    id: str, claim: str, source: str, side: str, status: str, evidence: str,
    data: dict[str, Any] | None = None, pipeline: str | None = None, analogue: str | None = None,
) -> dict[str, Any]:
    """One verdict record; ``analogue`` is the claim key shared by the theory and LM records
    of the same paper claim (e.g. ``a.mixing.ret_ft``), used for the side-by-side table."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return {"id": id, "claim": claim, "source": source, "side": side, "status": status,
            "evidence": evidence, "data": data or {}, "pipeline": pipeline, "analogue": analogue}


def no_data(id: str, claim: str, source: str, side: str, what: str,
            pipeline: str | None = None, analogue: str | None = None) -> dict[str, Any]:
    return make_check(id, claim, source, side, "INCONCLUSIVE", f"no data: {what}",
                      {"missing": what}, pipeline, analogue)


#: ids of software self-tests (checks of the code, not of the paper's claims)
SELF_TEST_IDS = ("theory.saxe_closed_form", "theory.basis_invariance")
SELF_TEST_SUFFIXES = (".rollback_exact",)
#: the columns of ``verdicts.csv``: ``preset`` the LM preset (empty for the theory), ``claim_key`` the row of
#: the claim x side matrix, ``paper_ref`` where the paper states it, ``statistic`` what ``estimate`` [``lo``,
#: ``hi``] measures, ``reason`` the evidence's first clauses (the full evidence: report.json / report.md)
VERDICT_COLUMNS = ("id", "side", "preset", "pipeline", "claim_key", "claim", "paper_ref", "verdict", "statistic",
                   "estimate", "lo", "hi", "p", "p_adjusted", "n_seeds", "reason")


def is_self_test(c: dict[str, Any]) -> bool:
    return c["id"] in SELF_TEST_IDS or c["id"].endswith(SELF_TEST_SUFFIXES)


def split_self_tests(checks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(verdicts on the paper's claims, software self-tests)."""
    return [c for c in checks if not is_self_test(c)], [c for c in checks if is_self_test(c)]


def _family(c: dict[str, Any]) -> str | None:
    parts = c["id"].split(".")
    return f"lm.{parts[1]}" if c["side"] == "lm" and parts[0] == "lm" and len(parts) > 2 else None


def adjust_families(checks: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, int]:
    """In place: Holm-adjust ``data["p"]`` within each LM run set's family; a PASS whose
    adjusted p is >= ``alpha`` becomes INCONCLUSIVE (the earlier status kept in
    ``data["multiplicity"]``). Returns {family: size}."""
    import math

    from early_exposure.stats import holm

    fams: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        f = _family(c)
        p = c["data"].get("p")
        if f is not None and isinstance(p, (int, float)) and math.isfinite(p):
            fams.setdefault(f, []).append(c)
    for f, members in fams.items():
        adj = holm([c["data"]["p"] for c in members])
        for c, pa in zip(members, adj):
            c["data"]["p_adjusted"] = pa
            c["data"]["multiplicity"] = {"family": f, "size": len(members), "method": "holm", "alpha": alpha,
                                         "status_before": c["status"]}
            if c["status"] == "PASS" and not pa < alpha:
                c["status"] = "INCONCLUSIVE"
                c["evidence"] = (f"not significant after Holm over the {len(members)} tested checks of {f} "
                                 f"(p {c['data']['p']:.3g}, adjusted {pa:.3g} >= {alpha:g}): {c['evidence']}")
    return {f: len(m) for f, m in fams.items()}


def primary(c: dict[str, Any]) -> dict[str, Any]:
    """The statistic a check decides on, where it records one: ``{"statistic", "estimate",
    "lo", "hi", "n_seeds"}`` (None where absent); ``statistic`` names it (``data["statistic"]``,
    else the data key it was read from)."""
    d = c.get("data") or {}
    est, name = d.get("estimate"), "estimate"
    if not isinstance(est, dict):
        for key in ("loss_gap", "difference", "interval", "delta_L_ret", "delta_L_im"):
            if isinstance(d.get(key), dict) and "point" in d[key]:
                est, name = d[key], key
                break
    if not isinstance(est, dict):
        return {"statistic": None, "estimate": None, "lo": None, "hi": None, "n_seeds": d.get("n_seeds")}
    return {"statistic": d.get("statistic") if isinstance(d.get("statistic"), str) else name,
            "estimate": est.get("point"), "lo": est.get("lo"), "hi": est.get("hi"),
            "n_seeds": d.get("n_seeds", est.get("n_valid"))}


def _primary(c: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(estimate, lo, hi, n_seeds) of :func:`primary`."""
    p = primary(c)
    return p["estimate"], p["lo"], p["hi"], p["n_seeds"]


def verdict_row(c: dict[str, Any]) -> dict[str, str]:
    """One row of ``verdicts.csv`` (:data:`VERDICT_COLUMNS`, flat text cells)."""
    from paper_checks.report_markdown import claim_key, column_of, short_reason

    p, d = primary(c), c.get("data") or {}
    return {"id": c["id"], "side": c["side"], "preset": column_of(c) if c["side"] == "lm" else "",
            "pipeline": c.get("pipeline") or "", "claim_key": claim_key(c), "claim": c["claim"],
            "paper_ref": c["source"], "verdict": c["status"], "statistic": p["statistic"] or "",
            "estimate": _num(p["estimate"]), "lo": _num(p["lo"]), "hi": _num(p["hi"]), "p": _num(d.get("p")),
            "p_adjusted": _num(d.get("p_adjusted")), "n_seeds": "" if p["n_seeds"] is None else str(p["n_seeds"]),
            "reason": short_reason(c["evidence"])}


def verdicts_csv(checks: list[dict[str, Any]]) -> str:
    """``verdicts.csv``: one row per verdict (self-tests excluded), columns :data:`VERDICT_COLUMNS`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(VERDICT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for c in checks:
        w.writerow(verdict_row(c))
    return buf.getvalue()


def _num(x: Any) -> str:
    import math

    return "" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.6g}"


def summarise(checks: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(c["status"] == s for c in checks) for s in STATUSES}


def render_markdown(report: dict[str, Any], *, figures_dir: Path | None = None,
                    report_dir: Path | None = None) -> str:
    """report.md: the claim x side matrix, the key figures, the verdict table with the evidence
    in collapsible blocks, then self-tests, regime, theory errata and analyses
    (:mod:`paper_checks.report_markdown`)."""
    from paper_checks.report_markdown import render_markdown as render

    return render(report, figures_dir=figures_dir, report_dir=report_dir)


def results_figures(report: dict[str, Any]) -> Path | None:
    """The figures directory of the results a report was read from (``RESULTS/figures``), if any."""
    from early_exposure.runs import ResultsRoot

    rd = report.get("results_dir")
    d = ResultsRoot(rd).figures if rd else None
    return d if d is not None and d.is_dir() else None


def write_report(report: dict[str, Any], out: str | Path, *, figures_dir: Path | None = None) -> tuple[Path, Path]:
    """Atomically write ``OUT/report.json``, ``OUT/report.md`` and ``OUT/verdicts.csv``;
    ``report.md`` shows the figures of ``figures_dir`` (default: :func:`results_figures`)
    with links relative to ``OUT``."""
    out = Path(out)
    figures_dir = figures_dir if figures_dir is not None else results_figures(report)
    pj = atomic_write_json(out / "report.json", report)
    pm = atomic_write_text(out / "report.md", render_markdown(report, figures_dir=figures_dir, report_dir=out))
    atomic_write_bytes(out / "verdicts.csv", verdicts_csv(report["checks"]).encode())
    return pj, pm


def print_table(report: dict[str, Any]) -> None:
    """The verdict table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow", "ERRATUM": "magenta"}
    t = Table(title="Paper checks", show_lines=False)
    for col in ("id", "side", "source", "status", "evidence"):
        t.add_column(col, overflow="fold")
    for c in report["checks"]:
        st = c["status"]
        ev = c["evidence"] if len(c["evidence"]) <= 160 else c["evidence"][:157] + "..."
        t.add_row(c["id"], c["side"], c["source"], f"[{colour[st]}]{st}[/]", ev)
    con = Console(width=200)
    con.print(t)
    con.print("summary: " + ", ".join(f"{k} {v}" for k, v in report["summary"].items()))
    if report.get("self_tests"):
        con.print("software self-tests (not verdicts): " + ", ".join(f"{c['id']} {c['status']}"
                                                                      for c in report["self_tests"]))
    for preset, sets in report.get("regime", {}).get("presets", {}).items():
        for pipe, rs in (sets.items() if isinstance(sets, dict) and "error" not in sets else []):
            con.print(f"regime {preset} {pipe}: " + ("inside the paper's regime" if rs["inside"]
                                                     else "OUTSIDE (" + "; ".join(rs["failed"]) + ")"))
