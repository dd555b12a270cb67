"""Shared plumbing of the figure scripts: loading saved results, comparability, saving.

Rule: figures only read saved files (they never train). Before plotting, a figure asserts
its inputs are comparable (one pipeline per panel, one side, the same evaluation-set
fingerprint when the runs record one); a figure whose data is absent is skipped with a
printed note, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from early_exposure.frontier import read_frontier  # noqa: E402
from early_exposure.io import atomic_write_figure  # noqa: E402

#: one colour per method family, as in the paper (unmixed black, mixed purple)
COLOURS = {"unmixed": "black", "mixed": "tab:purple", "mixed+replay": "tab:green", "mixed+dropout": "tab:orange",
           "unmixed+replay": "tab:olive", "unmixed+dropout": "tab:brown", "unmixed+lora": "dimgray",
           "mixed+lora": "mediumpurple"}


#: where progress notes go (``print`` on the command line, a list in tests)
Logger = Callable[[str], None]


class Skip(Exception):
    """The figure's data is absent: skip it with this note."""


class NotComparable(Exception):
    """The inputs of one figure are not comparable: refuse to draw it."""


def load_frontier(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise Skip(f"{path} not found")
    return read_frontier(path)


def lm_presets(results: Path) -> list[Path]:
    return sorted(p.parent for p in (results / "lm").glob("*/frontier.csv"))


def frontier_tables(results: Path, theory_study: str, log: Logger,
                    what: str) -> Iterator[tuple[str, str, pd.DataFrame, Path | None]]:
    """``(label, pipeline, rows, run root)`` for each pipeline of every frontier table present:
    each LM preset, then the theory study ``results/theory/<theory_study>`` (run root None).
    An absent table is logged as ``skip <what> <label>: ...`` and skipped."""
    sources = [(f"lm-{p.name}", p / "frontier.csv", p) for p in lm_presets(results)]
    sources.append(("theory", results / "theory" / theory_study / "frontier.csv", None))
    for label, csv, root in sources:
        try:
            df = load_frontier(csv)
        except Skip as s:
            log(f"skip {what} {label}: {s}")
            continue
        for pipe, sub in df.groupby("pipeline"):
            yield label, pipe, sub, root


def _find_fingerprints(obj: Any, prefix: str = "") -> dict[str, str]:
    """Every ``*fingerprint*`` string value in a nested JSON object, by dotted path."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if "fingerprint" in str(k).lower() and isinstance(v, (str, int)):
                out[path] = str(v)
            else:
                out.update(_find_fingerprints(v, path))
    return out


def assert_comparable(df: pd.DataFrame, run_root: Path | None = None) -> dict[str, Any]:
    """One side and one pipeline, and (when the runs saved them) one evaluation-set
    fingerprint across all runs; returns what was checked."""
    if df.empty:
        raise Skip("no rows")
    for col in ("side", "pipeline"):
        vals = sorted(df[col].unique())
        if len(vals) != 1:
            raise NotComparable(f"rows from several {col}s {vals} in one panel")
    checked: dict[str, Any] = {"side": df["side"].iloc[0], "pipeline": df["pipeline"].iloc[0]}
    if run_root is not None and (run_root / "runs").is_dir():
        seen: dict[str, set[str]] = {}
        for rid in df["run_id"].unique():
            f = run_root / "runs" / str(rid) / "result.json"
            if f.is_file():
                try:
                    fp = _find_fingerprints(json.loads(f.read_text(encoding="utf-8")))
                except json.JSONDecodeError:
                    continue
                for k, v in fp.items():
                    seen.setdefault(k, set()).add(v)
        bad = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
        if bad:
            raise NotComparable(f"evaluation sets differ between runs: {bad}")
        checked["fingerprints"] = {k: next(iter(v)) for k, v in seen.items()}
    return checked


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf atomically; close the figure."""
    paths = [atomic_write_figure(out / f"{name}.{ext}", fig, dpi=130, bbox_inches="tight") for ext in ("png", "pdf")]
    plt.close(fig)
    return paths


def safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s.replace(">", "-"))


def methods_present(df: pd.DataFrame, wanted: Iterable[str]) -> list[str]:
    have = set(df["method"])
    return [m for m in wanted if m in have]
