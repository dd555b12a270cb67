"""Run directories of a sweep: their integrity record, damage checks, locks, and a reader
that skips (and lists) damaged runs.

Every run directory (``upstream/pre-*``, ``upstream/post-*``, ``runs/*``, ``trajectory/*``)
ends with ``result.json``, written last and atomically; it carries ``integrity``: the size
and SHA-256 of every other file of the directory (the model's safetensors, config and
tokenizer, ``eval.npz`` / ``eval_post.npz``, the stage-2 trajectory checkpoints), computed
just before (:func:`sealed`, :mod:`early_exposure.integrity`). :func:`damage` checks a
directory against it; the stage functions (:mod:`lm_experiments.stages`) redo a damaged run,
readers (``paper_checks``, ``figures``, :mod:`lm_experiments.regime`) skip it and list it
(:func:`read_run`, :class:`RunReader`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from early_exposure import integrity

#: what a run directory's integrity record leaves out: the record itself, the engine's checkpoint
NOT_SEALED = ("result.json", "train_state")


def sealed(d: Path) -> dict[str, Any]:
    """The size and SHA-256 of every file of run directory ``d`` but :data:`NOT_SEALED`."""
    return integrity.records(d, integrity.tree_files(d, exclude=NOT_SEALED))


def damage(d: Path) -> str | None:
    """What is wrong with the finished run directory ``d`` (None: intact, or not finished):
    an unreadable ``result.json``, or a file that differs from its integrity record (a
    directory written before records existed gets the structural checks instead)."""
    return read_run(d)[1] if (Path(d) / "result.json").exists() else None


def read_run(d: Path, *, strict: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """``(result.json record, None)`` of an intact finished run directory, else
    ``(None, what is wrong)`` (one line naming the file). ``strict``: the record must be a
    stage's (hold ``diverged``); readers of hand-made trees pass False (any JSON object)."""
    d = Path(d)
    p = d / "result.json"
    rec, why = integrity.read_json(p)
    if why is None and (not isinstance(rec, dict) or (strict and "diverged" not in rec)):
        why = f"{p} is not a run record"
    if why is None:
        why = (integrity.check_records(d, rec["integrity"]) if rec.get("integrity") is not None
               else integrity.check_tree(d, integrity.tree_files(d, exclude=NOT_SEALED)))
    return (None, why) if why is not None else (rec, None)


def lock_path(out: Path, stage: str, unit: str) -> Path:
    """The lock file of one run: ``OUT/.locks/<stage>-<id>.lock``."""
    return Path(out) / ".locks" / f"{stage}-{unit}.lock"


def log_training(out: Path, ckpt_dir: Path) -> None:
    """Testing hook: with ``LM_EXPERIMENTS_TRAINING_LOG=<path>`` every training started appends
    ``<run dir relative to OUT> <pid>`` to that file (the tests count trainings per unit)."""
    path = os.environ.get("LM_EXPERIMENTS_TRAINING_LOG")
    if not path:
        return
    from lm_experiments.distributed import is_main  # torch: imported only when the hook is on

    if is_main():
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{Path(ckpt_dir).parent.relative_to(out).as_posix()} {os.getpid()}\n")


class RunReader:
    """Reads run directories for an analysis, remembering which were damaged.

    ``reader.run(d)`` is the record of an intact run, None for a missing or damaged one;
    ``reader.skipped`` lists ``"<dir>: <what is wrong>"`` for every damaged one met (each
    once), for the report."""

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self._seen: dict[Path, dict[str, Any] | None] = {}

    def run(self, d: Path) -> dict[str, Any] | None:
        d = Path(d)
        if d not in self._seen:
            rec, why = (None, None) if not (d / "result.json").exists() else read_run(d, strict=False)
            if why is not None:
                self.skipped.append(f"{d}: {why}")
            self._seen[d] = rec
        return self._seen[d]

    def damaged(self, what: Path | str, why: str) -> None:
        """Record a damaged file found by the caller (e.g. an array that does not load)."""
        self.skipped.append(f"{what}: {why}")

    def file(self, d: Path, name: str) -> Path | None:
        """``d/name`` when the run in ``d`` is intact and holds it, else None."""
        p = Path(d) / name
        return p if self.run(d) is not None and p.is_file() else None


__all__ = ["NOT_SEALED", "sealed", "damage", "read_run", "lock_path", "log_training", "RunReader"]
