"""The three stages of the protocol, each a function of (context, run record).

:func:`run_pre`, :func:`run_post` and :func:`run_ft` train one run, evaluate it on the
fixed held-out sets, write its directory (``result.json`` last, atomically) and return a
:class:`StageResult`. They read their upstream run's ``result.json`` and model from disk,
so a run needs only its record, the resolved config and the output directory
(:meth:`StageContext.open` prepares the rest from the data cache): that is the unit a
distributed executor calls. A run whose ``result.json`` exists is returned as it is once
its directory matches the integrity record in it (:mod:`early_exposure.runs`; a damaged
run is reported in one line and redone); an interrupted run resumes from the engine's checkpoint (``train_state/``); a non-finite loss
marks the run (and its descendants) diverged.

Losses (nats per token, fixed held-out sets: the test split when the data config has one,
which no selection sees; early stopping selects on the validation split)::

    L_im  = L(theta_post; D_post)    L_ret = L(theta_ft; D_post)
    L_ft  = L(theta_ft; D_ft)        L_pre = L(theta_ft; D_pre)

plus ``L_{post,pre,ft}_stage1`` after pretraining and ``L_{pre,ft}_stage2`` after
post-training. With ``data.synthetic`` every stage also records ``items`` (its model's exact
match on D_post's capability items, ``post_stage1|2|3``; a fine-tuning record carries all
three) and ``floors`` (:func:`synthetic_records`); other runs' records gain no key. Every optimizer is built by :func:`optim_for` from the stage's ``optim``
section. Random streams (``early_exposure.seeding``): the training RNG of each run is
``int_seed(seed, "torch", "stage1"|"stage2"|"stage3", run id)``, LoRA's initialisation
``int_seed(seed, "torch", "lora-init", upstream id)``; data order in
:mod:`lm_experiments.protocol.schedules`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from early_exposure.frontier import method_name
from early_exposure.seeding import int_seed
from lm_experiments.engine.distributed import collective_stage
from lm_experiments.engine.model_card import card_extra
from lm_experiments.protocol.context import (
    StageContext, StageResult, atomic_write_bytes, finished, npz_bytes, optim_for, remove_train_state, train_summary,
    write_result,
)
from lm_experiments.protocol.plan import FtRun, PostRun, PreRun
from lm_experiments.protocol.schedules import finetune_source, posttrain_source, pretrain_source, split_post_blocks
from lm_experiments.protocol.trajectory import run_traj, trajectory_saver


# ---- synthetic world: exact-match items and entropy floors ------------------------------
def synthetic_records(ctx: StageContext, model: Any, key: str) -> dict[str, Any]:
    """For a config with ``data.synthetic`` (else ``{}``: non-synthetic records gain no key):
    ``{"items": {key: {split: {block | "all": exact match}}}, "floors": {...}}`` -- the
    model's exact match on D_post's capability items (``lm_experiments.data.synthetic.
    item_scores``: ``val`` = training query phrasing, ``test`` = held-out phrasing) under
    ``key`` (``post_stage1`` / ``post_stage2`` / ``post_stage3``), and every distribution's
    exact per-token entropy floor at the run's block length (``pre``/``post``/``ft``, and
    ``<role>_no_facts``: the floor of a model that knows no value map)."""
    syn = getattr(ctx.cfg.data, "synthetic", None)
    if syn is None:
        return {}
    from lm_experiments.data import synthetic as S
    from lm_experiments.data import synthetic_items as SI

    world = S.build_world(syn)
    fl = S.floors(syn, ctx.seq_len)
    nf = S.floors(syn, ctx.seq_len, knows_facts=False)
    return {"items": {key: SI.item_scores(model, world, ctx.prepared.tokenizer, role="post")},
            "floors": {**fl, **{f"{r}_no_facts": v for r, v in nf.items()}}}


# ---- pretraining ------------------------------------------------------------------------
@collective_stage
def run_pre(ctx: StageContext, r: PreRun) -> StageResult:
    """Pretrain on D_pre with ``r.mix_fraction`` of D_post spread through the budget (Sec. 4.1)."""
    d = ctx.tree.pre(r.pre_id)
    done = finished("pre", d)
    if done is not None:
        return done
    from lm_experiments.engine.model import build_model_for_block

    sec = ctx.cfg.pre
    mixed, _ = split_post_blocks(len(ctx.post_idx), r.mix_fraction, seed=r.seed)
    source = pretrain_source(ctx.pools["pre"], ctx.pools["post"], ctx.post_idx[mixed],
                             tokens=sec.tokens, batch_size=sec.batch_size, seed=r.seed)
    model = build_model_for_block(ctx.cfg.model.block, ctx.cfg.model.preset, vocab_size=len(ctx.prepared.tokenizer),
                                  max_seq_len=ctx.seq_len, seed=r.seed).to(ctx.device)
    t0 = time.time()
    optim = optim_for(sec.optim, steps=len(source))
    res = ctx.train(model, source, optim, ckpt_dir=d / "train_state",
                    seed=int_seed(r.seed, "torch", "stage1", r.pre_id), desc=f"pre lam={r.mix_fraction}",
                    checkpoint_every=sec.checkpoint_every)
    losses: dict[str, float] = {}
    if not res.diverged:
        for role in ("post", "pre", "ft"):
            losses[f"L_{role}_stage1"] = ctx.evaluate(model, role).mean_loss
        if not all(math.isfinite(v) for v in losses.values()):
            res.diverged = True
    result = {"stage": "pre", "pre_id": r.pre_id, "seed": r.seed, "mix_fraction": r.mix_fraction,
              "diverged": res.diverged, "losses": losses, "train": train_summary(res, source, optim),
              "mixed_post_blocks": int(len(mixed)), "wall_s": time.time() - t0,
              "data_fingerprint": ctx.prepared.fingerprint, "model_dir": None}
    if not res.diverged:
        result.update(synthetic_records(ctx, model, "post_stage1"))
        ctx.save_model(model, d / "model", card_extra(result, ctx.data_used["summary"]["config"]))
        result["model_dir"] = "model"
    write_result(d, result)
    remove_train_state(d)
    return StageResult("pre", d, bool(res.diverged), losses, result)


# ---- post-training ----------------------------------------------------------------------
@collective_stage
def run_post(ctx: StageContext, r: PostRun) -> StageResult:
    """Post-train theta_pre on D_post with ``r.setting`` and early stopping (Secs. 4.1-4.4),
    or one epoch over the D_post blocks pretraining did not see (compute-matched, Sec. 4.2)."""
    d = ctx.tree.post(r.upstream_id)
    done = finished("post", d)
    if done is not None:
        return done
    sec, st = ctx.cfg.post, r.setting
    base = {"stage": "post", "upstream_id": r.upstream_id, "pre_id": r.pre.pre_id, "seed": r.pre.seed,
            "mix_fraction": r.pre.mix_fraction, "compute_matched": r.compute_matched, "setting": st.as_dict(),
            "data_fingerprint": ctx.prepared.fingerprint}
    upstream = finished("pre", ctx.tree.pre(r.pre.pre_id))
    if upstream is None:
        raise RuntimeError(f"post-training {r.upstream_id} needs its pretraining run {r.pre.pre_id} first")
    if upstream.diverged:
        result = {**base, "diverged": True, "reason": "stage 1 diverged", "losses": {}, "model_dir": None}
        write_result(d, result)
        return StageResult("post", d, True, {}, result)
    from lm_experiments.engine.model import apply_lora, merge_lora, set_dropout

    t0 = time.time()
    model = ctx.load(ctx.tree.pre(r.pre.pre_id) / "model")
    if r.compute_matched:
        _, rest = split_post_blocks(len(ctx.post_idx), r.pre.mix_fraction, seed=r.pre.seed)
        post_indices, epochs, patience = ctx.post_idx[rest], 1, None
    else:
        post_indices, epochs, patience = ctx.post_idx, sec.max_epochs, sec.patience
    res, source, optim = None, None, None
    if len(post_indices) > 0:  # compute-matched lambda = 1: nothing left for post-training
        source = posttrain_source(ctx.pools["post"], post_indices, ctx.pools["pre"], epochs=epochs,
                                  replay=st.replay, batch_size=st.batch_size, seed=r.pre.seed,
                                  max_tokens=sec.max_tokens)
        if st.lora:
            import torch

            # peft initialises the adapters from the global torch RNG: seed it from the root
            # seed (and restore it) so a LoRA run does not depend on what ran before it
            cuda = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(int_seed(r.pre.seed, "torch", "lora-init", r.upstream_id))
                model = apply_lora(model, rank=sec.lora_rank, alpha=sec.lora_alpha, dropout=st.dropout,
                                   targets=sec.lora_targets)
        else:
            set_dropout(model, st.dropout)
        steps_per_epoch = math.ceil(len(post_indices) / st.batch_size)
        eval_every = max(1, round(sec.eval_every_epochs * steps_per_epoch))
        optim = optim_for(sec.optim, steps=len(source), **st.optim_overrides())
        res = ctx.train(model, source, optim, ckpt_dir=d / "train_state",
                        seed=int_seed(r.pre.seed, "torch", "stage2", r.upstream_id),
                        desc=f"post lam={r.pre.mix_fraction} {st.label()}{' cm' if r.compute_matched else ''}",
                        checkpoint_every=sec.checkpoint_every,
                        eval_fn=lambda m: ctx.evaluate(m, "post", split="val").mean_loss,
                        eval_every=eval_every, patience=patience,
                        on_eval=trajectory_saver(ctx, d, r) if r.trajectory else None)
        if st.lora:
            model = merge_lora(model)
        set_dropout(model, 0.0)
    diverged = bool(res is not None and res.diverged)
    losses: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    if not diverged:
        ev_post = ctx.evaluate(model, "post", correct=True)
        losses["L_im"] = ev_post.mean_loss
        losses["L_pre_stage2"] = ctx.evaluate(model, "pre").mean_loss
        losses["L_ft_stage2"] = ctx.evaluate(model, "ft").mean_loss
        diverged = not all(math.isfinite(v) for v in losses.values())
        arrays = {"post_loss_stage2": np.asarray(ev_post.per_example, dtype=np.float32),
                  "post_correct_stage2": np.asarray(ev_post.correct, dtype=bool)}
    result = {**base, "diverged": diverged, "losses": losses, "train": train_summary(res, source, optim),
              "post_blocks": int(len(post_indices)), "epochs_allowed": epochs,
              "wall_s": time.time() - t0, "model_dir": None, "eval_npz": None}
    if not diverged:
        result.update(synthetic_records(ctx, model, "post_stage2"))
        atomic_write_bytes(ctx.tree.post_eval(r.upstream_id), npz_bytes(**arrays))
        ctx.save_model(model, d / "model", card_extra(result, ctx.data_used["summary"]["config"]))
        result["model_dir"], result["eval_npz"] = "model", ctx.tree.post_eval(r.upstream_id).name
    write_result(d, result)
    remove_train_state(d)
    return StageResult("post", d, diverged, losses, result)


# ---- fine-tuning ------------------------------------------------------------------------
def _strip(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stage's training summary without its per-step history (kept in the stage dirs)."""
    return None if summary is None else {k: v for k, v in summary.items() if k != "history"}


