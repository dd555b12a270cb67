"""``report.md``: what a reader scans first comes first.

1. the claim x side matrix: one row per claim (the paper's claims (a)-(e) shared by theory and
   LM first, then the claims one side judges alone), one column for the theory and one per LM
   preset, the verdict in each cell (a link to its evidence);
2. the key figures inline (Markdown image links relative to the report, from the results'
   ``figures/``: ``figures.json`` when there is one, with its captions);
3. the verdict table (one row per verdict, in the matrix's order: estimate, interval, p,
   Holm's p and a short reason), then each verdict's full evidence in a collapsible
   ``<details>`` block;
4. software self-tests, claims a pipeline did not plan, the regime, the theory errata (the
   ERRATUM verdicts, then the printed / corrected statements) and the analyses.

:func:`matrix_rows` and :func:`short_reason` are shared with ``verdicts.csv``
(:mod:`paper_checks.report`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

#: key figures shown inline, in order: file-name prefix -> what it shows
KEY_FIGURES = (
    ("fig2_", "the frontier: retained loss L_ret against fine-tuning loss L_ft, mixed vs unmixed (paper Figure 2)"),
    ("fig3a_", "L_im and L_ret against the mixing fraction lambda (paper Figure 3a)"),
    ("fig3b_", "compute-matched: L_im and L_ret against lambda (paper Figure 3b)"),
    ("matched_", "L_ret at matched immediate loss L_im (claim (b) without the L_im confound)"),
    ("theory_vs_lm", "the theory and the LM side by side"),
)
REASON_CHARS = 160


def column_of(c: dict[str, Any]) -> str:
    """The matrix column of a verdict: ``theory`` or the LM preset (``lm.<preset>.*``)."""
    parts = c["id"].split(".")
    return parts[1] if c["side"] == "lm" and parts[0] == "lm" and len(parts) > 2 else c["side"]


def claim_key(c: dict[str, Any]) -> str:
    """The matrix row of a verdict: its ``analogue`` (shared by theory and LM), else its id
    without the side / preset prefix."""
    if c.get("analogue"):
        return c["analogue"]
    parts = c["id"].split(".")
    return ".".join(parts[2:] if c["side"] == "lm" and parts[0] == "lm" and len(parts) > 2 else parts[1:])


def anchor(cid: str) -> str:
    """The HTML id of a verdict's evidence block."""
    return "v-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", cid).strip("-")


