"""The matched-L_im study's stage: fine-tune the saved stage-2 checkpoints of a post-training
run (:func:`run_traj`), and the ``on_eval`` hook that saves them (:func:`trajectory_saver`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from early_exposure import integrity
from early_exposure.frontier import method_name
from early_exposure.runs import RunTree
from early_exposure.seeding import int_seed
from lm_experiments.engine import distributed
from lm_experiments.engine.distributed import collective_stage
from lm_experiments.engine.model_card import card_extra
from lm_experiments.protocol.context import (
    StageContext, StageResult, atomic_write_json, finished, optim_for, remove_train_state, write_result,
)
from lm_experiments.protocol.plan import PostRun, TrajRun, ft_key
from lm_experiments.protocol.schedules import finetune_source


def trajectory_saver(ctx: StageContext, d: Path, r: PostRun) -> Any:
    """``on_eval`` of a post-training run of the matched-L_im study: the model at this
    evaluation and its losses (validation: what early stopping saw; L_im on the reported
    split) under ``trajectory/step-NNNNNN/`` (meta.json last; a resumed run rewrites it)."""
    def save(step: int, model: Any, val: float) -> None:
        sd = RunTree.step_dir(RunTree.post_trajectory(d), step)
        ctx.save_model(model, sd / "model", card_extra(
            {"upstream_id": r.upstream_id, "pre_id": r.pre.pre_id, "seed": r.pre.seed,
             "mix_fraction": r.pre.mix_fraction, "compute_matched": r.compute_matched,
             "setting": r.setting.as_dict(), "step": step,
             "losses": {"val_loss": val}}, ctx.data_used["summary"]["config"], stage="post-trajectory"))
        atomic_write_json(sd / "meta.json", {"step": step, "val_loss": val,
                                             "L_im": ctx.evaluate(model, "post").mean_loss})
    return save


def trajectory_checkpoints(post_run_dir: Path, best_step: int | None, k: int) -> list[dict[str, Any]]:
    """The saved stage-2 checkpoints up to and including the early-stopping one (later ones
    are the overfitting tail early stopping discards), thinned to at most ``k`` evenly spaced
    ones that keep the first and the last."""
    metas = []
    for p in sorted(RunTree.post_trajectory(post_run_dir).glob("step-*/meta.json")):
        m = json.loads(p.read_text())
        if best_step is None or m["step"] <= best_step:
            metas.append({**m, "dir": str(p.parent.relative_to(post_run_dir))})
    if len(metas) > k:
        idx = sorted({round(i * (len(metas) - 1) / (k - 1)) for i in range(k)})
        metas = [metas[i] for i in idx]
    return metas


@collective_stage
def run_traj(ctx: StageContext, r: TrajRun) -> StageResult:
    """Fine-tune each kept stage-2 checkpoint of ``r.post`` (:func:`trajectory_checkpoints`)
    at ``r.ft_lr`` with the ``ft`` budget; one ``step-NNNNNN/result.json`` per checkpoint
    (resumable), ``result.json`` with every row last. The training RNG and the D_ft order
    are those of the regular fine-tuning run of theta_post at this lr (common random
    numbers along the trajectory), so the early-stopping checkpoint's row repeats it."""
    d = ctx.tree.traj(r.traj_id)
    done = finished("traj", d)
    if done is not None:
        return done
    post_up = finished("post", ctx.tree.post(r.post.upstream_id))
    if post_up is None:
        raise RuntimeError(f"trajectory {r.traj_id} needs its post-training run {r.post.upstream_id} first")
    sec, seed = ctx.cfg.ft, r.post.pre.seed
    method = method_name(mixed=r.post.pre.mix_fraction > 0) + r.post.setting.method_suffix()
    base = {"stage": "traj", "traj_id": r.traj_id, "upstream_id": r.post.upstream_id, "pre_id": r.post.pre.pre_id,
            "seed": seed, "pipeline": ctx.pipeline, "method": method, "mix_fraction": r.post.pre.mix_fraction,
            "ft_lr": r.ft_lr, "data_fingerprint": ctx.prepared.fingerprint, "config": ctx.config_dict,
            "provenance": ctx.provenance}
    rows: list[dict[str, Any]] = []
    if post_up.diverged:
        result = {**base, "diverged": True, "reason": "upstream diverged", "rows": rows}
        write_result(d, result)
        return StageResult("traj", d, True, {}, result)
    t0 = time.time()
    pdir = ctx.tree.post(r.post.upstream_id)
    best = (post_up.record.get("train") or {}).get("best_step")
    ckpts = trajectory_checkpoints(pdir, best, r.max_checkpoints)
    if not ckpts:
        raise RuntimeError(f"post-training run {r.post.upstream_id} saved no trajectory (its result predates the "
                           "matched study?): delete its directory to rerun it")
    run_seed = int_seed(seed, "torch", "stage3", ft_key(ctx.cfg, r.post.upstream_id, r.ft_lr))
    for i, m in enumerate(ckpts):
        sd = RunTree.step_dir(d, m["step"])
        if RunTree.record(sd).is_file():
            row, why = integrity.read_json(RunTree.record(sd))
            if why is None:
                rows.append(row)
                continue
            if distributed.is_main():
                integrity.report(why, f"redoing checkpoint {m['step']} of trajectory {r.traj_id}")
        model = ctx.load(pdir / m["dir"] / "model")
        source = finetune_source(ctx.pools["ft"], tokens=sec.tokens, batch_size=sec.batch_size, seed=seed)
        optim = optim_for(sec.optim, steps=len(source), lr=r.ft_lr)
        res = ctx.train(model, source, optim, ckpt_dir=sd / "train_state", seed=run_seed,
                        desc=f"traj step {m['step']} lr={r.ft_lr:g}", checkpoint_every=sec.checkpoint_every)
        row = {"checkpoint": i, "post_step": m["step"], "val_loss": m["val_loss"], "L_im": m["L_im"],
               "L_ret": float("nan"), "L_ft": float("nan"), "L_pre": float("nan"), "diverged": bool(res.diverged),
               "best": m["step"] == best}
        if not res.diverged:
            row.update(L_ret=ctx.evaluate(model, "post").mean_loss, L_ft=ctx.evaluate(model, "ft").mean_loss,
                       L_pre=ctx.evaluate(model, "pre").mean_loss)
            row["diverged"] = not all(math.isfinite(row[k]) for k in ("L_ret", "L_ft", "L_pre"))
        atomic_write_json(RunTree.record(sd), row)
        remove_train_state(sd)
        rows.append(row)
    result = {**base, "diverged": False, "best_step": best, "rows": rows, "wall_s": time.time() - t0}
    write_result(d, result)
    return StageResult("traj", d, False, {}, result)
