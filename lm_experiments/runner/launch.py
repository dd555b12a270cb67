"""One run unit over several processes: ``torchrun`` inside a serial or Ray task.

With ``train.procs_per_run: N`` (N > 1) every pretraining, post-training and fine-tuning run
of a sweep is data-parallel over N processes (DDP, :mod:`lm_experiments.engine.distributed`: NCCL
over N GPUs on CUDA, gloo processes on CPU) with the semantics of one device at the same
global batch. The executor (:mod:`lm_experiments.runner.executors`) hands each unit to
:func:`run_unit_procs`, which starts::

    python -m torch.distributed.run --standalone --nproc_per_node N -m lm_experiments.runner.launch SPEC

in the executor's process (the serial executor) or inside a Ray task that holds N GPUs (or
N x ``threads`` CPUs) of one node (``--executor ray``): several such runs share a node or a
cluster as Ray places them. ``--standalone`` gives each run its own rendezvous on a free
port. ``SPEC`` is a pickle of (stage, record, config, output directory, cache, upstream
outcome); every rank opens the same context (rank 0 first: it fills the data cache), runs the
unit through :func:`lm_experiments.runner.unit.run_one` (rank 0 holds the unit's lock, rank 0
writes every file) and rank 0 writes the outcome as JSON beside the spec. A rank that fails
ends the job (fail-stop, as under an outer ``torchrun``): the outcome is then a failed run
with the job's last error line, and a rerun resumes from the checkpoints.

Preemption: every rank runs under the preemption handler
(:func:`lm_experiments.engine.train_state.preemption_handler`); a SIGTERM of the executor's
process is forwarded to the ``torchrun`` agent, which sends it on to the ranks (and kills them
after its own grace period, 30 s by default). The ranks agree on the step (one all-reduce per
step boundary), write the checkpoint and exit :data:`~lm_experiments.engine.train_state.EXIT_PREEMPTED`
(75); rank 0's outcome then says ``preempted`` and the executor stops as in one process.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from early_exposure.io import atomic_write_json
from early_exposure.runs import RunTree
from lm_experiments.runner.unit import outcome, run_one, unit_id

_REPO = Path(__file__).resolve().parents[2]  # the checkout's root (the ranks' PYTHONPATH)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error:" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def run_unit_procs(stage: str, record: Any, config_json: str, out: str, cache_root: str | None,
                   upstream: dict[str, Any] | None, nproc: int, unit: str, curves: str | None = None) -> dict[str, Any]:
    """Run one unit with ``torchrun --nproc_per_node nproc``; its outcome (never raises).
    ``curves``: rank 0 writes the run's live training curve (:mod:`lm_experiments.engine.curves`)."""
    from lm_experiments.engine.train_state import forward_signals_to

    if upstream is not None and upstream.get("preempted"):
        return outcome(stage, unit, preempted=True)
    if upstream is not None and upstream["failed"]:
        return outcome(stage, unit, skipped=True, error=f"upstream run {upstream['id']} failed")
    work = RunTree(out).units
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{stage}-{unit}-") as tmp:
        spec, result = Path(tmp) / "spec.pkl", Path(tmp) / "outcome.json"
        spec.write_bytes(pickle.dumps({"stage": stage, "record": record, "config_json": config_json, "out": out,
                                       "cache_root": cache_root, "upstream": upstream, "outcome": str(result),
                                       "curves": curves}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "lm_experiments.runner.launch", str(spec)]
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            proc = subprocess.Popen(cmd, env=env, stdout=so, stderr=se, text=True)
            with forward_signals_to(proc.pid):  # a preemption signal of this process reaches the job
                returncode = proc.wait()
            so.seek(0)
            se.seek(0)
            stdout, stderr = so.read(), se.read()
        if result.is_file():
            o = json.loads(result.read_text())
            if returncode == 0 or o.get("preempted"):
                return o
        return outcome(stage, unit, error=f"torchrun x{nproc} exited {returncode}: "
                        f"{_last_error_line(stderr or stdout)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of every rank (started by :func:`run_unit_procs`)."""
    import torch
    from transformers.utils import logging as hf_logging

    from lm_experiments.engine import distributed
    from lm_experiments.config import config_from_mapping
    from lm_experiments.engine.train_state import EXIT_PREEMPTED, Preempted, preemption_handler
    from lm_experiments.protocol.context import StageContext

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):  # not for people: run_unit_procs starts it under torchrun
        print("usage: python -m torch.distributed.run --standalone --nproc_per_node N -m lm_experiments.runner.launch "
              "SPEC.pkl (started by the executors for train.procs_per_run > 1; see the module docstring)",
              file=sys.stdout if args[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    spec = pickle.loads(Path(args[0]).read_bytes())
    hf_logging.disable_progress_bar()
    dctx = distributed.init_from_env()
    rc = 0
    try:
        cfg = config_from_mapping(json.loads(spec["config_json"]))
        torch.set_num_threads(max(1, cfg.threads))
        with distributed.main_first():  # rank 0 fills the data cache first
            ctx = StageContext.open(cfg, Path(spec["out"]),
                                    cache_root=Path(spec["cache_root"]) if spec["cache_root"] else None,
                                    curves=spec.get("curves"))
        with preemption_handler():
            try:
                result = run_one(ctx, spec["stage"], spec["record"], spec["upstream"])
            except Preempted:  # every rank stopped at the same step, the checkpoint is written
                result, rc = outcome(spec["stage"], unit_id(spec["stage"], spec["record"]), preempted=True), \
                    EXIT_PREEMPTED
        if dctx.is_main:
            atomic_write_json(Path(spec["outcome"]), result)
    finally:
        distributed.shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
