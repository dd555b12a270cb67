"""The three stages of the protocol, each a function of (context, run record).

:func:`run_pre`, :func:`run_post` and :func:`run_ft` train one run, evaluate it on the
fixed held-out sets, write its directory (``result.json`` last, atomically) and return a
:class:`StageResult`. They read their upstream run's ``result.json`` and model from disk,
so a run needs only its record, the resolved config and the output directory
(:meth:`StageContext.open` prepares the rest from the data cache): that is the unit a
distributed executor calls. A run whose ``result.json`` exists is returned as it is once
its directory matches the integrity record in it (:mod:`lm_experiments.rundirs`; a damaged
run is reported in one line and redone); an interrupted run resumes from the engine's checkpoint (``train_state/``); a non-finite loss
marks the run (and its descendants) diverged.

Losses (nats per token, fixed held-out sets: the test split when the data config has one,
which no selection sees; early stopping selects on the validation split)::

    L_im  = L(theta_post; D_post)    L_ret = L(theta_ft; D_post)
    L_ft  = L(theta_ft; D_ft)        L_pre = L(theta_ft; D_pre)

plus ``L_{post,pre,ft}_stage1`` after pretraining and ``L_{pre,ft}_stage2`` after
post-training. Every optimizer is built by :func:`optim_for` from the stage's ``optim``
section. Random streams (``early_exposure.seeding``): the training RNG of each run is
``int_seed(seed, "torch", "stage1"|"stage2"|"stage3", run id)``, LoRA's initialisation
``int_seed(seed, "torch", "lora-init", upstream id)``; data order in
:mod:`lm_experiments.schedules`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from early_exposure import integrity
from early_exposure.configs import to_dict
from early_exposure.frontier import method_name
from early_exposure.io import atomic_write_bytes, atomic_write_json
from early_exposure.provenance import provenance
from early_exposure.seeding import int_seed
from lm_experiments import distributed
from lm_experiments.config import OptimSection, PipelineConfig
from lm_experiments.distributed import collective_stage, main_first, main_process_only
from lm_experiments.plan import FtRun, PostRun, PreRun, TrajRun, ft_key, post_subset
from lm_experiments.rundirs import log_training, read_run, sealed
from lm_experiments.schedules import PlannedSource, finetune_source, posttrain_source, pretrain_source, split_post_blocks

# under torchrun only rank 0 writes files (lm_experiments.distributed); unchanged in one process
atomic_write_json = main_process_only(atomic_write_json)
atomic_write_bytes = main_process_only(atomic_write_bytes)
_remove_train_state = main_process_only(lambda d: shutil.rmtree(d / "train_state", ignore_errors=True))


@dataclass(frozen=True)
class StageResult:
    """What a stage function returns: where the run lives and what ``result.json`` says."""

    stage: str                # "pre" | "post" | "ft"
    run_dir: Path
    diverged: bool
    losses: dict[str, float]
    record: dict[str, Any]    # the run's result.json


def pre_dir(out: Path, r: PreRun) -> Path:
    return Path(out) / "upstream" / f"pre-{r.pre_id}"


def post_dir(out: Path, r: PostRun) -> Path:
    return Path(out) / "upstream" / f"post-{r.upstream_id}"


def ft_dir(out: Path, r: FtRun) -> Path:
    return Path(out) / "runs" / r.run_id


def traj_dir(out: Path, r: TrajRun) -> Path:
    return Path(out) / "trajectory" / r.traj_id


@dataclass
class StageContext:
    """Everything a stage needs besides its record: config, prepared data, device, output dir.

    ``data_used`` is the summary of :func:`lm_experiments.sweep.prepare` (which corpora,
    whether the fallback was used); ``cfg`` is the *effective* config (fallback applied).
    """

    cfg: PipelineConfig
    prepared: Any
    out: Path
    device: Any
    data_used: dict[str, Any]
    progress: bool = True

    def __post_init__(self) -> None:
        sp = self.prepared.splits
        self.pools = {role: sp[role].train for role in ("pre", "post", "ft")}
        self.val = {role: sp[role].val for role in ("pre", "post", "ft")}        # early stopping
        self.report_set = {role: sp[role].report for role in ("pre", "post", "ft")}  # reported losses
        self.seq_len = int(sp["pre"].train.shape[1])
        self.post_idx = post_subset(int(sp["post"].train.shape[0]), self.cfg.post.post_train_tokens, self.seq_len)
        self.pipeline = self.cfg.pipeline_label(self.data_used["config"])
        self.provenance = provenance()
        self.config_dict = to_dict(self.cfg)

    @classmethod
    def open(cls, cfg: PipelineConfig, out: Path, *, cache_root: Path | None = None,
             progress: bool = False) -> StageContext:
        """Build the context in a fresh process from the config alone (data from the cache)."""
        from lm_experiments.device import resolve_device
        from lm_experiments.sweep import prepare

        with main_first():  # under torchrun rank 0 fills the data cache, the others then read it
            prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=progress, log=lambda _: None)
        return cls(cfg, prepared, Path(out), resolve_device(cfg.device), data_used, progress)

    # ---- helpers ----------------------------------------------------------------------
    def evaluate(self, model: Any, role: str, *, correct: bool = False, split: str = "report") -> Any:
        """Loss of ``model`` on ``role``'s held-out blocks: ``split="report"`` the test split
        (the validation split when the data config has none), ``"val"`` the validation split
        that early stopping selects on."""
        from lm_experiments.evaluate import evaluate

        blocks = self.val[role] if split == "val" else self.report_set[role]
        return evaluate(model, blocks, batch_size=self.cfg.eval.batch_size, device=self.device,
                        precision=self.cfg.precision, return_correct=correct)

    def load(self, path: Path) -> Any:
        from lm_experiments.checkpoints import load_model

        return load_model(path, self.device)  # use_cache off for training (saved on, for generate)

    @main_process_only
    def save_model(self, model: Any, path: Path, extra: dict[str, Any]) -> None:
        from lm_experiments.evaluate import save_checkpoint

        save_checkpoint(model, self.prepared.tokenizer, path, extra)

    def train(self, model: Any, source: PlannedSource, optim: Any, *, ckpt_dir: Path, seed: int, desc: str,
              checkpoint_every: int, eval_fn: Any = None, eval_every: int = 0, patience: int | None = None,
              on_eval: Any = None) -> Any:
        from lm_experiments import train as engine

        log_training(self.out, ckpt_dir)
        return engine.train(model, source, optim=optim, ckpt_dir=ckpt_dir, device=self.device,
                            precision=self.cfg.precision, eval_fn=eval_fn, eval_every=eval_every, patience=patience,
                            on_eval=on_eval,
                            checkpoint_every=checkpoint_every, desc=desc, seed=seed,
                            micro_batch=self.cfg.micro_batch, progress=self.progress,
                            compile=self.cfg.train.compile, cross_entropy=self.cfg.train.cross_entropy,
                            ce_chunk_tokens=self.cfg.train.ce_chunk_tokens)


def optim_for(section: OptimSection, *, steps: int, **overrides: Any) -> Any:
    """The engine's optimizer settings of one run of ``steps`` steps: ``section`` with a
    sweep's ``overrides`` (``lr=...``), its floor at that lr, warmup capped at 10% of the
    run (short compute-matched runs keep a real decay)."""
    from lm_experiments.optim import OptimConfig

    sec = dataclasses.replace(section, **overrides) if overrides else section
    return OptimConfig(lr=sec.lr, min_lr=sec.floor(sec.lr), warmup_steps=min(sec.warmup_steps, steps // 10),
                       weight_decay=sec.weight_decay)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


_sealed_main = main_process_only(sealed)


def _write_result(d: Path, result: dict[str, Any]) -> None:
    """``result.json`` of run directory ``d`` with the integrity record of its files, last."""
    atomic_write_json(d / "result.json", {**result, "integrity": _sealed_main(d)})


def _finished(stage: str, d: Path) -> StageResult | None:
    """The finished run in ``d``; None when it is not finished or damaged (reported in one
    line on rank 0: the caller then redoes it)."""
    if not (d / "result.json").exists():
        return None
    rec, why = read_run(d)
    if why is not None:
        if distributed.is_main():
            integrity.report(why, f"redoing {stage} run {d.name}")
        return None
    return StageResult(stage, d, bool(rec["diverged"]), rec.get("losses", {}), rec)


def train_summary(res: Any, source: PlannedSource | None, optim: Any) -> dict[str, Any]:
    """A run's training record: steps, tokens (seen, by source), throughput, early stopping."""
    optim_d = dataclasses.asdict(optim) if optim is not None else {}
    if res is None:
        return {"steps": 0, "tokens": 0, "tokens_by_source": {}, "wall_s": 0.0, "tokens_per_s": None,
                "diverged": False, "stopped_early": False, "optim": optim_d}
    planned = source.tokens_by_source() if source is not None else {}
    seen = {}  # tokens actually seen by source, when training stopped before the plan's end
    if source is not None:
        n_slots = min(res.steps * source.batch_size, source.num_slots)
        codes = np.bincount(source.sources[:n_slots].astype(np.int64), minlength=3)
        seen = {name: int(codes[c]) * source.seq_len for c, name in ((0, "pre"), (1, "post"), (2, "ft"))
                if codes[c]}
    return {"steps": res.steps, "tokens": res.tokens, "tokens_by_source": seen,
            "planned_tokens_by_source": planned, "wall_s": res.wall_s, "eval_s": res.eval_s,
            "tokens_per_s": res.tokens_per_s, "diverged": res.diverged, "stopped_early": res.stopped_early,
            "best_step": res.best_step, "best_val": res.best_val, "resumed_from": res.resumed_from,
            "planned_steps": len(source) if source is not None else 0, "optim": optim_d,
            **res.compute_summary(), "history": res.history}


