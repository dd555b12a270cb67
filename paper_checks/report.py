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
it is not adjusted). ``verdicts.csv`` has one row per verdict: id, claim, side, status,
estimate, lo, hi, n_seeds, p, p_adjusted.
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
VERDICT_COLUMNS = ("id", "claim", "side", "status", "estimate", "lo", "hi", "n_seeds", "p", "p_adjusted")


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


def _primary(c: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(estimate, lo, hi, n_seeds) of the statistic a check decides on, where it records one."""
    d = c.get("data") or {}
    est = d.get("estimate")
    if not isinstance(est, dict):
        for key in ("loss_gap", "difference", "interval", "delta_L_ret", "delta_L_im"):
            if isinstance(d.get(key), dict) and "point" in d[key]:
                est = d[key]
                break
    if not isinstance(est, dict):
        return None, None, None, d.get("n_seeds")
    n = d.get("n_seeds", est.get("n_valid"))
    return est.get("point"), est.get("lo"), est.get("hi"), n


def verdicts_csv(checks: list[dict[str, Any]]) -> str:
    """``verdicts.csv``: one row per verdict (self-tests excluded), columns :data:`VERDICT_COLUMNS`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(VERDICT_COLUMNS)
    for c in checks:
        est, lo, hi, n = _primary(c)
        d = c.get("data") or {}
        w.writerow([c["id"], c["claim"], c["side"], c["status"], _num(est), _num(lo), _num(hi),
                    "" if n is None else n, _num(d.get("p")), _num(d.get("p_adjusted"))])
    return buf.getvalue()


def _num(x: Any) -> str:
    import math

    return "" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.6g}"


def summarise(checks: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(c["status"] == s for c in checks) for s in STATUSES}


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _matrix(report: dict[str, Any]) -> list[str]:
    side_by_side = [c for c in report["checks"] if c.get("analogue")]
    if not side_by_side:
        return []
    lines = ["## Theory and LM side by side (claim x side)", "", "| claim | source | theory | LM |",
             "|---|---|---|---|"]
    rows: dict[str, dict[str, Any]] = {}
    for c in side_by_side:
        size = c["data"].get("post_data_size")
        claim = c["claim"].replace(f" ({size})", "") if size else c["claim"]
        r = rows.setdefault(c["analogue"], {"claim": claim, "source": c["source"], "theory": [], "lm": []})
        where = c["id"].split(".")[1] + ": " if c["side"] == "lm" else ""
        r[c["side"]].append(f"{c['status']} ({where}{c['pipeline'] or 'all'}{', ' + size if size else ''})")
    for key, r in rows.items():
        lines.append(f"| ({key}) {_md_escape(r['claim'])} | {_md_escape(r['source'])} | "
                     f"{_md_escape('; '.join(r['theory']) or '-')} | {_md_escape('; '.join(r['lm']) or '-')} |")
    return lines + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the claim x side matrix first, then the verdict table (with raw and
    Holm-adjusted p), the self-tests apart, errata and analyses."""
    lines = ["# Paper checks: verdicts", "",
             f"Results read from `{report['results_dir']}`. Summary (verdicts on the paper's claims; "
             "self-tests apart): " + ", ".join(f"{k} {v}" for k, v in report["summary"].items()), ""]
    lines += _matrix(report)
    lines += ["## Verdicts", "", "| id | side | source | status | p | p (Holm) | sign-flip p | claim | evidence |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in report["checks"]:
        d = c.get("data") or {}
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            c["id"], c["side"], c["source"], c["status"], _num(d.get("p")) or "-", _num(d.get("p_adjusted")) or "-",
            _num(d.get("sign_flip_p")) or "-", c["claim"], c["evidence"])) + " |")
    if report.get("self_tests"):
        lines += ["", "## Software self-tests (not verdicts on the paper)", "", "| id | status | what | evidence |",
                  "|---|---|---|---|"]
        for c in report["self_tests"]:
            lines.append("| " + " | ".join(_md_escape(x) for x in (c["id"], c["status"], c["claim"], c["evidence"]))
                         + " |")
    if report.get("not_planned"):
        lines += ["", "## Claims a pipeline did not plan (judged in another pipeline)", ""]
        lines += [f"- `{n['id']}`: judged in {', '.join(f'`{j}`' for j in n['judged_in'])}" for n in report["not_planned"]]
    if report.get("regime", {}).get("presets"):
        from paper_checks.regime import regime_markdown

        lines += regime_markdown(report["regime"])
    if report["errata"]:
        lines += ["", "## Errata", "", "| id | location | printed | corrected | observed |",
                  "|---|---|---|---|---|"]
        for e in report["errata"]:
            lines.append("| " + " | ".join(_md_escape(e.get(k, "")) for k in (
                "id", "location", "printed", "corrected", "observed")) + " |")
    for name, body in report.get("analyses", {}).items():
        lines += ["", f"## Analysis: {name}", ""]
        rows = body.get("table", []) if isinstance(body, dict) else []
        if not rows:
            lines.append(f"{body.get('note', 'no data') if isinstance(body, dict) else body}")
            continue
        cols = list(rows[0])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(
                f"{r.get(c):.4g}" if isinstance(r.get(c), float) else _md_escape(r.get(c, "")) for c in cols) + " |")
        if body.get("note"):
            lines += ["", body["note"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Atomically write ``OUT/report.json``, ``OUT/report.md`` and ``OUT/verdicts.csv``."""
    out = Path(out)
    pj = atomic_write_json(out / "report.json", report)
    pm = atomic_write_text(out / "report.md", render_markdown(report))
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
