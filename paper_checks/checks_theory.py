"""Theory verdicts: Appendix C's theorems and lemmas, assumption feasibility, errata.

Reads what the theory core wrote (``docs/INTERFACES.md``):

- ``theory/verify/theorems.json``: ``{"checks": [{"id", "claim", "passed", "evidence",
  "compared_against"}], "errata": [...]}``, ids ``C.9, C.10, C.14, C.15, C.16, C.17``
  (plus ``saxe_closed_form`` and ``basis_invariance``, reported too);
- ``theory/verify/assumptions.json``: ``{"assumptions": [...], "feasibility":
  {"jointly_feasible", "infeasible_subsets", "minimal_relaxation"}, "errata": [...]}``.

A theorem whose simulation check passed but which has an erratum against it is reported
as ERRATUM (printed statement wrong, corrected one holds), with both statements.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from paper_checks.report import make_check, no_data

#: id -> (source, claim) for the statements the paper makes in Appendix C.
THEOREMS: dict[str, tuple[str, str]] = {
    "C.9": ("Theorem C.9", "features are learned sequentially, in order of singular value (Gidel et al. 2019)"),
    "C.10": ("Theorem C.10", "only mixed pretraining learns the specialized features"),
    "C.14": ("Lemma C.14", "post-training converges within epsilon on the nonzero modes; zero modes stay at zero"),
    "C.15": ("Theorem C.15", "post-training on theta_mixed uses specialized features, on theta_unmixed inconsistent ones"),
    "C.16": ("Lemma C.16", "fine-tuning leaves theta unchanged along zero-covariance directions of D_ft"),
    "C.17": ("Theorem C.17", "Delta_unmixed > Delta_mixed, and Delta_mixed = 0 under idealized initialisations"),
}
EXTRA: dict[str, tuple[str, str]] = {
    "saxe_closed_form": ("Saxe et al. 2014 (reference dynamics)", "discrete GD approaches the Saxe closed form as lr -> 0"),
    "basis_invariance": ("Assumption C.1 (shared U, V)", "spectra are invariant to the choice of shared basis"),
}


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, f"{path} not found"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{path} unreadable ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object"
    return data, None


def _mentions(erratum: dict[str, Any], tid: str) -> bool:
    text = " ".join(str(erratum.get(k, "")) for k in ("id", "location", "printed"))
    return re.search(rf"(?<![\d.]){re.escape(tid)}(?![\d])", text) is not None


def _short(obj: Any, limit: int = 200) -> str:
    s = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def collect_errata(results: Path) -> list[dict[str, Any]]:
    """All errata of theorems.json and assumptions.json, deduplicated by id."""
    seen: dict[str, dict[str, Any]] = {}
    for name in ("theorems.json", "assumptions.json"):
        data, _ = _read_json(results / "theory" / "verify" / name)
        for e in (data or {}).get("errata", []) or []:
            if isinstance(e, dict):
                key = str(e.get("id", len(seen)))
                seen.setdefault(key, {**e, "origin": name})
    return list(seen.values())


#: the beyond-the-paper rows written by ``python -m linear_theory latent`` (docs/theory_latent.md)
LATENT_IDS = ("theory.latent.bottleneck_tie", "theory.latent.closed_form", "theory.latent.appendix_c_width")


def latent_checks(results: Path) -> list[dict[str, Any]]:
    """The latent-benefit verdicts (beyond the paper), read from ``theory/latent/latent.json``."""
    data, why = _read_json(results / "theory" / "latent" / "latent.json")
    rows = {str(r.get("id")): r for r in (data or {}).get("checks", []) if isinstance(r, dict)}
    out = []
    for cid in LATENT_IDS:
        r = rows.get(cid)
        if r is None:
            out.append(no_data(cid, "latent benefit of early exposure in a linear model", "beyond the paper",
                               "theory", why or f"no row {cid!r} in latent.json"))
            continue
        out.append(make_check(cid, str(r["claim"]), str(r["source"]), "theory", str(r["status"]),
                              str(r["evidence"]), r.get("data") or {}, r.get("pipeline"), r.get("analogue")))
    return out


def theory_checks(results: Path) -> list[dict[str, Any]]:
    """Theorem/lemma verdicts, the joint-feasibility verdict, and one record per erratum."""
    out: list[dict[str, Any]] = []
    errata = collect_errata(results)
    thm, why = _read_json(results / "theory" / "verify" / "theorems.json")
    found = {str(c.get("id")): c for c in (thm or {}).get("checks", []) if isinstance(c, dict)}
    for tid, (source, claim) in {**THEOREMS, **EXTRA}.items():
        cid = f"theory.{tid}"
        c = found.get(tid)
        if c is None:
            if tid in THEOREMS:
                out.append(no_data(cid, claim, source, "theory", why or f"no check {tid!r} in theorems.json"))
            continue
        passed = bool(c.get("passed"))
        against = c.get("compared_against", "")
        ev = f"simulation vs {against}: {_short(c.get('evidence', {}))}"
        mine = [e for e in errata if _mentions(e, tid)]
        data = {"passed": passed, "compared_against": against, "evidence": c.get("evidence", {}),
                "claim_checked": c.get("claim"), "errata": [e.get("id") for e in mine]}
        if passed and mine:
            fix = "; ".join(f"printed: {e.get('printed')} -> corrected: {e.get('corrected')}" for e in mine)
            out.append(make_check(cid, claim, source, "theory", "ERRATUM", f"{fix}. {ev}", data))
        else:
            out.append(make_check(cid, claim, source, "theory", "PASS" if passed else "FAIL", ev, data))

    asm, why = _read_json(results / "theory" / "verify" / "assumptions.json")
    fid, fclaim, fsrc = ("theory.assumptions.feasibility",
                         "Appendix C's assumptions (C.1-C.13) can hold together", "Appendix C, Assumptions C.1-C.13")
    feas = (asm or {}).get("feasibility")
    if not isinstance(feas, dict) or "jointly_feasible" not in feas:
        out.append(no_data(fid, fclaim, fsrc, "theory", why or "assumptions.json lacks feasibility"))
    else:
        verdicts = {str(a.get("id")): bool(a.get("holds")) for a in asm.get("assumptions", []) if isinstance(a, dict)}
        data = {"assumptions": verdicts, **feas}
        failing = sorted(k for k, v in verdicts.items() if not v)
        if feas["jointly_feasible"]:
            out.append(make_check(fid, fclaim, fsrc, "theory", "PASS",
                                  f"jointly feasible; per-assumption failures on this config: {failing or 'none'}", data))
        else:
            chains = "; ".join(f"{s.get('ids')}: {s.get('chain')}" for s in feas.get("infeasible_subsets", []) or [])
            relax = feas.get("minimal_relaxation")
            if relax:
                out.append(make_check(fid, fclaim, fsrc, "theory", "ERRATUM",
                                      f"printed assumptions infeasible ({_short(chains, 300)}); "
                                      f"conclusion holds under relaxation {_short(relax, 300)}", data))
            else:
                out.append(make_check(fid, fclaim, fsrc, "theory", "FAIL",
                                      f"infeasible and no relaxation found: {_short(chains, 300)}", data))
    for e in errata:
        eid = str(e.get("id"))
        out.append(make_check(
            f"theory.erratum.{eid}", f"printed statement at {e.get('location', '?')}",
            str(e.get("location", "Appendix C")), "theory", "ERRATUM",
            f"printed: {_short(e.get('printed', ''))}; observed: {_short(e.get('observed', ''))}; "
            f"corrected: {_short(e.get('corrected', ''))}", {"erratum": e}))
    return out
