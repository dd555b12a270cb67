"""Shared plumbing of the figure scripts: loading saved results, comparability, saving.

Rule: figures only read saved files (they never train). Before plotting, a figure asserts
its inputs are comparable (one pipeline per panel, one side, the same evaluation-set
fingerprint when the runs record one); a figure whose data is absent or damaged (a truncated
or non-UTF-8 ``frontier.csv``, one missing columns, a garbage parquet file) is skipped with a
printed note, never a crash, and a damaged run directory is listed and its rows left out
(:func:`frontier_tables`).

Every figure goes through :func:`save`, which records its caption, family and input
tables for ``figures.json`` (:data:`CAPTIONS`, :func:`manifest`), runs the :data:`BEFORE_SAVE`
hooks (tests inspect the finished Axes there) and finishes it the same way: a loss axis whose
plotted values span more than a decade is put on a log scale (:func:`log_scale_if_wide`:
theory losses from 0.01 to 40 on a linear axis squash both fronts into one line), and a
figure with a (possibly two-line) suptitle gets matplotlib's constrained layout so the
suptitle sits above the panel titles instead of over them. Titles use plain words, never
column names (:func:`plain`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import PathCollection

from early_exposure.frontier import read_frontier
from early_exposure.integrity import check
from early_exposure.io import atomic_write_figure
from early_exposure.runs import ResultsRoot, RunTree, read_run

from figures.style import COLOURS, LOSS_RE, NAME_RE  # noqa: F401 - COLOURS re-exported for the figure modules


#: where progress notes go (``print`` on the command line, a list in tests)
Logger = Callable[[str], None]


class Skip(Exception):
    """The figure's data is absent: skip it with this note."""


class NotComparable(Exception):
    """The inputs of one figure are not comparable: refuse to draw it."""


#: what reading a damaged table raises (truncated, not UTF-8, garbage, columns missing)
_TABLE_ERRORS = (ValueError, KeyError, TypeError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError)


def load_frontier(path: Path) -> pd.DataFrame:
    """The frontier table at ``path``; :class:`Skip` naming what is wrong when it is absent
    or damaged (truncated, not UTF-8, columns missing)."""
    if not path.is_file():
        raise Skip(f"{path} not found")
    why = check(path)  # its manifest when the writer sealed it, else UTF-8 and a final newline
    if why is not None:
        raise Skip(f"{path} is damaged: {why}")
    try:
        return read_frontier(path)
    except _TABLE_ERRORS as exc:
        raise Skip(f"{path} is damaged ({type(exc).__name__}: {_first_line(exc)})") from None


def load_parquet(path: Path, log: Logger, what: str) -> pd.DataFrame | None:
    """The parquet table at ``path``, or None after logging ``skip <what>: ...`` when it is
    absent or damaged (e.g. a garbage ``sweep.parquet``)."""
    if not path.is_file():
        log(f"skip {what}: {path} not found")
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... on a damaged file
        log(f"skip {what}: {path} is damaged ({type(exc).__name__}: {_first_line(exc)})")
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def damaged_runs(run_root: Path) -> dict[str, str]:
    """``{run_id: what is wrong}`` for the damaged fine-tuning runs under ``run_root/runs``
    (unreadable ``result.json``, a file that differs from its integrity record:
    :mod:`early_exposure.runs`)."""
    out = {}
    for d in RunTree(run_root).run_dirs("ft"):
        why = read_run(d, strict=False)[1]
        if why is not None:
            out[d.name] = why
    return out


def lm_presets(results: Path) -> list[Path]:
    """The LM results directories of a results root that hold a frontier table."""
    return [t.out for t in ResultsRoot(results).lm_trees()]


