"""The paper's three-stage protocol over a sweep (arXiv 2605.12705, Secs. 3-4).

:func:`run_pipeline` validates the config, prepares the data (falling back to the offline
corpora when a hub corpus cannot be loaded), makes the plan (:mod:`lm_experiments.plan`),
then runs every stage function (:mod:`lm_experiments.stages`) in plan order, skipping
finished runs, and writes the manifest and the frontier table. Output layout (a pure
function of the config)::

    OUT/manifest.json                       resolved config, plan, status, data, provenance
    OUT/frontier.csv                        shared schema (early_exposure.frontier), side=lm; written
                                            when the sweep is complete (frontier.partial.csv before)
    OUT/upstream/pre-<pre_id>/              theta_pre (model/, loadable by from_pretrained), result.json
    OUT/upstream/post-<upstream_id>/        theta_post (model/), result.json, eval_post.npz
    OUT/runs/<run_id>/result.json           one fine-tuning run: config, seed, tokens/wall/tok-s per
                                            stage, losses, layer-wise change, provenance
    OUT/runs/<run_id>/eval.npz              per-example D_post losses and top-1 correctness after
                                            post-training and fine-tuning; per-example D_ft, D_pre losses
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure import integrity
from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.frontier import make_row, write_frontier
from early_exposure.io import atomic_write_bytes, atomic_write_json, stable_hash
from lm_experiments.config import PipelineConfig
from lm_experiments.rundirs import read_run
from lm_experiments.plan import FtRun, Plan, PostRun, PreRun, describe_plan, estimate_seconds, make_plan, post_sequences
from lm_experiments.stages import STAGE_FUNCTIONS, StageContext, StageResult, ft_dir, traj_dir


def prepare(cfg: PipelineConfig, *, cache_root: Path | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any], PipelineConfig]:
    """Prepare the data of ``cfg``, or fall back to ``cfg.data_fallback`` (with
    ``cfg.fallback_set`` applied) when a hub corpus of ``cfg.data`` cannot be loaded, e.g.
    offline. Returns ``(PreparedData, data_used, effective config)``."""
    from lm_experiments.config import fallback_config
    from lm_experiments.data import prepare_data

    primary_error = None
    try:
        prepared = prepare_data(cfg.data, cache_root=cache_root, progress=progress)
    except Exception as exc:  # noqa: BLE001 - any loading failure of a hub corpus may fall back
        uses_hub = any(getattr(cfg.data, r).source == "hf" for r in ("pre", "post", "ft"))
        if cfg.data_fallback is None or not uses_hub:
            raise
        primary_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log(f"[data] primary corpora unavailable ({primary_error}); using data_fallback"
            + (f" with {list(cfg.fallback_set)}" if cfg.fallback_set else ""))
        cfg = fallback_config(cfg)
        prepared = prepare_data(cfg.data, cache_root=cache_root, progress=progress)
    summary = {"config": to_dict(cfg.data), "fallback_used": primary_error is not None,
               "primary_error": primary_error, "fingerprint": prepared.fingerprint,
               "stats": prepared.stats, "tokenizer_vocab": len(prepared.tokenizer)}
    return prepared, {"config": cfg.data, "summary": summary}, cfg


def data_sizes(prepared: Any) -> dict[str, int]:
    """Training / validation blocks per role and the sequence length."""
    sp = prepared.splits
    return {"pre": int(sp["pre"].train.shape[0]), "post": int(sp["post"].train.shape[0]),
            "ft": int(sp["ft"].train.shape[0]), "pre_val": int(sp["pre"].val.shape[0]),
            "post_val": int(sp["post"].val.shape[0]), "ft_val": int(sp["ft"].val.shape[0]),
            "seq_len": int(sp["pre"].train.shape[1])}


def run_unit(stage: str, record: PreRun | PostRun | FtRun, cfg: PipelineConfig, out: Path, *,
             cache_root: Path | None = None, ctx: StageContext | None = None) -> StageResult:
    """Execute one run given only its record, the resolved config and the output directory
    (its upstream runs must be finished). ``ctx`` reuses an open context in this process. The
    run's lock is held meanwhile (:func:`lm_experiments.stages.run_locked`): another process
    running the same unit is waited for and its result reused."""
    from lm_experiments.executors import _unit_id, run_locked

    ctx = ctx or StageContext.open(cfg, out, cache_root=cache_root)
    return run_locked(ctx, stage, record, _unit_id(stage, record))


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


def frontier_rows(out: Path, plan: Plan) -> list[dict[str, Any]]:
    """One frontier row per finished fine-tuning run of ``plan``, in plan order."""
    rows = []
    for r in plan.ft:
        res, _ = read_run(ft_dir(out, r))  # None: not finished, or damaged (redone by the next run)
        if res is None:
            continue
        L = res["losses"]
        rows.append(make_row(
            side="lm", pipeline=res["pipeline"], method=res["method"], mix_fraction=res["mix_fraction"],
            compute_matched=res["compute_matched"], upstream_id=res["upstream_id"],
            post_hparams=res["post_hparams"], ft_lr=res["ft_lr"], ft_budget=res["ft_budget"],
            seed=res["seed"], L_im=_nan_if_none(L.get("L_im")), L_ret=_nan_if_none(L.get("L_ret")),
            L_ft=_nan_if_none(L.get("L_ft")), L_pre=_nan_if_none(L.get("L_pre")),
            diverged=res["diverged"], run_id=res["run_id"]))
    return rows


#: one row per fine-tuned stage-2 checkpoint (the matched table both halves write)
MATCHED_TABLE_COLUMNS = ("side", "pipeline", "method", "mix_fraction", "seed", "upstream_id", "checkpoint",
                         "post_step", "ft_lr", "L_im", "L_ret", "L_ft", "L_pre", "diverged", "run_id")


def matched_rows(out: Path, plan: Plan) -> list[dict[str, Any]]:
    """One row per fine-tuned stage-2 checkpoint of the matched-L_im study (the shared
    matched-table schema, ``early_exposure.matched``), in plan order."""
    rows = []
    for r in plan.traj:
        res, _ = read_run(traj_dir(out, r))
        if res is None:
            continue
        for row in res["rows"]:
            rows.append({"side": "lm", "pipeline": res["pipeline"], "method": res["method"],
                         "mix_fraction": res["mix_fraction"], "seed": res["seed"], "upstream_id": res["upstream_id"],
                         "checkpoint": row["checkpoint"], "post_step": row["post_step"], "ft_lr": res["ft_lr"],
                         "L_im": _nan_if_none(row["L_im"]), "L_ret": _nan_if_none(row["L_ret"]),
                         "L_ft": _nan_if_none(row["L_ft"]), "L_pre": _nan_if_none(row["L_pre"]),
                         "diverged": bool(row["diverged"]), "run_id": f"{res['traj_id']}:{row['post_step']}"})
    return rows


def write_tables(ctx: StageContext, plan: Plan, name: str) -> None:
    """``name`` (frontier.csv or frontier.partial.csv) and, beside a complete frontier of a
    plan with the matched-L_im study, ``matched.csv`` (columns :data:`MATCHED_TABLE_COLUMNS`)."""
    write_frontier(frontier_rows(ctx.out, plan), ctx.out / name)
    integrity.seal(ctx.out / name)  # size + SHA-256: readers tell a damaged table from a short one
    if plan.traj and name == "frontier.csv":
        df = pd.DataFrame(matched_rows(ctx.out, plan), columns=list(MATCHED_TABLE_COLUMNS))
        atomic_write_bytes(ctx.out / "matched.csv", df.to_csv(index=False).encode())
        integrity.seal(ctx.out / "matched.csv")


def manifest(ctx: StageContext, plan: Plan, status: dict[str, Any], wall_s: float) -> dict[str, Any]:
    return {"pipeline": ctx.pipeline, "config": ctx.config_dict, "config_hash": stable_hash(ctx.config_dict),
            "data": ctx.data_used["summary"], "data_fingerprint": ctx.prepared.fingerprint,
            "sizes": plan.sizes, "planned_tokens": plan.tokens,
            "plan": {"pre": [p.pre_id for p in plan.pre], "post": [p.upstream_id for p in plan.post],
                     "ft": [f.run_id for f in plan.ft], "traj": [t.traj_id for t in plan.traj]},
            "status": status, "wall_s": wall_s, "device": str(ctx.device), "provenance": ctx.provenance}


def run_sweep(ctx: StageContext, plan: Plan, *, executor: str = "serial", address: str | None = None,
              max_retries: int = 2, cache_root: Path | None = None) -> dict[str, Any]:
    """Run every unit of the plan with ``executor`` (:mod:`lm_experiments.executors`; finished
    runs are skipped, failed ones recorded while the rest go on); write the frontier and the
    manifest. ``frontier.csv`` appears only when every run finished (``frontier.partial.csv``
    while the sweep runs or when some failed: rerun the same command to retry them)."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from lm_experiments.executors import run_ray, run_serial

    hf_logging.disable_progress_bar()  # per-load "Loading weights" bars would drown the sweep's bars
    t0 = time.time()
    n_post = plan.sizes["post_used"]
    planned = {**{p.pre_id: ctx.cfg.pre.tokens // (ctx.cfg.pre.batch_size * ctx.seq_len) * ctx.cfg.pre.batch_size
                  * ctx.seq_len for p in plan.pre},
               **{p.upstream_id: post_sequences(ctx.cfg, n_post, p) * ctx.seq_len for p in plan.post}}
    status: dict[str, Any] = {s: {"done": 0, "diverged": 0, "failed": 0} for s in STAGE_FUNCTIONS}
    status["complete"] = False
    failed: list[dict[str, Any]] = []
    atomic_write_json(ctx.out / "manifest.json", {**manifest(ctx, plan, status, 0.0), "executor": executor})
    bar = tqdm(total=plan.tokens["pre"] + plan.tokens["post_max"] + plan.tokens["ft"], desc=f"pipeline ({executor})",
               unit="tok", unit_scale=True, disable=not ctx.progress, dynamic_ncols=True)
    last_partial = [0.0]

    def on_done(o: dict[str, Any]) -> None:
        st = status[o["stage"]]
        st["done"] += 1
        st["diverged"] += int(o["diverged"])
        if o["failed"]:
            st["failed"] += 1
            failed.append({k: o[k] for k in ("stage", "id", "error", "skipped")})
        bar.update(o.get("ft_budget", 0) if o["stage"] == "ft" else planned.get(o["id"], 0))
        if o["stage"] == "ft" and time.time() - last_partial[0] > 30:
            write_frontier(frontier_rows(ctx.out, plan), ctx.out / "frontier.partial.csv")
            integrity.seal(ctx.out / "frontier.partial.csv")
            last_partial[0] = time.time()

    try:
        if executor == "ray":
            run_ray(ctx.cfg, plan, ctx.out, cache_root=cache_root, on_done=on_done, address=address,
                    max_retries=max_retries)
        else:
            run_serial(ctx, plan, on_done, cache_root=cache_root)
    finally:
        bar.close()
    status["complete"] = not failed
    if failed:
        write_tables(ctx, plan, "frontier.partial.csv")
    else:
        write_tables(ctx, plan, "frontier.csv")
        integrity.unseal(ctx.out / "frontier.partial.csv")
    m = {**manifest(ctx, plan, status, time.time() - t0), "executor": executor, "failed": failed}
    atomic_write_json(ctx.out / "manifest.json", m)
    return m