# ---- pretraining ------------------------------------------------------------------------
@collective_stage
def run_pre(ctx: StageContext, r: PreRun) -> StageResult:
    """Pretrain on D_pre with ``r.mix_fraction`` of D_post spread through the budget (Sec. 4.1)."""
    d = pre_dir(ctx.out, r)
    done = _finished("pre", d)
    if done is not None:
        return done
    from lm_experiments.model import build_model

    sec = ctx.cfg.pre
    mixed, _ = split_post_blocks(len(ctx.post_idx), r.mix_fraction, seed=r.seed)
    source = pretrain_source(ctx.pools["pre"], ctx.pools["post"], ctx.post_idx[mixed],
                             tokens=sec.tokens, batch_size=sec.batch_size, seed=r.seed)
    model = build_model(ctx.cfg.model.preset, vocab_size=len(ctx.prepared.tokenizer),
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
        ctx.save_model(model, d / "model", {"stage": "pre", "pre_id": r.pre_id, "seed": r.seed,
                                            "mix_fraction": r.mix_fraction})
        result["model_dir"] = "model"
    _write_result(d, result)
    _remove_train_state(d)
    return StageResult("pre", d, bool(res.diverged), losses, result)


# ---- post-training ----------------------------------------------------------------------
@collective_stage
def run_post(ctx: StageContext, r: PostRun) -> StageResult:
    """Post-train theta_pre on D_post with ``r.setting`` and early stopping (Secs. 4.1-4.4),
    or one epoch over the D_post blocks pretraining did not see (compute-matched, Sec. 4.2)."""
    d = post_dir(ctx.out, r)
    done = _finished("post", d)
    if done is not None:
        return done
    sec, st = ctx.cfg.post, r.setting
    base = {"stage": "post", "upstream_id": r.upstream_id, "pre_id": r.pre.pre_id, "seed": r.pre.seed,
            "mix_fraction": r.pre.mix_fraction, "compute_matched": r.compute_matched, "setting": st.as_dict(),
            "data_fingerprint": ctx.prepared.fingerprint}
    upstream = _finished("pre", pre_dir(ctx.out, r.pre))
    if upstream is None:
        raise RuntimeError(f"post-training {r.upstream_id} needs its pretraining run {r.pre.pre_id} first")
    if upstream.diverged:
        result = {**base, "diverged": True, "reason": "stage 1 diverged", "losses": {}, "model_dir": None}
        _write_result(d, result)
        return StageResult("post", d, True, {}, result)
    from lm_experiments.model import apply_lora, merge_lora, set_dropout

    t0 = time.time()
    model = ctx.load(pre_dir(ctx.out, r.pre) / "model")
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
                        on_eval=_trajectory_saver(ctx, d, r) if r.trajectory else None)
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
        atomic_write_bytes(d / "eval_post.npz", _npz_bytes(**arrays))
        ctx.save_model(model, d / "model", {"stage": "post", "upstream_id": r.upstream_id, "setting": st.as_dict(),
                                            "compute_matched": r.compute_matched})
        result["model_dir"], result["eval_npz"] = "model", "eval_post.npz"
    _write_result(d, result)
    _remove_train_state(d)
    return StageResult("post", d, diverged, losses, result)


