"""Executors of a plan: ``serial`` (this process, plan order) and ``ray`` (every run a task).

Both call the same stage functions (:mod:`lm_experiments.protocol.stages`) on the same run records
and leave the same directory layout, so the frontier table (read back from the run
directories in plan order) is the same whichever executor ran it. Both record a run that
raises (or, on Ray, whose worker dies more than ``max_retries`` times) as *failed*, skip its
descendants, and go on with every other run; a rerun of the same command retries exactly
the runs that are not finished. Every run holds its lock (:func:`lm_experiments.runner.unit.run_locked`,
``OUT/.locks/<stage>-<id>.lock``) while it runs, so two invocations on one output directory,
or a Ray task retried while another copy still runs, never train the same run twice: the
second waits and reuses the first's verified result.

Ray does the scheduling: every pretraining, post-training and fine-tuning run is one task
with its resource request (``cpus_per_task`` CPUs, one GPU per task on a CUDA device) and
its upstream task's result as an argument, so a fine-tuning starts as soon as its
theta_post exists. ``address=None`` starts a local Ray instance with every core of this
machine; ``address="auto"`` or ``"HOST:PORT"`` joins a running cluster (``ray start --head``
on one node, ``ray start --address HEAD:6379`` on the others; KubeRay and Slurm per Ray's own
documentation). Workers import this checkout (its root goes on their ``PYTHONPATH``) and
read the prepared data from the shared cache, so every node needs the repository and the
cache at the same paths (a shared filesystem) or a ``--cache`` they can reach.

Preemption (SIGTERM, :mod:`lm_experiments.engine.train_state`): both executors run their units
under the preemption handler. Serial: the running unit checkpoints at its next step boundary
and :class:`~lm_experiments.engine.train_state.Preempted` (exit code 75) ends the sweep; a unit
that was past its last step finishes first, no new unit starts. Ray: the handler is installed
in every task (while it runs) and in the driver. A task that gets the signal checkpoints and
returns a ``preempted`` outcome; a driver that gets it (or sees such an outcome) writes the
marker ``OUT/.units/PREEMPTED``, which every running task polls (twice a second) and every
starting task checks: they all checkpoint (or do not start), the driver waits for every task
to return and then exits 75. The marker is removed when the next invocation starts.

Testing hooks (fault injection, read by the task in the worker):
``LM_EXPERIMENTS_FAULT_RAISE=<run id>`` makes that run raise; ``LM_EXPERIMENTS_FAULT_EXIT=<path>``
makes the first task that finds no file at ``<path>`` create it and kill its own worker
process (a lost worker).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from early_exposure.runs import RunTree
from lm_experiments.config import PipelineConfig, config_from_mapping, config_to_dict
from lm_experiments.engine import distributed
from lm_experiments.engine.train_state import (
    Preempted, preemption_handler, preemption_requested, request_preemption,
)
from lm_experiments.protocol.context import StageContext
from lm_experiments.protocol.plan import Plan
from lm_experiments.runner.launch import run_unit_procs
from lm_experiments.runner.unit import outcome, run_one, unit_id

EXECUTORS = ("serial", "ray")
_REPO = Path(__file__).resolve().parents[2]  # the checkout's root (Ray workers' PYTHONPATH)


def _units(plan: Plan) -> list[tuple[str, Any, str | None]]:
    """(stage, record, upstream unit id) in plan order (upstream before downstream)."""
    out: list[tuple[str, Any, str | None]] = []
    for pre in plan.pre:
        out.append(("pre", pre, None))
        for post in (p for p in plan.post if p.pre is pre):
            out.append(("post", post, pre.pre_id))
            out += [("ft", ft, post.upstream_id) for ft in plan.ft if ft.post is post]
            out += [("traj", t, post.upstream_id) for t in plan.traj if t.post is post]
    return out


def run_serial(ctx: StageContext, plan: Plan, on_done: Any, cache_root: Path | None = None) -> list[dict[str, Any]]:
    """Every unit in plan order in this process (with ``train.procs_per_run`` > 1: each in its
    own torchrun job, reading the data cache at ``cache_root``); ``on_done(outcome)`` after each."""
    outcomes: dict[str, dict[str, Any]] = {}
    procs = ctx.cfg.train.procs_per_run
    config_json = json.dumps(config_to_dict(ctx.cfg), sort_keys=True) if procs > 1 else ""
    with preemption_handler():  # SIGTERM: the running unit checkpoints, Preempted (exit 75) ends the sweep
        for stage, record, up in _units(plan):
            # arrived after the last unit's last step: start no other (under torchrun every rank
            # runs this loop: they agree, or one would wait for the others in the next unit)
            if distributed.any_rank(preemption_requested()):
                raise Preempted(f"before {stage} run {unit_id(stage, record)}")
            upstream = outcomes.get(up) if up else None
            if procs > 1:  # each run data-parallel over its own torchrun job (lm_experiments.runner.launch)
                o = run_unit_procs(stage, record, config_json, str(ctx.out), str(cache_root) if cache_root else None,
                                   upstream, procs, unit_id(stage, record), curves=ctx.curves)
                if o.get("preempted"):
                    raise Preempted(f"{stage} run {o['id']} (torchrun x{procs})")
            else:
                o = run_one(ctx, stage, record, upstream)
            outcomes[o["id"]] = o
            on_done(o)
    return list(outcomes.values())


def preempt_marker(out: str | Path) -> Path:
    """The file a Ray driver writes to tell its tasks to checkpoint and stop."""
    return RunTree(out).preempt_marker


@contextlib.contextmanager
def _preemptible_task(stage: str, record: Any, out: str) -> Any:
    """A Ray task's unit under the preemption handler, the driver's marker watched meanwhile;
    yields a box whose ``[0]`` is set to the preempted outcome when the unit stopped on it."""
    box: list[dict[str, Any] | None] = [None]
    marker = preempt_marker(out)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if marker.exists():
                request_preemption()
                return

    with preemption_handler():
        if marker.exists():
            request_preemption()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield box
        except Preempted as exc:
            print(f"[preempted] {stage} run {unit_id(stage, record)}: {exc}", file=sys.stderr, flush=True)
            box[0] = outcome(stage, unit_id(stage, record), preempted=True)
        finally:
            done.set()


# ---- Ray ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _worker_context(config_json: str, out: str, cache_root: str | None, curves: str | None = None) -> StageContext:
    """One context per (config, output directory, curves) per worker process (data loaded once);
    the worker writes the curves of the runs it trains itself."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = config_from_mapping(json.loads(config_json))
    torch.set_num_threads(max(1, cfg.threads))
    return StageContext.open(cfg, Path(out), cache_root=Path(cache_root) if cache_root else None, curves=curves)


