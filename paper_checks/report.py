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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from early_exposure.io import atomic_write_json, atomic_write_text

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


def summarise(checks: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(c["status"] == s for c in checks) for s in STATUSES}


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the verdict table, the side-by-side view, errata and analyses."""
    lines = ["# Paper checks: verdicts", "",
             f"Results read from `{report['results_dir']}`. Summary: "
             + ", ".join(f"{k} {v}" for k, v in report["summary"].items()), "",
             "| id | side | source | status | claim | evidence |", "|---|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            c["id"], c["side"], c["source"], c["status"], c["claim"], c["evidence"])) + " |")
    side_by_side = [c for c in report["checks"] if c.get("analogue")]
    if side_by_side:
        lines += ["", "## Theory and LM side by side", "",
                  "| claim | source | theory | LM |", "|---|---|---|---|"]
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
    """Atomically write ``OUT/report.json`` and ``OUT/report.md``."""
    out = Path(out)
    pj = atomic_write_json(out / "report.json", report)
    pm = atomic_write_text(out / "report.md", render_markdown(report))
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
    for preset, sets in report.get("regime", {}).get("presets", {}).items():
        for pipe, rs in (sets.items() if isinstance(sets, dict) and "error" not in sets else []):
            con.print(f"regime {preset} {pipe}: " + ("inside the paper's regime" if rs["inside"]
                                                     else "OUTSIDE (" + "; ".join(rs["failed"]) + ")"))