def _trajectory_saver(ctx: StageContext, d: Path, r: PostRun) -> Any:
    """``on_eval`` of a post-training run of the matched-L_im study: the model at this
    evaluation and its losses (validation: what early stopping saw; L_im on the reported
    split) under ``trajectory/step-NNNNNN/`` (meta.json last; a resumed run rewrites it)."""
    def save(step: int, model: Any, val: float) -> None:
        sd = d / "trajectory" / f"step-{step:06d}"
        ctx.save_model(model, sd / "model", {"stage": "post-trajectory", "upstream_id": r.upstream_id, "step": step})
        atomic_write_json(sd / "meta.json", {"step": step, "val_loss": val,
                                             "L_im": ctx.evaluate(model, "post").mean_loss})
    return save


def trajectory_checkpoints(post_run_dir: Path, best_step: int | None, k: int) -> list[dict[str, Any]]:
    """The saved stage-2 checkpoints up to and including the early-stopping one (later ones
    are the overfitting tail early stopping discards), thinned to at most ``k`` evenly spaced
    ones that keep the first and the last."""
    metas = []
    for p in sorted((post_run_dir / "trajectory").glob("step-*/meta.json")):
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
    d = traj_dir(ctx.out, r)
    done = _finished("traj", d)
    if done is not None:
        return done
    post_up = _finished("post", post_dir(ctx.out, r.post))
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
        _write_result(d, result)
        return StageResult("traj", d, True, {}, result)
    t0 = time.time()
    pdir = post_dir(ctx.out, r.post)
    best = (post_up.record.get("train") or {}).get("best_step")
    ckpts = trajectory_checkpoints(pdir, best, r.max_checkpoints)
    if not ckpts:
        raise RuntimeError(f"post-training run {r.post.upstream_id} saved no trajectory (its result predates the "
                           "matched study?): delete its directory to rerun it")
    run_seed = int_seed(seed, "torch", "stage3", ft_key(ctx.cfg, r.post.upstream_id, r.ft_lr))
    for i, m in enumerate(ckpts):
        sd = d / f"step-{m['step']:06d}"
        if (sd / "result.json").is_file():
            row, why = integrity.read_json(sd / "result.json")
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
        atomic_write_json(sd / "result.json", row)
        _remove_train_state(sd)
        rows.append(row)
    result = {**base, "diverged": False, "best_step": best, "rows": rows, "wall_s": time.time() - t0}
    _write_result(d, result)
    return StageResult("traj", d, False, {}, result)