def short_reason(evidence: str, limit: int = REASON_CHARS) -> str:
    """The first clauses of an evidence string (split at ``: `` / ``; `` outside brackets),
    at least 60 characters where there are, at most ``limit`` (cut at a word, with ...)."""
    clauses, depth, cur, i = [], 0, "", 0
    s = " ".join(str(evidence).split())
    while i < len(s):
        ch = s[i]
        depth += ch in "([{"
        depth -= ch in ")]}" and depth > 0
        if depth == 0 and ch in ":;" and s[i + 1:i + 2] == " ":
            clauses.append(cur + ch)
            cur, i = "", i + 2
            continue
        cur += ch
        i += 1
    clauses.append(cur)
    out = ""
    for cl in clauses:
        if out and len(out) >= 60 and not out.endswith("corrected:"):  # an erratum: keep the corrected statement
            break
        out = f"{out} {cl}" if out else cl
    out = out.rstrip(":;").strip()
    if len(out) > limit:
        out = out[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return out


def matrix_rows(checks: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(columns: ``theory`` then the LM presets in order of appearance, {claim key: {"claim",
    "source", "cells": {column: [verdicts]}}}) over the verdicts that are not ERRATUM; the
    claims shared by theory and LM first, each group in order of appearance."""
    cols: list[str] = ["theory"]
    rows: dict[str, dict[str, Any]] = {}
    judged = [c for c in checks if c["status"] != "ERRATUM"]
    for c in sorted(judged, key=lambda c: not c.get("analogue")):
        col = column_of(c)
        if col not in cols:
            cols.append(col)
        size = (c.get("data") or {}).get("post_data_size")
        claim = c["claim"].replace(f" ({size})", "") if size else c["claim"]
        r = rows.setdefault(claim_key(c), {"claim": claim, "source": c["source"], "cells": {}})
        r["cells"].setdefault(col, []).append(c)
    return cols, rows


def _qualifier(c: dict[str, Any], cell: list[dict[str, Any]]) -> str:
    """What tells the verdicts of one cell apart (pipeline, post-training data size)."""
    parts = []
    for get in (lambda x: x.get("pipeline"), lambda x: (x.get("data") or {}).get("post_data_size")):
        if len({get(x) for x in cell}) > 1 and get(c):
            parts.append(str(get(c)))
    return f" ({', '.join(parts)})" if parts else ""


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _html(s: Any) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def matrix_markdown(checks: list[dict[str, Any]]) -> list[str]:
    cols, rows = matrix_rows(checks)
    if not rows:
        return []
    lines = ["## Claims x sides", "",
             "One row per claim, one column for the linear theory and one per LM preset; each verdict links to its "
             "evidence below. `-`: not judged on that side.", "",
             "| claim | paper | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for key, r in rows.items():
        cells = []
        for col in cols:
            cell = r["cells"].get(col, [])
            cells.append("; ".join(f"[{c['status']}](#{anchor(c['id'])}){_qualifier(c, cell)}" for c in cell) or "-")
        lines.append(f"| **{_esc(key)}** {_esc(r['claim'])} | {_esc(r['source'])} | " + " | ".join(cells) + " |")
    return lines + [""]


# ---- figures ------------------------------------------------------------------------------
def _listed(figures_dir: Path) -> list[tuple[Path, str | None]]:
    """(PNG path, caption or None) of every figure: from ``figures.json`` (entries as paths,
    absolute or relative to the figures directory, or mappings with ``path`` / ``file`` and
    ``caption``; a ``captions`` mapping beside them), else every PNG of the directory."""
    listing = figures_dir / "figures.json"
    out: list[tuple[Path, str | None]] = []
    if listing.is_file():
        try:
            doc = json.loads(listing.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            doc = {}
        captions = doc.get("captions") if isinstance(doc.get("captions"), dict) else {}
        for e in doc.get("figures", []) if isinstance(doc, dict) else []:
            path, cap = (e, None) if isinstance(e, str) else (e.get("path") or e.get("file"), e.get("caption"))
            if not path or not str(path).endswith(".png"):
                continue
            p = Path(path)
            p = p if p.is_absolute() else figures_dir / p
            if not p.is_file() and (figures_dir / p.name).is_file():  # a moved results directory
                p = figures_dir / p.name
            if p.is_file():
                out.append((p, cap or captions.get(p.name) or captions.get(str(path))))
    if not out:
        out = [(p, None) for p in sorted(figures_dir.glob("*.png"))]
    return out


def figures_markdown(figures_dir: Path | None, report_dir: Path) -> list[str]:
    """The key figures inline and the others as links, relative to ``report_dir``."""
    if figures_dir is None or not Path(figures_dir).is_dir():
        return []
    figs = _listed(Path(figures_dir))
    if not figs:
        return []
    rel = lambda p: Path(os.path.relpath(Path(p).resolve(), Path(report_dir).resolve())).as_posix()  # noqa: E731
    lines = ["## Key figures", ""]
    shown = set()
    for prefix, what in KEY_FIGURES:
        for p, cap in figs:
            if p.name.startswith(prefix) and p not in shown:
                shown.add(p)
                which = p.stem[len(prefix):].strip("_") or p.stem
                lines += [f"![{_esc(p.stem)}]({rel(p)})", "", f"*{_esc(cap or f'{what} ({which})')}*", ""]
    rest = [(p, cap) for p, cap in figs if p not in shown]
    if rest:
        lines += ["Other figures: " + ", ".join(f"[{p.stem}]({rel(p)})" for p, _ in rest), ""]
    return lines


# ---- verdicts -----------------------------------------------------------------------------
def _g(x: Any) -> str:
    """A number in 3 significant digits ('' when absent or not finite)."""
    import math

    return f"{x:.3g}" if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else ""


def _interval(c: dict[str, Any]) -> str:
    from paper_checks.report import primary

    p = primary(c)
    if not _g(p["estimate"]):
        return "-"
    iv = f" [{_g(p['lo'])}, {_g(p['hi'])}]" if _g(p["lo"]) and _g(p["hi"]) else ""
    return f"{_g(p['estimate'])}{iv}"


def _verdict_table(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["| id | claim | column | verdict | estimate [lo, hi] | p | p (Holm) | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        d = c.get("data") or {}
        lines.append(f"| [{_esc(c['id'])}](#{anchor(c['id'])}) | {_esc(claim_key(c))} | {_esc(column_of(c))} | "
                     f"**{c['status']}** | {_esc(_interval(c))} | {_g(d.get('p')) or '-'} | "
                     f"{_g(d.get('p_adjusted')) or '-'} | {_esc(short_reason(c['evidence']))} |")
    return lines


def _details(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in checks:
        lines += [f"<details><summary><a id=\"{anchor(c['id'])}\"></a><code>{_html(c['id'])}</code>: "
                  f"<b>{c['status']}</b> ({_html(c['source'])})</summary>", "",
                  f"{_html(c['claim'])}.", "", _html(c["evidence"]).replace("*", "\\*"), "", "</details>", ""]
    return lines


def render_markdown(report: dict[str, Any], *, figures_dir: Path | None = None,
                    report_dir: Path | None = None) -> str:
    """report.md (see the module docstring); ``figures_dir``: the results' figures (None: no
    figure section), linked relative to ``report_dir`` (default: the working directory)."""
    checks = report["checks"]
    lines = ["# Paper checks: verdicts", "",
             f"Results read from `{report['results_dir']}`. Summary (verdicts on the paper's claims; "
             "self-tests apart): " + ", ".join(f"{k} {v}" for k, v in report["summary"].items()), "",
             "Read the matrix first, then a verdict's evidence (the links); `verdicts.csv` beside this file has one "
             "row per verdict, `report.json` everything.", ""]
    lines += matrix_markdown(checks)
    lines += figures_markdown(figures_dir, report_dir or Path.cwd())
    cols, rows = matrix_rows(checks)
    ordered = [c for r in rows.values() for col in cols for c in r["cells"].get(col, [])]  # the matrix's order
    if ordered:
        lines += ["## Verdicts", ""] + _verdict_table(ordered) + ["", "### Evidence", ""] + _details(ordered)
    if report.get("self_tests"):
        lines += ["## Software self-tests (not verdicts on the paper)", "", "| id | status | what | evidence |",
                  "|---|---|---|---|"]
        lines += [f"| {_esc(c['id'])} | {c['status']} | {_esc(c['claim'])} | {_esc(short_reason(c['evidence']))} |"
                  for c in report["self_tests"]]
        lines.append("")
    if report.get("not_planned"):
        lines += ["## Claims a pipeline did not plan (judged in another pipeline)", ""]
        lines += [f"- `{n['id']}`: judged in {', '.join(f'`{j}`' for j in n['judged_in'])}" for n in report["not_planned"]]
        lines.append("")
    if report.get("regime", {}).get("presets"):
        from paper_checks.regime import regime_markdown

        lines += regime_markdown(report["regime"]) + [""]
    errata_checks = [c for c in checks if c["status"] == "ERRATUM"]
    if errata_checks or report.get("errata"):
        lines += ["## Theory errata", "",
                  "Statements of the paper that are wrong as printed; the corrected statement holds (the evidence "
                  "says which).", ""]
    if errata_checks:
        lines += _verdict_table(errata_checks) + [""] + _details(errata_checks)
    if report.get("errata"):
        lines += ["| id | location | printed | corrected | observed |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_esc(e.get(k, "")) for k in ("id", "location", "printed", "corrected", "observed"))
                  + " |" for e in report["errata"]]
    for name, body in report.get("analyses", {}).items():
        lines += ["", f"## Analysis: {name}", ""]
        rows_ = body.get("table", []) if isinstance(body, dict) else []
        if not rows_:
            lines.append(f"{body.get('note', 'no data') if isinstance(body, dict) else body}")
            continue
        cols = list(rows_[0])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows_:
            lines.append("| " + " | ".join(
                f"{r.get(c):.4g}" if isinstance(r.get(c), float) else _esc(r.get(c, "")) for c in cols) + " |")
        if body.get("note"):
            lines += ["", body["note"]]
    return "\n".join(lines) + "\n"
