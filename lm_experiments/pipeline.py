"""The paper's three-stage protocol over a sweep (arXiv 2605.12705, Secs. 3-4).

For every seed and mixing fraction lambda, stage 1 pretrains once on D_pre with lambda of
D_post spread through the budget (Sec. 4.1). From every theta_pre, each stage-2 setting
(lr x dropout x batch x replay x LoRA, plus extras) post-trains on D_post with early
stopping on D_post validation loss; compute-matched runs (Sec. 4.2) post-train one epoch
over the part of D_post that stage 1 did not see. Every theta_post is fine-tuned on D_ft
at each stage-3 learning rate for a fixed token budget. The four losses of the paper are
measured on fixed held-out sets (the same tokens for every run):

    L_im  = L(theta_post; D_post)    L_ret = L(theta_ft; D_post)
    L_ft  = L(theta_ft; D_ft)        L_pre = L(theta_ft; D_pre)

plus the losses right after stage 1. Output layout (a pure function of the config)::

    OUT/manifest.json                       resolved config, plan, status, data, provenance
    OUT/frontier.csv                        shared schema (early_exposure.frontier), side=lm; written
                                            when the sweep is complete (frontier.partial.csv before)
    OUT/upstream/pre-<pre_id>/              theta_pre (model/, loadable by from_pretrained), result.json
    OUT/upstream/post-<upstream_id>/        theta_post (model/), result.json, eval_post.npz
    OUT/runs/<run_id>/result.json           one stage-3 run: config, seed, tokens/wall/tok-s per
                                            stage, losses, layer-wise change, provenance
    OUT/runs/<run_id>/eval.npz              per-example D_post losses and top-1 correctness after
                                            stages 2 and 3; per-example D_ft and D_pre losses

Every stage is keyed by a stable hash of everything that determines it; a stage whose
``result.json`` exists is skipped on rerun, an interrupted stage resumes from the engine's
checkpoint (``train_state/``), and a stage whose loss turns non-finite is recorded as
diverged (its descendants too) while the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.frontier import make_row, method_name, write_frontier
from early_exposure.io import atomic_write_bytes, atomic_write_json, stable_hash
from early_exposure.provenance import provenance
from lm_experiments.config import PipelineConfig
from lm_experiments.schedules import (
    PlannedSource,
    finetune_source,
    posttrain_source,
    pretrain_source,
    split_post_blocks,
    stage_rng,
)

#: Fixed seed of the D_post subset (``stage2.post_train_tokens``): the same D_post for every
#: root seed, as the paper's D_post is one fixed dataset.
POST_SUBSET_SEED = 20_605_127


# --------------------------------------------------------------------------------------
# The plan: which runs, keyed how
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreRun:
    """One stage-1 pretraining (seed, lambda)."""

    seed: int
    mix_fraction: float
    pre_id: str


@dataclass(frozen=True)
class PostRun:
    """One stage-2 post-training from ``pre`` with ``setting`` (lr, dropout, batch_size,
    replay, lora); ``upstream_id`` hashes stage 1 + stage 2."""

    pre: PreRun
    setting: dict[str, Any]
    compute_matched: bool
    upstream_id: str


@dataclass(frozen=True)
class FtRun:
    """One stage-3 fine-tuning of ``post`` at ``ft_lr``; ``run_id`` hashes the whole chain."""

    post: PostRun
    ft_lr: float
    run_id: str


@dataclass
class Plan:
    """All runs of a sweep, the data sizes they were checked against, and token counts."""

    pre: list[PreRun]
    post: list[PostRun]
    ft: list[FtRun]
    sizes: dict[str, int]
    tokens: dict[str, int] = field(default_factory=dict)


def _post_subset(num_post: int, post_train_tokens: int | None, seq_len: int) -> np.ndarray:
    """Indices of the D_post training blocks in use (a fixed subset when capped)."""
    if post_train_tokens is None:
        return np.arange(num_post, dtype=np.int64)
    keep = post_train_tokens // seq_len
    perm = stage_rng(POST_SUBSET_SEED, "post-subset").permutation(num_post)
    return np.sort(perm[:keep]).astype(np.int64)


def check_budgets(cfg: PipelineConfig, sizes: dict[str, int]) -> None:
    """Check that the prepared data can serve every requested budget (before training).

    ``sizes`` holds ``pre``, ``post``, ``ft`` (training blocks available), ``*_val``
    (validation blocks) and ``seq_len``. Raises ``ConfigError`` naming the field to change.
    """
    T = sizes["seq_len"]
    for role in ("pre", "post", "ft"):
        if sizes[role] < 1:
            raise ConfigError(f"data.{role}", f"D_{role} has no training blocks of {T} tokens; "
                              "use a larger corpus or a shorter data.seq_len")
        if sizes[f"{role}_val"] < 1:
            raise ConfigError(f"data.{role}", f"D_{role} has no validation blocks; use a larger corpus")
    avail = sizes["post"] * T
    s2 = cfg.stage2
    if s2.post_train_tokens is not None:
        if s2.post_train_tokens > avail:
            raise ConfigError("stage2.post_train_tokens",
                              f"D_post has only {avail} training tokens ({sizes['post']} blocks of {T}); "
                              f"ask for at most {avail} or use a larger D_post (data.post)")
        if s2.post_train_tokens < T:
            raise ConfigError("stage2.post_train_tokens", f"must be at least one block ({T} tokens)")
    n_post = s2.post_train_tokens // T if s2.post_train_tokens is not None else sizes["post"]
    s1 = cfg.stage1
    slots = (s1.tokens // (s1.batch_size * T)) * s1.batch_size
    if slots < 1:
        raise ConfigError("stage1.tokens", f"must hold at least one batch ({s1.batch_size} x {T} tokens), "
                          f"got {s1.tokens}")
    for lam in cfg.stage1_fractions:
        need = int(round(lam * n_post))
        if need > slots:
            raise ConfigError("stage1.tokens",
                              f"lambda={lam} mixes {need} D_post blocks but the budget has only {slots} "
                              f"sequences; raise stage1.tokens to >= {need * T} or lower the fraction")
    batch_sizes = [st["batch_size"] for st in s2.settings()]
    if n_post < max(batch_sizes):
        raise ConfigError("stage2.batch_size",
                          f"D_post has {n_post} training blocks, fewer than one batch of {max(batch_sizes)}; "
                          "use a larger D_post or a smaller batch")
    if s2.max_tokens is not None and s2.max_tokens < T * max(batch_sizes):
        raise ConfigError("stage2.max_tokens", f"must allow at least one batch ({max(batch_sizes)} x {T} tokens)")
    s3 = cfg.stage3
    if s3.tokens // (s3.batch_size * T) < 1:
        raise ConfigError("stage3.tokens", f"must hold at least one batch ({s3.batch_size} x {T} tokens), "
                          f"got {s3.tokens}")


def make_plan(cfg: PipelineConfig, sizes: dict[str, int], fingerprint: str) -> Plan:
    """Enumerate and key every run. Keys hash everything that determines a stage's output."""
    check_budgets(cfg, sizes)
    T = sizes["seq_len"]
    n_post = len(_post_subset(sizes["post"], cfg.stage2.post_train_tokens, T))
    s1 = to_dict(cfg.stage1)
    s1.pop("mix_fractions")
    s1.pop("checkpoint_every")
    s2_shared = {k: v for k, v in to_dict(cfg.stage2).items()
                 if k not in ("lr", "dropout", "batch_size", "replay", "lora", "extra", "compute_matched",
                              "checkpoint_every")}
    s3 = {k: v for k, v in to_dict(cfg.stage3).items() if k not in ("lrs", "checkpoint_every", "save_checkpoints")}
    pres: list[PreRun] = []
    posts: list[PostRun] = []
    fts: list[FtRun] = []
    tok1 = tok2 = tok3 = 0
    for seed in cfg.seeds:
        for lam in cfg.stage1_fractions:
            pre_key = {"data": fingerprint, "model": to_dict(cfg.model), "precision": cfg.precision,
                       "stage1": s1, "mix_fraction": lam, "seed": seed, "n_post": n_post}
            pre = PreRun(seed=seed, mix_fraction=lam, pre_id=stable_hash(pre_key))
            pres.append(pre)
            tok1 += (s1["tokens"] // (s1["batch_size"] * T)) * s1["batch_size"] * T
            chains: list[tuple[dict[str, Any], bool]] = []
            if lam in cfg.stage1.mix_fractions:
                chains += [(st, False) for st in cfg.stage2.settings()]
            if lam in cfg.stage2.compute_matched:
                chains.append((cfg.stage2.base, True))
            for setting, cm in chains:
                post_key = {"pre": pre.pre_id, "setting": setting, "compute_matched": cm, "stage2": s2_shared}
                post = PostRun(pre=pre, setting=dict(setting), compute_matched=cm, upstream_id=stable_hash(post_key))
                posts.append(post)
                tok2 += _stage2_tokens(cfg, n_post, lam, setting, cm) * T
                for ft_lr in cfg.stage3.lrs:
                    run_key = {"upstream": post.upstream_id, "ft_lr": ft_lr, "stage3": s3}
                    fts.append(FtRun(post=post, ft_lr=ft_lr, run_id=stable_hash(run_key)))
                    tok3 += (s3["tokens"] // (s3["batch_size"] * T)) * s3["batch_size"] * T
    return Plan(pre=pres, post=posts, ft=fts, sizes={**sizes, "post_used": n_post},
                tokens={"stage1": tok1, "stage2_max": tok2, "stage3": tok3})


def _stage2_tokens(cfg: PipelineConfig, n_post: int, lam: float, setting: dict[str, Any], cm: bool) -> int:
    """Upper bound on the sequences a stage-2 run trains on (early stopping may end sooner)."""
    if cm:
        n = n_post - int(round(lam * n_post))
        epochs = 1
    else:
        n, epochs = n_post, cfg.stage2.max_epochs
    if n == 0:
        return 0
    r = setting["replay"]
    per_epoch = n + int(round(r * n / (1.0 - r)))
    total = per_epoch * epochs
    if cfg.stage2.max_tokens is not None:
        total = min(total, cfg.stage2.max_tokens // cfg.data.seq_len)
    return total


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def _sizes(prepared: Any) -> dict[str, int]:
    sp = prepared.splits
    return {"pre": int(sp["pre"].train.shape[0]), "post": int(sp["post"].train.shape[0]),
            "ft": int(sp["ft"].train.shape[0]), "pre_val": int(sp["pre"].val.shape[0]),
            "post_val": int(sp["post"].val.shape[0]), "ft_val": int(sp["ft"].val.shape[0]),
            "seq_len": int(sp["pre"].train.shape[1])}


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _torch_seed(seed: int, *tags: Any) -> int:
    """Seed of the training RNG (dropout) of one stage, derived from the root seed."""
    return int(stage_rng(seed, "torch", *tags).integers(2**31 - 1))


def _warmup(configured: int, steps: int) -> int:
    """Warmup capped at 10% of the run (short compute-matched runs keep a real decay)."""
    return min(configured, steps // 10)


class Runner:
    """Executes a :class:`Plan` into ``out_dir`` (skip finished, resume interrupted)."""

    def __init__(self, cfg: PipelineConfig, prepared: Any, out_dir: Path, *, device: Any,
                 data_used: dict[str, Any], plan: Plan, progress: bool = True) -> None:
        self.cfg = cfg
        self.prepared = prepared
        self.out = Path(out_dir)
        self.device = device
        self.progress = progress
        self.data_used = data_used
        self.sizes = _sizes(prepared)
        self.plan = plan
        self.last_optim: dict[str, Any] = {}
        sp = prepared.splits
        self.pools = {"pre": sp["pre"].train, "post": sp["post"].train, "ft": sp["ft"].train}
        self.val = {"pre": sp["pre"].val, "post": sp["post"].val, "ft": sp["ft"].val}
        self.post_idx = _post_subset(self.sizes["post"], cfg.stage2.post_train_tokens, self.sizes["seq_len"])
        self.pipeline = cfg.pipeline_label(data_used["config"])
        self.provenance = provenance()
        self.config_dict = to_dict(cfg)

    # ---- paths ----------------------------------------------------------------------
    def pre_dir(self, r: PreRun) -> Path:
        return self.out / "upstream" / f"pre-{r.pre_id}"

    def post_dir(self, r: PostRun) -> Path:
        return self.out / "upstream" / f"post-{r.upstream_id}"

    def run_dir(self, r: FtRun) -> Path:
        return self.out / "runs" / r.run_id

    # ---- helpers --------------------------------------------------------------------
    def _evaluate(self, model: Any, role: str, *, correct: bool = False) -> Any:
        from lm_experiments.evaluate import evaluate

        return evaluate(model, self.val[role], batch_size=self.cfg.eval.batch_size, device=self.device,
                        precision=self.cfg.precision, return_correct=correct)

    def _load(self, path: Path) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path)
        return model.to(self.device)

    def _save_model(self, model: Any, path: Path, extra: dict[str, Any]) -> None:
        from lm_experiments.evaluate import save_checkpoint

        save_checkpoint(model, self.prepared.tokenizer, path, extra)

    def _train(self, model: Any, source: PlannedSource, *, lr: float, min_lr: float, warmup: int,
               weight_decay: float, ckpt_dir: Path, seed: int, desc: str, checkpoint_every: int,
               eval_fn: Callable[[Any], float] | None = None, eval_every: int = 0,
               patience: int | None = None) -> Any:
        from lm_experiments.train import OptimConfig, train

        optim = OptimConfig(lr=lr, min_lr=min_lr, warmup_steps=_warmup(warmup, len(source)),
                            weight_decay=weight_decay)
        self.last_optim = dataclasses.asdict(optim)  # effective settings, recorded with the result
        return train(model, source, optim=optim, ckpt_dir=ckpt_dir, device=self.device,
                     precision=self.cfg.precision, eval_fn=eval_fn, eval_every=eval_every, patience=patience,
                     checkpoint_every=checkpoint_every, desc=desc, seed=seed,
                     micro_batch=self.cfg.micro_batch, progress=self.progress)

    @staticmethod
    def _train_summary(res: Any, source: PlannedSource | None, optim: dict[str, Any]) -> dict[str, Any]:
        if res is None:
            return {"steps": 0, "tokens": 0, "tokens_by_source": {}, "wall_s": 0.0, "tokens_per_s": None,
                    "diverged": False, "stopped_early": False, "optim": optim}
        planned = source.tokens_by_source() if source is not None else {}
        # tokens actually seen by source, when training stopped before the plan's end
        seen = {}
        if source is not None:
            n_slots = min(res.steps * source.batch_size, source.num_slots)
            codes = np.bincount(source.sources[:n_slots].astype(np.int64), minlength=3)
            seen = {name: int(codes[c]) * source.seq_len for c, name in ((0, "pre"), (1, "post"), (2, "ft"))
                    if codes[c]}
        return {"steps": res.steps, "tokens": res.tokens, "tokens_by_source": seen,
                "planned_tokens_by_source": planned, "wall_s": res.wall_s, "eval_s": res.eval_s,
                "tokens_per_s": res.tokens_per_s, "diverged": res.diverged, "stopped_early": res.stopped_early,
                "best_step": res.best_step, "best_val": res.best_val, "resumed_from": res.resumed_from,
                "planned_steps": len(source) if source is not None else 0, "optim": optim,
                "history": res.history}

    # ---- stage 1 --------------------------------------------------------------------
    def run_pre(self, r: PreRun) -> dict[str, Any]:
        d = self.pre_dir(r)
        if (d / "result.json").exists():
            return json.loads((d / "result.json").read_text())
        from lm_experiments.model import build_model

        cfg = self.cfg
        mixed, _ = split_post_blocks(len(self.post_idx), r.mix_fraction, seed=r.seed)
        source = pretrain_source(self.pools["pre"], self.pools["post"], self.post_idx[mixed],
                                 tokens=cfg.stage1.tokens, batch_size=cfg.stage1.batch_size, seed=r.seed)
        model = build_model(cfg.model.preset, vocab_size=len(self.prepared.tokenizer),
                            max_seq_len=self.sizes["seq_len"], seed=r.seed).to(self.device)
        t0 = time.time()
        res = self._train(model, source, lr=cfg.stage1.lr, min_lr=cfg.stage1.min_lr, warmup=cfg.stage1.warmup_steps,
                          weight_decay=cfg.stage1.weight_decay, ckpt_dir=d / "train_state",
                          seed=_torch_seed(r.seed, "stage1", r.pre_id), desc=f"stage1 lam={r.mix_fraction}",
                          checkpoint_every=cfg.stage1.checkpoint_every)
        losses: dict[str, float] = {}
        if not res.diverged:
            for role in ("post", "pre", "ft"):
                losses[f"L_{role}_stage1"] = self._evaluate(model, role).mean_loss
            if not all(math.isfinite(v) for v in losses.values()):
                res.diverged = True
        result = {"stage": 1, "pre_id": r.pre_id, "seed": r.seed, "mix_fraction": r.mix_fraction,
                  "diverged": res.diverged, "losses": losses,
                  "train": self._train_summary(res, source, self.last_optim),
                  "mixed_post_blocks": int(len(mixed)), "wall_s": time.time() - t0,
                  "data_fingerprint": self.prepared.fingerprint, "model_dir": None}
        if not res.diverged:
            self._save_model(model, d / "model", {"stage": 1, "pre_id": r.pre_id, "seed": r.seed,
                                                   "mix_fraction": r.mix_fraction})
            result["model_dir"] = "model"
        atomic_write_json(d / "result.json", result)
        shutil.rmtree(d / "train_state", ignore_errors=True)
        return result

    # ---- stage 2 --------------------------------------------------------------------
    def run_post(self, r: PostRun, pre_result: dict[str, Any]) -> dict[str, Any]:
        d = self.post_dir(r)
        if (d / "result.json").exists():
            return json.loads((d / "result.json").read_text())
        cfg, s2, st = self.cfg, self.cfg.stage2, r.setting
        base = {"stage": 2, "upstream_id": r.upstream_id, "pre_id": r.pre.pre_id, "seed": r.pre.seed,
                "mix_fraction": r.pre.mix_fraction, "compute_matched": r.compute_matched, "setting": st,
                "data_fingerprint": self.prepared.fingerprint}
        if pre_result["diverged"]:
            result = {**base, "diverged": True, "reason": "stage 1 diverged", "losses": {}, "model_dir": None}
            atomic_write_json(d / "result.json", result)
            return result
        from lm_experiments.model import apply_lora, merge_lora, set_dropout

        t0 = time.time()
        model = self._load(self.pre_dir(r.pre) / "model")
        if r.compute_matched:
            _, rest = split_post_blocks(len(self.post_idx), r.pre.mix_fraction, seed=r.pre.seed)
            post_indices, epochs, patience = self.post_idx[rest], 1, None
        else:
            post_indices, epochs, patience = self.post_idx, s2.max_epochs, s2.patience
        res, source = None, None
        if len(post_indices) > 0:  # compute-matched lambda = 1: nothing left for stage 2
            source = posttrain_source(self.pools["post"], post_indices, self.pools["pre"], epochs=epochs,
                                      replay=st["replay"], batch_size=st["batch_size"], seed=r.pre.seed,
                                      max_tokens=s2.max_tokens)
            if st["lora"]:
                import torch

                # peft initialises the adapters from the global torch RNG: seed it from the root
                # seed (and restore it) so a LoRA run does not depend on what ran before it
                cuda = [self.device.index or 0] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    torch.manual_seed(_torch_seed(r.pre.seed, "lora-init", r.upstream_id))
                    model = apply_lora(model, rank=s2.lora_rank, alpha=s2.lora_alpha, dropout=st["dropout"])
            else:
                set_dropout(model, st["dropout"])
            steps_per_epoch = math.ceil(len(post_indices) / st["batch_size"])
            eval_every = max(1, round(s2.eval_every_epochs * steps_per_epoch))
            res = self._train(model, source, lr=st["lr"], min_lr=s2.min_lr, warmup=s2.warmup_steps,
                              weight_decay=s2.weight_decay, ckpt_dir=d / "train_state",
                              seed=_torch_seed(r.pre.seed, "stage2", r.upstream_id),
                              desc=f"stage2 lam={r.pre.mix_fraction} {_short(st)}{' cm' if r.compute_matched else ''}",
                              checkpoint_every=s2.checkpoint_every,
                              eval_fn=lambda m: self._evaluate(m, "post").mean_loss,
                              eval_every=eval_every, patience=patience)
            if st["lora"]:
                model = merge_lora(model)
            set_dropout(model, 0.0)
        diverged = bool(res is not None and res.diverged)
        losses: dict[str, float] = {}
        arrays: dict[str, np.ndarray] = {}
        if not diverged:
            ev_post = self._evaluate(model, "post", correct=True)
            losses["L_im"] = ev_post.mean_loss
            losses["L_pre_stage2"] = self._evaluate(model, "pre").mean_loss
            losses["L_ft_stage2"] = self._evaluate(model, "ft").mean_loss
            diverged = not all(math.isfinite(v) for v in losses.values())
            arrays = {"post_loss_stage2": np.asarray(ev_post.per_example, dtype=np.float32),
                      "post_correct_stage2": np.asarray(ev_post.correct, dtype=bool)}
        result = {**base, "diverged": diverged, "losses": losses,
                  "train": self._train_summary(res, source, self.last_optim if res is not None else {}),
                  "post_blocks": int(len(post_indices)), "epochs_allowed": epochs,
                  "wall_s": time.time() - t0, "model_dir": None, "eval_npz": None}
        if not diverged:
            atomic_write_bytes(d / "eval_post.npz", _npz_bytes(**arrays))
            self._save_model(model, d / "model", {"stage": 2, "upstream_id": r.upstream_id, "setting": st,
                                                   "compute_matched": r.compute_matched})
            result["model_dir"], result["eval_npz"] = "model", "eval_post.npz"
        atomic_write_json(d / "result.json", result)
        shutil.rmtree(d / "train_state", ignore_errors=True)
        return result

    # ---- stage 3 --------------------------------------------------------------------
    def run_ft(self, r: FtRun, pre_result: dict[str, Any], post_result: dict[str, Any]) -> dict[str, Any]:
        d = self.run_dir(r)
        if (d / "result.json").exists():
            return json.loads((d / "result.json").read_text())
        cfg, s3 = self.cfg, self.cfg.stage3
        st = r.post.setting
        method = method_name(mixed=r.post.pre.mix_fraction > 0, replay=st["replay"] > 0,
                             dropout=st["dropout"] > 0, lora=bool(st["lora"]))
        base = {"run_id": r.run_id, "upstream_id": r.post.upstream_id, "pre_id": r.post.pre.pre_id,
                "seed": r.post.pre.seed, "pipeline": self.pipeline, "method": method,
                "mix_fraction": r.post.pre.mix_fraction, "compute_matched": r.post.compute_matched,
                "post_hparams": st, "ft_lr": r.ft_lr,
                "data_fingerprint": self.prepared.fingerprint, "data": self.data_used["summary"],
                "config": self.config_dict, "provenance": self.provenance}
        t0 = time.time()
        res, source = None, None
        losses: dict[str, float] = {}
        layerwise: dict[str, float] = {}
        diverged = bool(post_result["diverged"])
        reason = "upstream diverged" if diverged else None
        source = finetune_source(self.pools["ft"], tokens=s3.tokens, batch_size=s3.batch_size,
                                 seed=r.post.pre.seed)
        if not diverged:
            from lm_experiments.evaluate import layerwise_change

            theta_post = self._load(self.post_dir(r.post) / "model")
            model = self._load(self.post_dir(r.post) / "model")
            res = self._train(model, source, lr=r.ft_lr, min_lr=s3.min_lr_ratio * r.ft_lr, warmup=s3.warmup_steps,
                              weight_decay=s3.weight_decay, ckpt_dir=d / "train_state",
                              seed=_torch_seed(r.post.pre.seed, "stage3", r.run_id),
                              desc=f"stage3 lr={r.ft_lr:g}", checkpoint_every=s3.checkpoint_every)
            diverged = res.diverged
            reason = "stage 3 diverged" if diverged else None
        if not diverged:
            ev_post = self._evaluate(model, "post", correct=True)
            ev_ft = self._evaluate(model, "ft")
            ev_pre = self._evaluate(model, "pre")
            losses = {"L_im": post_result["losses"]["L_im"], "L_ret": ev_post.mean_loss, "L_ft": ev_ft.mean_loss,
                      "L_pre": ev_pre.mean_loss}
            if not all(math.isfinite(v) for v in losses.values()):
                diverged, reason = True, "non-finite evaluation loss"
            else:
                up = np.load(self.post_dir(r.post) / "eval_post.npz")
                atomic_write_bytes(d / "eval.npz", _npz_bytes(
                    post_loss_stage2=up["post_loss_stage2"], post_correct_stage2=up["post_correct_stage2"],
                    post_loss_stage3=np.asarray(ev_post.per_example, dtype=np.float32),
                    post_correct_stage3=np.asarray(ev_post.correct, dtype=bool),
                    ft_loss_stage3=np.asarray(ev_ft.per_example, dtype=np.float32),
                    pre_loss_stage3=np.asarray(ev_pre.per_example, dtype=np.float32)))
                layerwise = layerwise_change(theta_post, model)
                if s3.save_checkpoints:
                    self._save_model(model, d / "model", {"stage": 3, "run_id": r.run_id})
        # the frontier's four losses (NaN where a stage diverged), after the earlier stages' losses
        row = {"L_im": post_result.get("losses", {}).get("L_im", float("nan")), "L_ret": float("nan"),
               "L_ft": float("nan"), "L_pre": float("nan")}
        if not diverged:
            row.update(losses)
        all_losses = {**pre_result.get("losses", {}), **post_result.get("losses", {}), **row}
        s3_summary = self._train_summary(res, source, self.last_optim if res is not None else {})
        result = {**base, "diverged": diverged, "reason": reason, "losses": all_losses,
                  "ft_budget": source.num_tokens,
                  "tokens": {"stage1": pre_result.get("train", {}).get("tokens_by_source", {}),
                             "stage2": post_result.get("train", {}).get("tokens_by_source", {}),
                             "stage3": s3_summary["tokens_by_source"]},
                  "stages": {"stage1": _strip(pre_result.get("train")), "stage2": _strip(post_result.get("train")),
                             "stage3": _strip(s3_summary)},
                  "wall_s": {"stage1": pre_result.get("wall_s"), "stage2": post_result.get("wall_s"),
                             "stage3": time.time() - t0},
                  "layerwise_change": layerwise,
                  "files": {"eval_npz": "eval.npz" if (d / "eval.npz").exists() else None,
                            "theta_pre": str(Path("..", "..", "upstream", f"pre-{r.post.pre.pre_id}", "model")),
                            "theta_post": str(Path("..", "..", "upstream", f"post-{r.post.upstream_id}", "model"))}}
        atomic_write_json(d / "result.json", result)
        shutil.rmtree(d / "train_state", ignore_errors=True)
        return result

    # ---- the sweep ------------------------------------------------------------------
    def frontier_rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.plan.ft:
            p = self.run_dir(r) / "result.json"
            if not p.exists():
                continue
            res = json.loads(p.read_text())
            L = res["losses"]
            rows.append(make_row(
                side="lm", pipeline=res["pipeline"], method=res["method"], mix_fraction=res["mix_fraction"],
                compute_matched=res["compute_matched"], upstream_id=res["upstream_id"],
                post_hparams=res["post_hparams"], ft_lr=res["ft_lr"], ft_budget=res["ft_budget"],
                seed=res["seed"], L_im=_nan_if_none(L.get("L_im")), L_ret=_nan_if_none(L.get("L_ret")),
                L_ft=_nan_if_none(L.get("L_ft")), L_pre=_nan_if_none(L.get("L_pre")),
                diverged=res["diverged"], run_id=res["run_id"]))
        return rows

    def manifest(self, status: dict[str, Any], wall_s: float) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "config": self.config_dict, "config_hash": stable_hash(self.config_dict),
                "data": self.data_used["summary"], "data_fingerprint": self.prepared.fingerprint,
                "sizes": self.plan.sizes, "planned_tokens": self.plan.tokens,
                "plan": {"stage1": [p.pre_id for p in self.plan.pre],
                         "stage2": [p.upstream_id for p in self.plan.post],
                         "stage3": [f.run_id for f in self.plan.ft]},
                "status": status, "wall_s": wall_s, "device": str(self.device), "provenance": self.provenance}

    def run(self) -> dict[str, Any]:
        """Run every stage of the plan (skipping finished ones); write frontier + manifest."""
        from tqdm.auto import tqdm
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-load "Loading weights" bars would drown the sweep's bars
        t0 = time.time()
        total = self.plan.tokens["stage1"] + self.plan.tokens["stage2_max"] + self.plan.tokens["stage3"]
        status = {"stage1": {"done": 0, "diverged": 0}, "stage2": {"done": 0, "diverged": 0},
                  "stage3": {"done": 0, "diverged": 0}, "complete": False}
        atomic_write_json(self.out / "manifest.json", self.manifest(status, 0.0))
        bar = tqdm(total=total, desc="pipeline (upper bound)", unit="tok", unit_scale=True,
                   disable=not self.progress, dynamic_ncols=True)
        try:
            for pre in self.plan.pre:
                pre_res = self.run_pre(pre)
                _tally(status["stage1"], pre_res)
                bar.update(_planned(pre_res))
                for post in (p for p in self.plan.post if p.pre is pre):
                    post_res = self.run_post(post, pre_res)
                    _tally(status["stage2"], post_res)
                    bar.update(self.plan_tokens_post(post))
                    for ft in (f for f in self.plan.ft if f.post is post):
                        ft_res = self.run_ft(ft, pre_res, post_res)
                        _tally(status["stage3"], ft_res)
                        bar.update(ft_res["ft_budget"])
                    # partial table while the sweep runs; frontier.csv appears only when complete
                    write_frontier(self.frontier_rows(), self.out / "frontier.partial.csv")
        finally:
            bar.close()
        status["complete"] = True
        write_frontier(self.frontier_rows(), self.out / "frontier.csv")
        (self.out / "frontier.partial.csv").unlink(missing_ok=True)
        manifest = self.manifest(status, time.time() - t0)
        atomic_write_json(self.out / "manifest.json", manifest)
        return manifest

    def plan_tokens_post(self, post: PostRun) -> int:
        return _stage2_tokens(self.cfg, len(self.post_idx), post.pre.mix_fraction, post.setting,
                              post.compute_matched) * self.sizes["seq_len"]


def _planned(pre_res: dict[str, Any]) -> int:
    t = pre_res.get("train") or {}
    return int(sum((t.get("planned_tokens_by_source") or {}).values()))


def _tally(counter: dict[str, int], res: dict[str, Any]) -> None:
    counter["done"] += 1
    counter["diverged"] += int(bool(res.get("diverged")))


def _strip(train_summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stage's training summary without its per-step history (kept in the stage dirs)."""
    if train_summary is None:
        return None
    return {k: v for k, v in train_summary.items() if k != "history"}


def _short(setting: dict[str, Any]) -> str:
    return (f"lr={setting['lr']:g} p={setting['dropout']:g} b={setting['batch_size']} "
            f"r={setting['replay']:g}{' lora' if setting['lora'] else ''}")


# --------------------------------------------------------------------------------------
# Entry point: data, validation, plan, (dry run | run)
# --------------------------------------------------------------------------------------


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


def estimate_seconds(cfg: PipelineConfig, plan: Plan, prepared: Any, device: Any) -> dict[str, float]:
    """Rough wall time of ``plan`` from a quick throughput probe on this machine.

    Three optimizer steps (of ``micro_batch`` rows when set) and two evaluation batches of
    the configured model are timed (after one warm-up each); training tokens are divided by the measured training rate,
    evaluation tokens (all held-out sets after each stage, plus stage-2 early-stopping
    evaluations at most every ``eval_every_epochs``) by the evaluation rate. Stage 2 is an
    upper bound (all ``max_epochs``); early stopping usually ends it sooner.
    """
    import torch

    from lm_experiments.device import autocast_context
    from lm_experiments.model import build_model

    T = plan.sizes["seq_len"]
    model = build_model(cfg.model.preset, vocab_size=len(prepared.tokenizer), max_seq_len=T, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = min(cfg.stage1.batch_size, cfg.micro_batch or cfg.stage1.batch_size)  # one forward's rows
    if device.type == "cpu":  # keep the probe small (a GPU preset dry-run on a CPU must not exhaust memory)
        b = max(1, min(b, 2048 // T))
    x = torch.as_tensor(np.asarray(prepared.splits["pre"].train[:b], dtype=np.int64)).to(device)

    def step() -> None:
        with autocast_context(device, cfg.precision):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t = time.perf_counter()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_tps = 3 * x.numel() / (time.perf_counter() - t)
    be = cfg.eval.batch_size if device.type != "cpu" else max(1, min(cfg.eval.batch_size, 4096 // T))
    xe = torch.as_tensor(np.asarray(prepared.splits["post"].val[:be], dtype=np.int64)).to(device)
    model.eval()
    with torch.no_grad(), autocast_context(device, cfg.precision):
        model(input_ids=xe)
        t = time.perf_counter()
        for _ in range(2):
            model(input_ids=xe)
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_tps = 2 * xe.numel() / (time.perf_counter() - t)
    val_all = (plan.sizes["pre_val"] + plan.sizes["post_val"] + plan.sizes["ft_val"]) * T
    n_es = 0
    for post in plan.post:
        seqs = _stage2_tokens(cfg, plan.sizes["post_used"], post.pre.mix_fraction, post.setting, post.compute_matched)
        per_epoch = max(1, plan.sizes["post_used"] // post.setting["batch_size"])
        every = max(1, round(cfg.stage2.eval_every_epochs * per_epoch))
        n_es += math.ceil(math.ceil(seqs / post.setting["batch_size"]) / every)
    eval_tokens = (len(plan.pre) + len(plan.post) + len(plan.ft)) * val_all + n_es * plan.sizes["post_val"] * T
    train_tokens = plan.tokens["stage1"] + plan.tokens["stage2_max"] + plan.tokens["stage3"]
    return {"train_tokens_per_s": train_tps, "eval_tokens_per_s": eval_tps,
            "train_s": train_tokens / train_tps, "eval_s": eval_tokens / eval_tps,
            "total_s": train_tokens / train_tps + eval_tokens / eval_tps}


def describe_plan(cfg: PipelineConfig, plan: Plan, pipeline: str) -> str:
    """Human-readable plan: runs and tokens per stage."""
    s = plan.sizes
    T = s["seq_len"]
    lines = [f"pipeline {pipeline}: model {cfg.model.preset}, seq_len {T}, seeds {list(cfg.seeds)}",
             f"  data: D_pre {s['pre'] * T:,} train tokens, D_post {s['post_used'] * T:,} used of "
             f"{s['post'] * T:,}, D_ft {s['ft'] * T:,}; held-out {s['pre_val'] * T:,} / {s['post_val'] * T:,} / "
             f"{s['ft_val'] * T:,} tokens",
             f"  stage 1: {len(plan.pre)} runs (lambda {list(cfg.stage1_fractions)}), "
             f"{plan.tokens['stage1']:,} tokens",
             f"  stage 2: {len(plan.post)} runs ({len(cfg.stage2.settings())} settings x "
             f"{len(cfg.stage1.mix_fractions)} lambdas x {len(cfg.seeds)} seeds"
             f" + {len(cfg.stage2.compute_matched) * len(cfg.seeds)} compute-matched), "
             f"at most {plan.tokens['stage2_max']:,} tokens",
             f"  stage 3: {len(plan.ft)} runs (lr {list(cfg.stage3.lrs)}), {plan.tokens['stage3']:,} tokens"]
    return "\n".join(lines)


def run_pipeline(cfg: PipelineConfig, out_dir: Path, *, cache_root: Path | None = None, dry_run: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate, plan and run (or, with ``dry_run``, only print the plan and a time estimate).

    Everything that can reject the input (config, data, budgets, device) runs before the
    first write to ``out_dir``; a ``ConfigError`` leaves ``out_dir`` untouched.
    """
    import torch

    from lm_experiments.device import check_precision, resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision)
    from lm_experiments.model import MODEL_PRESETS

    if cfg.model.preset not in MODEL_PRESETS:
        raise ConfigError("model.preset", f"unknown preset {cfg.model.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    t0 = time.time()
    prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=progress, log=log)
    data_s = time.time() - t0
    if cfg.model.preset not in MODEL_PRESETS:  # a fallback_set may have changed it
        raise ConfigError("model.preset", f"unknown preset {cfg.model.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    check_precision(cfg.precision)
    device = resolve_device(cfg.device)
    sizes = _sizes(prepared)
    plan = make_plan(cfg, sizes, prepared.fingerprint)
    pipeline = cfg.pipeline_label(data_used["config"])
    log(describe_plan(cfg, plan, pipeline))
    log(f"  data preparation: {data_s:.1f} s; device {device}")
    if dry_run:
        est = estimate_seconds(cfg, plan, prepared, device)
        log(f"  estimated time on this machine: {est['total_s'] / 60:.1f} min at most "
            f"(training {est['train_tokens_per_s']:,.0f} tok/s, evaluation {est['eval_tokens_per_s']:,.0f} tok/s; "
            f"stage 2 counted at its max_epochs)")
        return {"dry_run": True, "plan": plan, "estimate": est, "pipeline": pipeline}
    out_dir = Path(out_dir)
    runner = Runner(cfg, prepared, out_dir, device=device, data_used=data_used, plan=plan, progress=progress)
    manifest = runner.run()
    manifest["data_prep_s"] = data_s
    atomic_write_json(out_dir / "manifest.json", manifest)
    st = manifest["status"]
    log(f"done in {manifest['wall_s']:.0f} s (+{data_s:.0f} s data): stage1 {st['stage1']}, stage2 {st['stage2']}, "
        f"stage3 {st['stage3']}; frontier: {out_dir / 'frontier.csv'}")
    return manifest