def _ray_unit_procs(stage: str, record: Any, config_json: str, out: str, cache_root: str | None,
                    upstream: dict[str, Any] | None, nproc: int, curves: str | None = None) -> dict[str, Any]:
    """A multi-process run: this task holds ``nproc`` GPUs (or CPUs) and runs torchrun on them."""
    with _preemptible_task(stage, record, out) as box:
        if preemption_requested():
            raise Preempted("before it started")
        o = run_unit_procs(stage, record, config_json, out, cache_root, upstream, nproc, unit_id(stage, record),
                           curves=curves)
    return box[0] or o


def _ray_unit(stage: str, record: Any, config_json: str, out: str, cache_root: str | None,
              upstream: dict[str, Any] | None, curves: str | None = None) -> dict[str, Any]:
    buf = io.StringIO()
    o: dict[str, Any] = {}
    with contextlib.redirect_stderr(_Tee(buf, sys.stderr)):
        with _preemptible_task(stage, record, out) as box:
            if preemption_requested():  # the driver is stopping: do not start
                raise Preempted("before it started")
            ctx = _worker_context(config_json, out, cache_root, curves)
            o = run_one(ctx, stage, record, upstream)
    o = box[0] or o
    # the driver does not see worker output (log_to_driver=False): hand it the one-line notes
    o["notes"] = [ln for ln in buf.getvalue().splitlines() if ln.startswith(_NOTES)]
    return o


#: worker lines the driver prints: damaged artefacts found (and redone), lock waits, preemptions
_NOTES = ("damaged artefact:", "[lock]", "[preempted]")