def _check_model(cfg: PipelineConfig) -> None:
    from lm_experiments.model import MODEL_PRESETS

    if cfg.model.preset not in MODEL_PRESETS:
        raise ConfigError("model.preset", f"unknown preset {cfg.model.preset!r}; choose one of {sorted(MODEL_PRESETS)}")


def run_pipeline(cfg: PipelineConfig, out_dir: Path, *, cache_root: Path | None = None, dry_run: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print, executor: str = "serial",
                 address: str | None = None, max_retries: int = 2) -> dict[str, Any]:
    """Validate, plan and run (or, with ``dry_run``, only print the plan and a time estimate).

    Everything that can reject the input (config, data, budgets, device, executor) runs
    before the first write to ``out_dir``; a ``ConfigError`` leaves ``out_dir`` untouched.
    """
    from lm_experiments import distributed
    from lm_experiments.executors import check_executor

    check_executor(executor, address)
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

    from lm_experiments.device import check_precision, resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    resolve_device(cfg.device)
    check_precision(cfg.precision)
    _check_model(cfg)
    t0 = time.time()
    with distributed.main_first():  # under torchrun rank 0 fills the data cache first
        prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=progress and dctx.is_main, log=log)
    data_s = time.time() - t0
    _check_model(cfg)  # a fallback_set may have changed it
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
    ctx = StageContext(cfg, prepared, out_dir, device, data_used, progress and dctx.is_main)
    if not dctx.is_main:  # the other ranks train every run with rank 0 and write nothing
        from transformers.utils import logging as hf_logging

        from lm_experiments.executors import run_serial

        hf_logging.disable_progress_bar()
        run_serial(ctx, plan, lambda _: None)
        return {"rank": dctx.rank, "failed": [], "status": {}}
    m = run_sweep(ctx, plan, executor=executor, address=address, max_retries=max_retries, cache_root=cache_root)
    m["data_prep_s"] = data_s
    atomic_write_json(out_dir / "manifest.json", m)
    st = m["status"]
    log(f"done in {m['wall_s']:.0f} s (+{data_s:.0f} s data, executor {executor}): pre {st['pre']}, "
        f"post {st['post']}, ft {st['ft']}; frontier: "
        f"{out_dir / ('frontier.csv' if st['complete'] else 'frontier.partial.csv')}")
    for f in m["failed"]:
        log(f"  failed: {f['stage']} {f['id']}: {f['error']}")
    return m
