"""Training curves you can watch while a run trains (``--curves``; off by default).

:func:`lm_experiments.engine.train.train` takes an optional :class:`CurveSink`. It calls
:meth:`CurveSink.begin` once before the first step with the history so far (a resumed run's,
from its checkpoint; ``[]`` for a fresh run) and :meth:`CurveSink.log` after every logging
step with the records completed since the previous call: ``step`` (1-based), ``train_loss``,
``lr``, ``grad_norm`` (when clipping is on) and ``val_loss`` (evaluation steps). The records
are the ones that end up in the run's ``result.json`` (``train.history``): the sink reads
host values the loop already has and adds no device synchronisation. Only the main process
writes (under torchrun: rank 0).

Kinds (:data:`CURVE_KINDS`), every one local (nothing leaves the machine):

- ``csv``: :class:`CsvCurves`, one row per step appended and flushed at each logging step
  (:data:`CURVE_COLUMNS`; empty cells where a record has no value). :meth:`~CsvCurves.begin`
  rewrites the file from the history it is given, so a resumed run's file has exactly the
  rows up to the resumed step (rows written after the checkpoint by the interrupted attempt
  are dropped) and the finished file equals :func:`csv_text` of ``train.history`` byte for byte.
- ``tensorboard``: :class:`TensorBoardCurves`, scalars through ``torch.utils.tensorboard``
  (needs the ``tensorboard`` package); a resumed run purges the events of the interrupted
  attempt (``purge_step``) and writes its history again.
- ``trackio`` / ``wandb-offline``: :class:`TrackerCurves`, a local tracker (trackio's local
  SQLite store, W&B in offline mode), each run a tracker run; imported only when chosen.

:func:`require` checks up front that the chosen kind's package imports (a
:class:`~early_exposure.errors.ConfigError` with the install hint otherwise: exit code 2 at
the command line); :func:`open_curves` builds the sink of one run.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from early_exposure.errors import ConfigError

#: the columns of a curve file, in file order
CURVE_COLUMNS = ("step", "train_loss", "val_loss", "lr", "grad_norm")
#: ``--curves`` choices
CURVE_KINDS = ("csv", "tensorboard", "trackio", "wandb-offline")
#: kind -> (module that must import, install hint)
_NEEDS = {"tensorboard": ("tensorboard", "pip install tensorboard (or early-exposure[tracking])"),
          "trackio": ("trackio", "pip install trackio (or early-exposure[tracking])"),
          "wandb-offline": ("wandb", "pip install wandb (or early-exposure[tracking])")}
#: the project name of the tracker runs
TRACKER_PROJECT = "early-exposure"


class CurveSink(Protocol):
    """Where :func:`~lm_experiments.engine.train.train` sends a run's curve as it trains."""

    def begin(self, history: list[dict[str, Any]]) -> None:
        """Before the first step: the records so far (a resumed run's history; ``[]`` fresh)."""

    def log(self, records: list[dict[str, Any]]) -> None:
        """After a logging step: the records completed since the last call (final: ``val_loss`` included)."""

    def close(self) -> None:
        """The run is over (or stopped): release files and handles."""


def _cell(v: Any) -> Any:
    return "" if v is None else v