@collective_stage
def run_ft(ctx: StageContext, r: FtRun) -> StageResult:
    """Fine-tune theta_post on D_ft at ``r.ft_lr`` for the fixed budget; measure the four losses."""
    d = ctx.tree.ft(r.run_id)
    done = finished("ft", d)
    if done is not None:
        return done
    sec, st = ctx.cfg.ft, r.post.setting
    pre_up, post_up = finished("pre", ctx.tree.pre(r.post.pre.pre_id)), finished("post", ctx.tree.post(r.post.upstream_id))
    if pre_up is None or post_up is None:
        raise RuntimeError(f"fine-tuning {r.run_id} needs its upstream runs first")
    pre_result, post_result = pre_up.record, post_up.record
    method = method_name(mixed=r.post.pre.mix_fraction > 0) + st.method_suffix()
    base = {"run_id": r.run_id, "upstream_id": r.post.upstream_id, "pre_id": r.post.pre.pre_id,
            "seed": r.post.pre.seed, "pipeline": ctx.pipeline, "method": method,
            "mix_fraction": r.post.pre.mix_fraction, "compute_matched": r.post.compute_matched,
            "post_hparams": st.as_dict(), "ft_lr": r.ft_lr,
            "data_fingerprint": ctx.prepared.fingerprint, "data": ctx.data_used["summary"],
            "config": ctx.config_dict, "provenance": ctx.provenance}
    t0 = time.time()
    res, optim = None, None
    losses: dict[str, float] = {}
    layerwise: dict[str, float] = {}
    synth: dict[str, Any] = {}
    diverged = bool(post_result["diverged"])
    reason = "upstream diverged" if diverged else None
    source = finetune_source(ctx.pools["ft"], tokens=sec.tokens, batch_size=sec.batch_size, seed=r.post.pre.seed)
    if not diverged:
        from lm_experiments.engine.evaluate import layerwise_change

        theta_post = ctx.load(ctx.tree.post(r.post.upstream_id) / "model")
        model = ctx.load(ctx.tree.post(r.post.upstream_id) / "model")
        if ctx.cfg.model.block == "fast":  # the same weights in the fast decoder (saved files stay HF's)
            from lm_experiments.engine.fast_llama import FastLlamaForCausalLM

            model = FastLlamaForCausalLM.from_hf(model).to(ctx.device)
        optim = optim_for(sec.optim, steps=len(source), lr=r.ft_lr)
        res = ctx.train(model, source, optim, ckpt_dir=d / "train_state",
                        seed=int_seed(r.post.pre.seed, "torch", "stage3", r.run_id),
                        desc=f"ft lr={r.ft_lr:g}", checkpoint_every=sec.checkpoint_every)
        diverged = res.diverged
        reason = "stage 3 diverged" if diverged else None
    if not diverged:
        ev_post = ctx.evaluate(model, "post", correct=True)
        ev_ft = ctx.evaluate(model, "ft")
        ev_pre = ctx.evaluate(model, "pre")
        losses = {"L_im": post_result["losses"]["L_im"], "L_ret": ev_post.mean_loss, "L_ft": ev_ft.mean_loss,
                  "L_pre": ev_pre.mean_loss}
        if not all(math.isfinite(v) for v in losses.values()):
            diverged, reason = True, "non-finite evaluation loss"
        else:
            up = np.load(ctx.tree.post_eval(r.post.upstream_id))
            atomic_write_bytes(ctx.tree.ft_eval(r.run_id), npz_bytes(
                post_loss_stage2=up["post_loss_stage2"], post_correct_stage2=up["post_correct_stage2"],
                post_loss_stage3=np.asarray(ev_post.per_example, dtype=np.float32),
                post_correct_stage3=np.asarray(ev_post.correct, dtype=bool),
                ft_loss_stage3=np.asarray(ev_ft.per_example, dtype=np.float32),
                pre_loss_stage3=np.asarray(ev_pre.per_example, dtype=np.float32)))
            layerwise = layerwise_change(theta_post, model.to_hf() if ctx.cfg.model.block == "fast" else model)
            synth = synthetic_records(ctx, model, "post_stage3")
            if sec.save_checkpoints:
                ctx.save_model(model, d / "model", card_extra(
                    {**base, "losses": losses, "train": train_summary(res, source, optim)},
                    ctx.data_used["summary"]["config"], stage="ft"))
    # the frontier's four losses (NaN where a stage diverged), after the earlier stages' losses
    row = {"L_im": post_result.get("losses", {}).get("L_im", float("nan")), "L_ret": float("nan"),
           "L_ft": float("nan"), "L_pre": float("nan")}
    if not diverged:
        row.update(losses)
    all_losses = {**pre_result.get("losses", {}), **post_result.get("losses", {}), **row}
    ft_summary = train_summary(res, source, optim)
    result = {**base, "diverged": diverged, "reason": reason, "losses": all_losses,
              "ft_budget": source.num_tokens,
              "tokens": {"pre": pre_result.get("train", {}).get("tokens_by_source", {}),
                         "post": post_result.get("train", {}).get("tokens_by_source", {}),
                         "ft": ft_summary["tokens_by_source"]},
              # the fine-tuning curve is kept here (pre and post keep theirs in their own run dirs)
              "stages": {"pre": _strip(pre_result.get("train")), "post": _strip(post_result.get("train")),
                         "ft": ft_summary},
              "wall_s": {"pre": pre_result.get("wall_s"), "post": post_result.get("wall_s"),
                         "ft": time.time() - t0},
              "layerwise_change": layerwise,
              "files": {"eval_npz": ctx.tree.ft_eval(r.run_id).name if ctx.tree.ft_eval(r.run_id).exists() else None,
                        **ctx.tree.upstream_model_links(r.post.pre.pre_id, r.post.upstream_id)}}
    if getattr(ctx.cfg.data, "synthetic", None) is not None:
        # every stage's exact match on D_post's items (NaN-free: a stage that diverged has none)
        result["items"] = {**pre_result.get("items", {}), **post_result.get("items", {}), **synth.get("items", {})}
        result["floors"] = synth.get("floors") or post_result.get("floors") or pre_result.get("floors") or {}
    write_result(d, result)
    remove_train_state(d)
    return StageResult("ft", d, bool(diverged), all_losses, result)


#: stage name -> its function (what an executor dispatches on)
STAGE_FUNCTIONS = {"pre": run_pre, "post": run_post, "ft": run_ft, "traj": run_traj}
