"""The one function that runs a unit of work (a pre, post, ft or traj run) in any process.

:func:`run_unit` executes one run given only its record, the resolved config and the output
directory (its upstream runs must be finished; they are read from the run tree). Every run
holds its lock while it runs (:func:`run_locked`, ``OUT/.locks/<stage>-<id>.lock``): a second
process asked for the same run waits and reuses the first's verified result.
:func:`run_one` is what the executors and the torchrun launcher call: it never raises and
returns the run's outcome as a dict.

Testing hooks (fault injection, read by the task in the worker):
``LM_EXPERIMENTS_FAULT_RAISE=<run id>`` makes that run raise; ``LM_EXPERIMENTS_FAULT_EXIT=<path>``
makes the first task that finds no file at ``<path>`` create it and kill its own worker
process (a lost worker).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from early_exposure import integrity
from early_exposure.runs import RunTree
from lm_experiments.config import PipelineConfig
from lm_experiments.engine import distributed
from lm_experiments.protocol.context import StageContext, StageResult
from lm_experiments.protocol.plan import FtRun, PostRun, PreRun, TrajRun
from lm_experiments.protocol.stages import STAGE_FUNCTIONS


def unit_id(stage: str, record: PreRun | PostRun | FtRun | TrajRun) -> str:
    """The id a unit's directory, lock and outcome carry."""
    return {"pre": getattr(record, "pre_id", ""), "post": getattr(record, "upstream_id", ""),
            "ft": getattr(record, "run_id", ""), "traj": getattr(record, "traj_id", "")}[stage]


def _fault_hooks(unit: str) -> None:
    if os.environ.get("LM_EXPERIMENTS_FAULT_RAISE") == unit:
        raise RuntimeError(f"injected failure in run {unit} (LM_EXPERIMENTS_FAULT_RAISE)")
    marker = os.environ.get("LM_EXPERIMENTS_FAULT_EXIT")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(17)  # the worker dies without cleanup, as a lost node would


def outcome(stage: str, unit: str, res: Any = None, error: str | None = None, skipped: bool = False,
            preempted: bool = False) -> dict[str, Any]:
    """A unit's outcome. ``preempted``: it stopped on a preemption signal (its checkpoint
    written; neither failed nor finished: a rerun resumes it)."""
    out = {"stage": stage, "id": unit, "failed": error is not None or skipped, "error": error, "skipped": skipped,
           "diverged": bool(res.diverged) if res is not None else False, "preempted": preempted}
    if res is not None and stage == "ft":
        out["ft_budget"] = int(res.record["ft_budget"])
    return out


def run_locked(ctx: StageContext, stage: str, record: Any, unit: str) -> StageResult:
    """Run one unit holding its lock (:func:`early_exposure.integrity.unit_lock`): a second
    process asked for the same run waits for the holder and then returns its finished,
    verified result. Under ``torchrun`` rank 0 takes the lock and the others wait at a
    barrier, so every rank enters the run together."""
    dctx = distributed.context()
    if not dctx.active:
        def note(m: str) -> None:
            print(f"[lock] {m}", file=sys.stderr, flush=True)

        with integrity.unit_lock(RunTree(ctx.out).lock(stage, unit), on_wait=note):
            return STAGE_FUNCTIONS[stage](ctx, record)
    with (integrity.unit_lock(RunTree(ctx.out).lock(stage, unit)) if dctx.is_main else contextlib.nullcontext()):
        distributed.barrier()
        return STAGE_FUNCTIONS[stage](ctx, record)


def run_one(ctx: StageContext, stage: str, record: PreRun | PostRun | FtRun,
            upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one unit, never raising (but for ``KeyboardInterrupt`` and
    :class:`~lm_experiments.engine.train_state.Preempted`, a ``SystemExit``: the unit wrote its
    checkpoint and the process is to exit with code 75): its outcome as a dict. A unit whose
    upstream was preempted is preempted too (not run)."""
    unit = unit_id(stage, record)
    if upstream is not None and upstream.get("preempted"):
        return outcome(stage, unit, preempted=True)
    if upstream is not None and upstream["failed"]:
        return outcome(stage, unit, skipped=True, error=f"upstream run {upstream['id']} failed")
    try:
        _fault_hooks(unit)
        res = run_locked(ctx, stage, record, unit)
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        return outcome(stage, unit, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    return outcome(stage, unit, res)




def run_unit(stage: str, record: PreRun | PostRun | FtRun | TrajRun, cfg: PipelineConfig, out: Path, *,
             cache_root: Path | None = None, ctx: StageContext | None = None,
             curves: str | None = None) -> StageResult:
    """Execute one run given only its record, the resolved config and the output directory
    (its upstream runs must be finished). ``ctx`` reuses an open context in this process;
    ``curves`` (for a new context) writes the run's curve live (:mod:`lm_experiments.engine.curves`). The
    run's lock is held meanwhile (:func:`run_locked`): another process running the same unit
    is waited for and its result reused."""
    ctx = ctx or StageContext.open(cfg, out, cache_root=cache_root, curves=curves)
    return run_locked(ctx, stage, record, unit_id(stage, record))


__all__ = ["unit_id", "outcome", "run_locked", "run_one", "run_unit"]