def frontier_tables(results: Path, theory_study: str, log: Logger,
                    what: str) -> Iterator[tuple[str, str, pd.DataFrame, Path | None]]:
    """``(label, pipeline, rows, run root)`` for each pipeline of every frontier table present:
    each LM preset, then the theory study ``results/theory/<theory_study>`` (run root None).
    An absent table is logged as ``skip <what> <label>: ...`` and skipped."""
    sources = [(f"lm-{p.name}", RunTree(p).frontier, p) for p in lm_presets(results)]
    sources.append(("theory", ResultsRoot(results).theory(theory_study) / "frontier.csv", None))
    for label, csv, root in sources:
        try:
            df = load_frontier(csv)
        except Skip as s:
            log(f"skip {what} {label}: {s}")
            continue
        if root is not None:
            bad = damaged_runs(root)
            for rid, why in bad.items():
                log(f"skip damaged run {rid} in {what} {label}: {why}")
            df = df.loc[~df["run_id"].astype(str).isin(bad)]
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
    if run_root is not None and RunTree(run_root).run_dirs("ft"):
        seen: dict[str, set[str]] = {}
        for rid in df["run_id"].unique():
            d = RunTree(run_root).ft(str(rid))
            if RunTree.record(d).is_file():
                rec, why = read_run(d, strict=False)
                if why is not None:  # a damaged run: frontier_tables lists and drops it
                    continue
                fp = _find_fingerprints(rec)
                for k, v in fp.items():
                    seen.setdefault(k, set()).add(v)
        bad = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
        if bad:
            raise NotComparable(f"evaluation sets differ between runs: {bad}")
        checked["fingerprints"] = {k: next(iter(v)) for k, v in seen.items()}
    return checked


#: column / flag names -> the plain words a title or label shows
PLAIN_NAMES: dict[str, str] = {
    "C5_C6_hold": "the pretraining assumptions C.5 and C.6 hold",
    "assumptions_hold": "all of the paper's assumptions (C.3-C.6) hold",
    "C3_C4": "assumptions C.3 and C.4 hold",
    "C5": "assumption C.5 holds",
    "C6": "assumption C.6 holds",
    "mix_fraction": "mixing fraction",
    "stages.pre.mix_fraction": "mixing fraction",
    "task.beta": "beta",
    "ft_lr": "fine-tuning learning rate",
    "compute_matched": "compute-matched",
    "post_hparams": "post-training setting",
}


def plain(name: str) -> str:
    """The plain-words form of a column or flag name (:data:`PLAIN_NAMES`; otherwise
    underscores become spaces and ``C5`` becomes ``C.5``)."""
    if name in PLAIN_NAMES:
        return PLAIN_NAMES[name]
    words = re.sub(r"\bC(\d+)", r"C.\1", str(name).split(".")[-1])
    return words.replace("_", " ")


_LOSS_LABEL = LOSS_RE


def _plotted(ax: plt.Axes, axis: str) -> np.ndarray:
    """Finite values plotted on ``axis`` ("x" or "y") by the lines and scatters of ``ax``."""
    i = 0 if axis == "x" else 1
    # data coordinates only: axhline / axvline are in axes coordinates on one of their axes
    parts = [np.asarray(line.get_xdata() if i == 0 else line.get_ydata(), dtype=np.float64).ravel()
             for line in ax.get_lines() if line.get_transform() is ax.transData]
    parts += [np.asarray(c.get_offsets(), dtype=np.float64).reshape(-1, 2)[:, i]
              for c in ax.collections if isinstance(c, PathCollection) and c.get_offset_transform() is ax.transData]
    v = np.concatenate(parts) if parts else np.empty(0)
    return v[np.isfinite(v)]


def log_scale_if_wide(ax: plt.Axes, axis: str, decades: float = 1.0) -> bool:
    """Put ``axis`` of ``ax`` on a log scale when its plotted values are all positive and
    span more than ``decades`` decades (max / min > 10^decades); True when it did. An
    axis already on a non-linear scale, or with zero / negative values, is left alone."""
    get = ax.get_xscale if axis == "x" else ax.get_yscale
    if get() != "linear":
        return False
    v = _plotted(ax, axis)
    if v.size < 2 or v.min() <= 0 or math.log10(v.max() / v.min()) <= decades:
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return True


