"""The paper's three-stage protocol over a sweep (arXiv 2605.12705, Secs. 3-4).

:func:`run_pipeline` validates the config, prepares the data (falling back to the offline
corpora when a hub corpus cannot be loaded), makes the plan (:mod:`lm_experiments.protocol.plan`),
then runs every stage function (:mod:`lm_experiments.protocol.stages`) in plan order, skipping
finished runs, and writes the manifest and the frontier table. Every path of the output
directory comes from :class:`early_exposure.runs.RunTree` (its docstring shows the layout).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


from early_exposure import integrity
from early_exposure.errors import ConfigError
from early_exposure.frontier import write_frontier
from early_exposure.io import atomic_write_json, stable_hash
from lm_experiments.config import PipelineConfig
from lm_experiments.engine import distributed
from lm_experiments.engine.checkpoints import write_checkpoint_index
from lm_experiments.engine.train_state import EXIT_PREEMPTED, Preempted
from lm_experiments.protocol.prepared import data_sizes, prepare
from lm_experiments.protocol.context import StageContext
from lm_experiments.protocol.plan import Plan, describe_plan, estimate_seconds, make_plan, post_sequences
from lm_experiments.protocol.stages import STAGE_FUNCTIONS
from lm_experiments.protocol.tables import frontier_rows, write_tables
from lm_experiments.runner.executors import check_executor, run_ray, run_serial


def manifest(ctx: StageContext, plan: Plan, status: dict[str, Any], wall_s: float) -> dict[str, Any]:
    return {"pipeline": ctx.pipeline, "config": ctx.config_dict, "config_hash": stable_hash(ctx.config_dict),
            "data": ctx.data_used["summary"], "data_fingerprint": ctx.prepared.fingerprint,
            "sizes": plan.sizes, "planned_tokens": plan.tokens,
            "plan": {"pre": [p.pre_id for p in plan.pre], "post": [p.upstream_id for p in plan.post],
                     "ft": [f.run_id for f in plan.ft], "traj": [t.traj_id for t in plan.traj]},
            "status": status, "wall_s": wall_s, "device": str(ctx.device), "provenance": ctx.provenance}


def run_sweep(ctx: StageContext, plan: Plan, *, executor: str = "serial", address: str | None = None,
              max_retries: int = 2, cache_root: Path | None = None) -> dict[str, Any]:
    """Run every unit of the plan with ``executor`` (:mod:`lm_experiments.runner.executors`; finished
    runs are skipped, failed ones recorded while the rest go on); write the frontier, the
    manifest and ``checkpoints.csv`` (every run directory, also after a partial sweep). ``frontier.csv`` appears only when every run finished (``frontier.partial.csv``
    while the sweep runs or when some failed: rerun the same command to retry them).

    Preemption (SIGTERM; :mod:`lm_experiments.engine.train_state`): the running units write
    their checkpoints at the current step, the manifest records ``"preempted"`` (the units
    stopped; none is marked failed), the partial tables are written from the finished runs and
    :class:`~lm_experiments.engine.train_state.Preempted` is raised: the process exits with
    :data:`~lm_experiments.engine.train_state.EXIT_PREEMPTED` (75). Rerunning the same command
    resumes every stopped unit from its checkpoint, bitwise."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load "Loading weights" bars would drown the sweep's bars
    t0 = time.time()
    n_post = plan.sizes["post_used"]
    planned = {**{p.pre_id: ctx.cfg.pre.tokens // (ctx.cfg.pre.batch_size * ctx.seq_len) * ctx.cfg.pre.batch_size
                  * ctx.seq_len for p in plan.pre},
               **{p.upstream_id: post_sequences(ctx.cfg, n_post, p) * ctx.seq_len for p in plan.post}}
    status: dict[str, Any] = {s: {"done": 0, "diverged": 0, "failed": 0} for s in STAGE_FUNCTIONS}
    status["complete"] = False
    failed: list[dict[str, Any]] = []
    preempted: list[dict[str, Any]] = []
    tree = ctx.tree
    atomic_write_json(tree.manifest, {**manifest(ctx, plan, status, 0.0), "executor": executor})
    bar = tqdm(total=plan.tokens["pre"] + plan.tokens["post_max"] + plan.tokens["ft"], desc=f"pipeline ({executor})",
               unit="tok", unit_scale=True, disable=not ctx.progress, dynamic_ncols=True)
    last_partial = [0.0]

    def on_done(o: dict[str, Any]) -> None:
        if o.get("preempted"):  # stopped with its checkpoint: neither done nor failed
            preempted.append({"stage": o["stage"], "id": o["id"]})
            return
        st = status[o["stage"]]
        st["done"] += 1
        st["diverged"] += int(o["diverged"])
        if o["failed"]:
            st["failed"] += 1
            failed.append({k: o[k] for k in ("stage", "id", "error", "skipped")})
        bar.update(o.get("ft_budget", 0) if o["stage"] == "ft" else planned.get(o["id"], 0))
        if o["stage"] == "ft" and time.time() - last_partial[0] > 30:
            write_frontier(frontier_rows(ctx.out, plan), tree.frontier_partial)
            integrity.seal(tree.frontier_partial)
            last_partial[0] = time.time()

    stop: Preempted | None = None
    try:
        if executor == "ray":
            run_ray(ctx.cfg, plan, ctx.out, cache_root=cache_root, on_done=on_done, address=address,
                    max_retries=max_retries, curves=ctx.curves)
            if preempted:
                stop = Preempted(f"{len(preempted)} run(s) stopped with their checkpoints")
        else:
            run_serial(ctx, plan, on_done, cache_root=cache_root)
    except Preempted as exc:
        stop = exc
    finally:
        bar.close()
    if stop is not None:
        status["complete"] = False
        write_tables(ctx.out, plan, tree.frontier_partial.name)
        write_checkpoint_index(ctx.out, verify=False)  # the runs so far: hash -> lambda, seed, setting, model
        m = {**manifest(ctx, plan, status, time.time() - t0), "executor": executor, "failed": failed,
             "preempted": preempted or [{"where": str(stop)}]}
        atomic_write_json(tree.manifest, m)
        print(f"preempted ({stop}): checkpoints written; rerun the same command to resume "
              f"(exit code {EXIT_PREEMPTED})", file=sys.stderr, flush=True)
        raise stop
    status["complete"] = not failed
    if failed:
        write_tables(ctx.out, plan, tree.frontier_partial.name)
    else:
        write_tables(ctx.out, plan, tree.frontier.name)
        integrity.unseal(tree.frontier_partial)
    write_checkpoint_index(ctx.out, verify=False)  # every run directory: hash -> lambda, seed, setting, model
    m = {**manifest(ctx, plan, status, time.time() - t0), "executor": executor, "failed": failed}
    atomic_write_json(tree.manifest, m)
    return m