def csv_rows(records: Iterable[dict[str, Any]]) -> str:
    """The CSV lines of ``records`` (no header); floats as Python writes them (exact round trip)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([_cell(r.get(c)) for c in CURVE_COLUMNS] for r in records)
    return buf.getvalue()


def csv_text(history: Iterable[dict[str, Any]]) -> str:
    """A whole curve file of ``history``: what :class:`CsvCurves` leaves at the end of a run."""
    return ",".join(CURVE_COLUMNS) + "\n" + csv_rows(history)


class CsvCurves:
    """Appends one row per step to ``path`` at each logging step, flushed (a reader sees it grow)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fh: Any = None

    def begin(self, history: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8", newline="")  # kept open for the run
        self._fh.write(csv_text(history))
        self._fh.flush()

    def log(self, records: list[dict[str, Any]]) -> None:
        self._fh.write(csv_rows(records))
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _scalars(rec: dict[str, Any]) -> Iterable[tuple[str, float]]:
    for k in CURVE_COLUMNS[1:]:
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            yield k, float(v)


class TensorBoardCurves:
    """Scalars ``train_loss``, ``val_loss``, ``lr``, ``grad_norm`` in ``logdir``, flushed at
    each logging step. A logdir that exists (an interrupted attempt) is purged from step 1
    on (TensorBoard hides its older events) and the history is written again."""

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        self.logdir = Path(logdir)
        self._tb: Any = None

    def begin(self, history: list[dict[str, Any]]) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        purge = 1 if self.logdir.is_dir() else None
        self._tb = SummaryWriter(log_dir=str(self.logdir), purge_step=purge)
        self.log(history)

    def log(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            for k, v in _scalars(rec):
                self._tb.add_scalar(k, v, int(rec["step"]))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class TrackerCurves:
    """One run of a local tracker: ``trackio`` (its SQLite store in ``root/trackio`` unless ``TRACKIO_DIR`` is set)
    or ``wandb-offline`` (W&B in offline mode, files under ``root``; ``wandb sync`` is up to
    you). Each attempt of a run is a tracker run that starts with the history so far."""

    def __init__(self, kind: str, root: str | os.PathLike[str], name: str) -> None:
        self.kind, self.root, self.name = kind, Path(root), name
        self._run: Any = None

    def begin(self, history: list[dict[str, Any]]) -> None:
        require(self.kind)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.kind == "trackio":
            os.environ.setdefault("TRACKIO_DIR", str(self.root / "trackio"))
            import trackio

            trackio.init(project=TRACKER_PROJECT, name=self.name)
            self._run = trackio  # its module-level log / finish act on the run just started
        else:
            import wandb

            self._run = wandb.init(project=TRACKER_PROJECT, name=self.name, mode="offline", dir=str(self.root))
        self.log(history)

    def log(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            self._run.log({k: v for k, v in _scalars(rec) if math.isfinite(v)}, step=int(rec["step"]))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def _import(kind: str) -> None:
    """Import ``kind``'s package (spelled out: the extras test reads the imports from the code)."""
    if kind == "tensorboard":
        import tensorboard  # noqa: F401 - what torch.utils.tensorboard writes with
    elif kind == "trackio":
        import trackio  # noqa: F401
    else:
        import wandb  # noqa: F401


def require(kind: str | None) -> None:
    """Check that ``kind``'s package imports (``csv`` and ``None`` need nothing); else one
    :class:`ConfigError` naming ``--curves`` with the install hint."""
    if kind is None or kind == "csv":
        return
    if kind not in CURVE_KINDS:
        raise ConfigError("--curves", f"must be one of {', '.join(CURVE_KINDS)}, got {kind!r}")
    module, hint = _NEEDS[kind]
    try:
        _import(kind)
    except ImportError:
        raise ConfigError("--curves", f"{module} is not installed; {hint}, or use --curves csv") from None


def open_curves(kind: str, *, csv_path: Path, tensorboard_dir: Path, tracker_root: Path, name: str) -> CurveSink:
    """The sink of one run for ``kind`` (:data:`CURVE_KINDS`): its curve file, its TensorBoard
    directory or a tracker run called ``name`` (paths from :class:`early_exposure.runs.RunTree`)."""
    require(kind)
    if kind == "csv":
        return CsvCurves(csv_path)
    if kind == "tensorboard":
        return TensorBoardCurves(tensorboard_dir)
    return TrackerCurves(kind, tracker_root, name)


__all__ = ["CURVE_COLUMNS", "CURVE_KINDS", "CurveSink", "CsvCurves", "TensorBoardCurves", "TrackerCurves",
           "csv_rows", "csv_text", "open_curves", "require"]