def finish(fig: plt.Figure) -> None:
    """What :func:`save` does before writing: log scale on every wide loss axis (an axis
    whose label names a loss, :func:`log_scale_if_wide`), and, when the figure has a
    suptitle and no layout engine yet, a layout that keeps the suptitle above the panel
    titles: constrained layout, or ``tight_layout`` (which accounts for the suptitle) when
    colour bars were added before (constrained layout cannot take those over)."""
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is not None:
            continue
        for axis in ("x", "y"):
            label = ax.get_xlabel() if axis == "x" else ax.get_ylabel()
            if label and _LOSS_LABEL.search(label):
                log_scale_if_wide(ax, axis)
    sup = getattr(fig, "_suptitle", None)
    if sup is None or not sup.get_text() or fig.get_layout_engine() is not None:
        return
    if any(getattr(ax, "_colorbar", None) is not None for ax in fig.axes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not compatible with tight_layout": keep the layout
            fig.tight_layout()
    else:
        fig.set_layout_engine("constrained")


#: what :func:`describe` recorded per PNG: ``{png path: {caption, family, sources}}``
CAPTIONS: dict[str, dict[str, Any]] = {}
#: called as ``hook(fig, name)`` after :func:`finish` and before writing (tests inspect axes here)
BEFORE_SAVE: list[Callable[[plt.Figure, str], None]] = []


def describe(out: Path, name: str, caption: str, family: str, sources: Iterable[str] = ()) -> None:
    """Record the caption, family and input tables (relative to the results root) of the
    figure :func:`save` is about to write as ``out/name`` (read back by :func:`manifest`)."""
    CAPTIONS[str(Path(out) / f"{name}.png")] = {"caption": caption, "family": family,
                                                "sources": sorted(set(sources))}


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """Finish the figure (:func:`finish`), run the :data:`BEFORE_SAVE` hooks, write
    ``name``.png and ``name``.pdf atomically (``name`` follows :data:`NAME_RE`); close the
    figure. Its caption is recorded beforehand with :func:`describe`."""
    if not NAME_RE.match(f"{name}.png"):
        raise ValueError(f"figure name {name!r} does not follow <source>_<family>_<name> (figures.style.NAME_RE)")
    finish(fig)
    for hook in BEFORE_SAVE:
        hook(fig, name)
    paths = [atomic_write_figure(out / f"{name}.{ext}", fig, dpi=150, bbox_inches="tight") for ext in ("png", "pdf")]
    plt.close(fig)
    return paths


def manifest(paths: Iterable[Path], out: Path, refused: Iterable[str] = ()) -> dict[str, Any]:
    """The content of ``figures.json`` for the files ``paths`` written under ``out`` (schema 2,
    docs/figures.md): ``entries`` one dict per figure (``file``: the PNG relative to ``out``;
    ``pdf``; ``caption``; ``family``; ``sources``: input tables relative to the results root),
    ``figures`` every file written, relative to ``out`` (the list earlier readers know), and
    ``refused``."""
    def relp(p: Path) -> str:
        try:
            return p.resolve().relative_to(Path(out).resolve()).as_posix()
        except ValueError:
            return p.name

    paths = [Path(p) for p in paths]
    entries = []
    for p in paths:
        if p.suffix == ".png":
            rec = CAPTIONS.get(str(p), {})
            entries.append({"file": relp(p), "pdf": relp(p.with_suffix(".pdf")), "caption": rec.get("caption", ""),
                            "family": rec.get("family", ""), "sources": rec.get("sources", [])})
    return {"schema": 2, "entries": entries, "figures": [relp(p) for p in paths], "refused": list(refused)}


def rel(results: Path, p: Path) -> str:
    """``p`` relative to the results root (as figures.json names input tables)."""
    try:
        return Path(p).resolve().relative_to(Path(results).resolve()).as_posix()
    except ValueError:
        return Path(p).as_posix()


def safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s.replace(">", "-"))


def methods_present(df: pd.DataFrame, wanted: Iterable[str]) -> list[str]:
    have = set(df["method"])
    return [m for m in wanted if m in have]