@contextlib.contextmanager
def _together_on_preemption() -> Iterator[None]:
    """Under torchrun: a preempted rank waits at a barrier until rank 0 has written the manifest
    (``torchrun`` stops the other ranks as soon as one exits). Nothing in one process."""
    try:
        yield
    except Preempted:
        distributed.barrier()
        raise


def run_pipeline(cfg: PipelineConfig, out_dir: Path, *, cache_root: Path | None = None, dry_run: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print, executor: str = "serial",
                 address: str | None = None, max_retries: int = 2, curves: str | None = None) -> dict[str, Any]:
    """Validate, plan and run (or, with ``dry_run``, only print the plan and a time estimate).

    ``curves``: write every run's training curve while it trains (``csv``: ``<run dir>/curves.csv``;
    ``tensorboard``: ``OUT/tensorboard/<stage>-<id>/``; ``trackio`` / ``wandb-offline``: a local
    tracker; :mod:`lm_experiments.engine.curves`), in whichever process trains the run; None: none.

    Everything that can reject the input (config, data, budgets, device, executor) runs
    before the first write to ``out_dir``; a ``ConfigError`` leaves ``out_dir`` untouched.
    """
    check_executor(executor, address)
    from lm_experiments.engine.curves import require

    require(curves)  # the chosen writer's package imports, before any work
    dctx = distributed.context()
    if dctx.active and cfg.train.procs_per_run > 1:
        raise ConfigError("train.procs_per_run", f"must be 1 under torchrun ({dctx.world_size} processes already "
                          "run every unit data-parallel); drop torchrun to run each unit as its own torchrun job")
    if dctx.active and executor != "serial":
        raise ConfigError("--executor", f"under torchrun ({dctx.world_size} processes) every run is data-parallel "
                          "over all of them: use --executor serial")
    if not dctx.is_main:
        log = lambda _: None  # noqa: E731 - rank 0 prints
    import torch

    from lm_experiments.engine.device import check_precision, resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolve_device(cfg.device)
    check_precision(cfg.precision)
    t0 = time.time()
    with distributed.main_first():  # under torchrun rank 0 fills the data cache first
        prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=progress and dctx.is_main, log=log)
    data_s = time.time() - t0
    check_precision(cfg.precision)
    device = resolve_device(cfg.device)
    plan = make_plan(cfg, data_sizes(prepared), prepared.fingerprint)
    pipeline = cfg.pipeline_label(data_used["config"])
    log(describe_plan(cfg, plan, pipeline))
    log(f"  data preparation: {data_s:.1f} s; device {device}")
    if dry_run:
        est = estimate_seconds(cfg, plan, prepared, device)
        log(f"  estimated time on this machine: {est['total_s'] / 60:.1f} min at most "
            f"(training {est['train_tokens_per_s']:,.0f} tok/s, evaluation {est['eval_tokens_per_s']:,.0f} tok/s; "
            f"post-training counted at its max_epochs)")
        return {"dry_run": True, "plan": plan, "estimate": est, "pipeline": pipeline}
    out_dir = Path(out_dir)
    ctx = StageContext(cfg, prepared, out_dir, device, data_used, progress and dctx.is_main, curves=curves)
    if not dctx.is_main:  # the other ranks train every run with rank 0 and write nothing
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with _together_on_preemption():
            run_serial(ctx, plan, lambda _: None)
        return {"rank": dctx.rank, "failed": [], "status": {}}
    with _together_on_preemption():
        m = run_sweep(ctx, plan, executor=executor, address=address, max_retries=max_retries, cache_root=cache_root)
    m["data_prep_s"] = data_s
    atomic_write_json(ctx.tree.manifest, m)
    st = m["status"]
    log(f"done in {m['wall_s']:.0f} s (+{data_s:.0f} s data, executor {executor}): pre {st['pre']}, "
        f"post {st['post']}, ft {st['ft']}; frontier: "
        f"{ctx.tree.frontier if st['complete'] else ctx.tree.frontier_partial}")
    for f in m["failed"]:
        log(f"  failed: {f['stage']} {f['id']}: {f['error']}")
    return m