# ---- fine-tuning ------------------------------------------------------------------------
def _strip(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stage's training summary without its per-step history (kept in the stage dirs)."""
    return None if summary is None else {k: v for k, v in summary.items() if k != "history"}


@collective_stage
def run_ft(ctx: StageContext, r: FtRun) -> StageResult:
    """Fine-tune theta_post on D_ft at ``r.ft_lr`` for the fixed budget; measure the four losses."""
    d = ft_dir(ctx.out, r)
    done = _finished("ft", d)
    if done is not None:
        return done
    sec, st = ctx.cfg.ft, r.post.setting
    pre_up, post_up = _finished("pre", pre_dir(ctx.out, r.post.pre)), _finished("post", post_dir(ctx.out, r.post))
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
    diverged = bool(post_result["diverged"])
    reason = "upstream diverged" if diverged else None
    source = finetune_source(ctx.pools["ft"], tokens=sec.tokens, batch_size=sec.batch_size, seed=r.post.pre.seed)
    if not diverged:
        from lm_experiments.evaluate import layerwise_change

        theta_post = ctx.load(post_dir(ctx.out, r.post) / "model")
        model = ctx.load(post_dir(ctx.out, r.post) / "model")
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
            up = np.load(post_dir(ctx.out, r.post) / "eval_post.npz")
            atomic_write_bytes(d / "eval.npz", _npz_bytes(
                post_loss_stage2=up["post_loss_stage2"], post_correct_stage2=up["post_correct_stage2"],
                post_loss_stage3=np.asarray(ev_post.per_example, dtype=np.float32),
                post_correct_stage3=np.asarray(ev_post.correct, dtype=bool),
                ft_loss_stage3=np.asarray(ev_ft.per_example, dtype=np.float32),
                pre_loss_stage3=np.asarray(ev_pre.per_example, dtype=np.float32)))
            layerwise = layerwise_change(theta_post, model)
            if sec.save_checkpoints:
                ctx.save_model(model, d / "model", {"stage": "ft", "run_id": r.run_id})
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
              "files": {"eval_npz": "eval.npz" if (d / "eval.npz").exists() else None,
                        "theta_pre": str(Path("..", "..", "upstream", f"pre-{r.post.pre.pre_id}", "model")),
                        "theta_post": str(Path("..", "..", "upstream", f"post-{r.post.upstream_id}", "model"))}}
    _write_result(d, result)
    _remove_train_state(d)
    return StageResult("ft", d, bool(diverged), all_losses, result)


#: stage name -> its function (what an executor dispatches on)
STAGE_FUNCTIONS = {"pre": run_pre, "post": run_post, "ft": run_ft, "traj": run_traj}