class _Tee(io.TextIOBase):
    """Writes to two text streams (a worker's notes kept, and still in its log file)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def write(self, s: str) -> int:
        self.a.write(s)
        self.b.write(s)
        return len(s)

    def flush(self) -> None:
        self.b.flush()


def run_ray(cfg: PipelineConfig, plan: Plan, out: Path, *, cache_root: Path | None, on_done: Any,
            address: str | None = None, max_retries: int = 2, curves: str | None = None) -> list[dict[str, Any]]:
    """Every unit a Ray task, upstream results as arguments (Ray waits for them); ``curves``:
    each task writes the live curves of its run (:func:`lm_experiments.runner.pipeline.run_pipeline`)."""
    import ray

    marker = preempt_marker(out)
    marker.unlink(missing_ok=True)  # a previous invocation's preemption is over
    started = not ray.is_initialized()
    if started:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))}
        env.update({k: v for k, v in os.environ.items() if k.startswith("LM_EXPERIMENTS_FAULT_")})
        if cache_root is None and os.environ.get("EARLY_EXPOSURE_CACHE"):
            env["EARLY_EXPOSURE_CACHE"] = os.environ["EARLY_EXPOSURE_CACHE"]
        with warnings.catch_warnings():
            # ray.init starts its processes through Popen with a preexec_fn (a fork, exec-ed at
            # once); JAX, when initialised in this process (a test session), warns on any fork
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": env})
    try:
        gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and _has_cuda())
        procs = cfg.train.procs_per_run  # > 1: one torchrun job per run, on procs GPUs (or CPUs) of one node
        extra = (procs, curves) if procs > 1 else (curves,)
        task = ray.remote(num_cpus=max(1, cfg.threads) * (1 if gpu else procs), num_gpus=procs if gpu else 0,
                          max_retries=max_retries, retry_exceptions=False)(_ray_unit_procs if procs > 1 else _ray_unit)
        config_json = json.dumps(config_to_dict(cfg), sort_keys=True)
        refs: dict[str, Any] = {}
        pending: dict[Any, tuple[str, str, str | None]] = {}
        order: dict[Any, int] = {}
        for i, (stage, record, up) in enumerate(_units(plan)):
            ref = task.remote(stage, record, config_json, str(out), str(cache_root) if cache_root else None,
                              refs[up] if up else None, *extra)
            refs[unit_id(stage, record)] = ref
            pending[ref], order[ref] = (stage, unit_id(stage, record), up), i
        outcomes: dict[str, dict[str, Any]] = {}
        stopping = False

        def stop_all() -> None:  # tell every task to checkpoint and stop (they poll the marker)
            nonlocal stopping
            if not stopping:
                stopping = True
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                print("[preempted] telling every running run to checkpoint and stop", file=sys.stderr, flush=True)

        # the driver's SIGTERM (ray.init installed its own handler: ours replaces it meanwhile)
        with preemption_handler():
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if preemption_requested():
                    stop_all()
                if not ready:
                    continue
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in sorted(ready, key=order.__getitem__):  # upstream before downstream
                    stage, unit, up = pending.pop(ref)
                    try:
                        o = ray.get(ref)
                        for line in o.pop("notes", []):
                            print(line, file=sys.stderr, flush=True)
                    except Exception as exc:  # noqa: BLE001 - its worker was lost beyond max_retries, or its upstream's
                        if up is not None and outcomes.get(up, {}).get("failed"):
                            o = outcome(stage, unit, skipped=True, error=f"upstream run {up} failed")
                        elif up is not None and outcomes.get(up, {}).get("preempted"):
                            o = outcome(stage, unit, preempted=True)
                        else:
                            o = outcome(stage, unit, error=_first_line(exc))
                    if o.get("preempted"):
                        stop_all()  # a preemption of one task is one of the job
                    outcomes[unit] = o
                    on_done(o)
        return [outcomes[unit_id(s, r)] for s, r, _ in _units(plan)]
    finally:
        if started:
            ray.shutdown()


def check_executor(executor: str, address: str | None) -> None:
    """Reject an unknown executor, or Ray options without Ray, before any work."""
    from early_exposure.errors import ConfigError

    if executor not in EXECUTORS:
        raise ConfigError("--executor", f"must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if address is not None and executor != "ray":
        raise ConfigError("--address", "only meaningful with --executor ray")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor", "ray is not installed; pip install 'early-exposure[ray]' "
                              "(or pip install ray), or use --executor serial") from None


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")
    return text.splitlines()[0][:300]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["EXECUTORS", "run_serial", "run_ray", "check_executor", "preempt_marker"]
