"""The plan of a sweep: which runs, keyed how, how many tokens, how long.

For every seed and mixing fraction lambda one pretraining run (:class:`PreRun`); from each,
every post-training setting (:class:`PostRun`, plus the compute-matched runs of Sec. 4.2);
from each, one fine-tuning run per learning rate (:class:`FtRun`). A run record holds
everything that determines its output except the resolved config and the prepared data
(identified by the data fingerprint inside its key), so a run can execute in any process
given only its record, the config and the output directory (:mod:`lm_experiments.protocol.stages`).

Run keys hash everything that determines a stage's output. Their layout (key schema 1) is
kept stable across code versions, so a results directory written earlier resumes rather
than retrains: stage-1 keys hold the section as ``stage1`` with the optimizer fields
inline, stage-2 keys ``setting`` and the non-axis fields of the section as ``stage2``,
stage-3 keys the non-sweep fields as ``stage3``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.io import stable_hash
from early_exposure.seeding import stream
from lm_experiments.config import LORA_TARGETS, PipelineConfig
from lm_experiments.config.post_axes import POST_AXES, PostSetting

#: Fixed seed of the D_post subset (``post.post_train_tokens``): the same D_post for every
#: root seed, as the paper's D_post is one fixed dataset.
POST_SUBSET_SEED = 20_605_127


@dataclass(frozen=True)
class PreRun:
    """One pretraining run (seed, lambda)."""

    seed: int
    mix_fraction: float
    pre_id: str


@dataclass(frozen=True)
class PostRun:
    """One post-training run from ``pre`` with ``setting``; ``upstream_id`` hashes pre + post."""

    pre: PreRun
    setting: PostSetting
    compute_matched: bool
    upstream_id: str
    trajectory: bool = False  # save the model at every stage-2 evaluation (matched-L_im study)


@dataclass(frozen=True)
class FtRun:
    """One fine-tuning run of ``post`` at ``ft_lr``; ``run_id`` hashes the whole chain."""

    post: PostRun
    ft_lr: float
    run_id: str


@dataclass(frozen=True)
class TrajRun:
    """Fine-tuning of the stage-2 trajectory checkpoints of ``post`` at ``ft_lr`` (the
    matched-L_im study, ``matched`` section); ``traj_id`` hashes the chain."""

    post: PostRun
    ft_lr: float
    max_checkpoints: int
    traj_id: str


@dataclass
class Plan:
    """All runs of a sweep, the data sizes they were checked against, and token counts."""

    pre: list[PreRun]
    post: list[PostRun]
    ft: list[FtRun]
    sizes: dict[str, int]
    tokens: dict[str, int] = field(default_factory=dict)
    traj: list[TrajRun] = field(default_factory=list)


def post_subset(num_post: int, post_train_tokens: int | None, seq_len: int) -> np.ndarray:
    """Indices of the D_post training blocks in use (a fixed subset when capped)."""
    if post_train_tokens is None:
        return np.arange(num_post, dtype=np.int64)
    keep = post_train_tokens // seq_len
    perm = stream(POST_SUBSET_SEED, "post-subset").permutation(num_post)
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
    post = cfg.post
    if post.post_train_tokens is not None:
        if post.post_train_tokens > avail:
            raise ConfigError("post.post_train_tokens",
                              f"D_post has only {avail} training tokens ({sizes['post']} blocks of {T}); "
                              f"ask for at most {avail} or use a larger D_post (data.post)")
        if post.post_train_tokens < T:
            raise ConfigError("post.post_train_tokens", f"must be at least one block ({T} tokens)")
    n_post = post.post_train_tokens // T if post.post_train_tokens is not None else sizes["post"]
    pre = cfg.pre
    slots = (pre.tokens // (pre.batch_size * T)) * pre.batch_size
    if slots < 1:
        raise ConfigError("pre.tokens", f"must hold at least one batch ({pre.batch_size} x {T} tokens), "
                          f"got {pre.tokens}")
    for lam in cfg.pre_fractions:
        need = int(round(lam * n_post))
        if need > slots:
            raise ConfigError("pre.tokens",
                              f"lambda={lam} mixes {need} D_post blocks but the budget has only {slots} "
                              f"sequences; raise pre.tokens to >= {need * T} or lower the fraction")
    batch_sizes = [st.batch_size for st in post.settings()]
    if n_post < max(batch_sizes):
        raise ConfigError("post.sweep.batch_size",
                          f"D_post has {n_post} training blocks, fewer than one batch of {max(batch_sizes)}; "
                          "use a larger D_post or a smaller batch")
    if post.max_tokens is not None and post.max_tokens < T * max(batch_sizes):
        raise ConfigError("post.max_tokens", f"must allow at least one batch ({max(batch_sizes)} x {T} tokens)")
    ft = cfg.ft
    if ft.tokens // (ft.batch_size * T) < 1:
        raise ConfigError("ft.tokens", f"must hold at least one batch ({ft.batch_size} x {T} tokens), "
                          f"got {ft.tokens}")


# ---- run keys (key schema 1: see the module docstring) ------------------------------------
def _pre_key_section(cfg: PipelineConfig) -> dict[str, Any]:
    p, o = cfg.pre, cfg.pre.optim
    return {"tokens": p.tokens, "lr": o.lr, "min_lr": o.min_lr, "warmup_steps": o.warmup_steps,
            "batch_size": p.batch_size, "weight_decay": o.weight_decay}


def _post_key_section(cfg: PipelineConfig) -> dict[str, Any]:
    p, o = cfg.post, cfg.post.optim
    return {"min_lr": o.min_lr, "warmup_steps": o.warmup_steps, "weight_decay": o.weight_decay,
            "max_epochs": p.max_epochs, "max_tokens": p.max_tokens, "eval_every_epochs": p.eval_every_epochs,
            "patience": p.patience, "post_train_tokens": p.post_train_tokens, "lora_rank": p.lora_rank,
            "lora_alpha": p.lora_alpha,
            # only when not the paper's targets, so that earlier run keys stay valid
            **({"lora_targets": list(p.lora_targets)} if tuple(p.lora_targets) != LORA_TARGETS else {})}


def _ft_key_section(cfg: PipelineConfig) -> dict[str, Any]:
    f, o = cfg.ft, cfg.ft.optim
    return {"tokens": f.tokens, "batch_size": f.batch_size, "warmup_steps": o.warmup_steps,
            "weight_decay": o.weight_decay, "min_lr_ratio": o.min_lr_ratio,
            **({"block": cfg.model.block} if cfg.model.block != "hf" else {})}


def _model_key(cfg: PipelineConfig) -> dict[str, Any]:
    """The model section in a run key; the reference block is left out, so that keys made
    before ``model.block`` existed stay valid."""
    return {k: v for k, v in to_dict(cfg.model).items() if not (k == "block" and v == "hf")}


def pre_key(cfg: PipelineConfig, fingerprint: str, seed: int, mix_fraction: float, n_post: int) -> str:
    key = {"data": fingerprint, "model": _model_key(cfg), "precision": cfg.precision,
           "stage1": _pre_key_section(cfg), "mix_fraction": mix_fraction, "seed": seed, "n_post": n_post}
    if cfg.eval.report_split != "test":  # only then: the ids of reported (test-split) runs are unchanged;
        key["report_split"] = cfg.eval.report_split  # every downstream id derives from this one
    return stable_hash(key)


def post_key(cfg: PipelineConfig, pre_id: str, setting: PostSetting, compute_matched: bool,
             trajectory: bool = False) -> str:
    key = {"pre": pre_id, "setting": setting.as_dict(), "compute_matched": compute_matched,
           "stage2": _post_key_section(cfg)}
    if trajectory:  # only then: keys of runs without the study are those of key schema 1
        key["trajectory"] = True
    return stable_hash(key)


def traj_key(cfg: PipelineConfig, upstream_id: str, ft_lr: float, max_checkpoints: int) -> str:
    return stable_hash({"upstream": upstream_id, "ft_lr": ft_lr, "max_checkpoints": max_checkpoints,
                        "stage3": _ft_key_section(cfg), "study": "matched_im"})


def matched_ft_lr(cfg: PipelineConfig) -> float:
    """The fine-tuning lr of the matched-L_im study (``matched.ft_lr``, else the gentlest ``ft.lr``)."""
    return float(cfg.matched.ft_lr if cfg.matched.ft_lr is not None else min(cfg.ft.lr))


def ft_key(cfg: PipelineConfig, upstream_id: str, ft_lr: float) -> str:
    return stable_hash({"upstream": upstream_id, "ft_lr": ft_lr, "stage3": _ft_key_section(cfg)})


def _batched_tokens(tokens: int, batch_size: int, seq_len: int) -> int:
    return (tokens // (batch_size * seq_len)) * batch_size * seq_len


def make_plan(cfg: PipelineConfig, sizes: dict[str, int], fingerprint: str) -> Plan:
    """Enumerate and key every run (after :func:`check_budgets`)."""
    check_budgets(cfg, sizes)
    T = sizes["seq_len"]
    n_post = len(post_subset(sizes["post"], cfg.post.post_train_tokens, T))
    pres: list[PreRun] = []
    posts: list[PostRun] = []
    fts: list[FtRun] = []
    trajs: list[TrajRun] = []
    tok1 = tok2 = tok3 = tok4 = 0
    for seed in cfg.seeds:
        for lam in cfg.pre_fractions:
            pre = PreRun(seed=seed, mix_fraction=lam, pre_id=pre_key(cfg, fingerprint, seed, lam, n_post))
            pres.append(pre)
            tok1 += _batched_tokens(cfg.pre.tokens, cfg.pre.batch_size, T)
            chains: list[tuple[PostSetting, bool]] = []
            if lam in cfg.pre.mix_fraction:
                chains += [(st, False) for st in cfg.post.settings()]
            if lam in cfg.post.compute_matched:
                chains.append((cfg.post.base, True))
            for setting, cm in chains:
                traj = cfg.matched.enabled and not cm and setting == cfg.post.base
                post = PostRun(pre=pre, setting=setting, compute_matched=cm,
                               upstream_id=post_key(cfg, pre.pre_id, setting, cm, traj), trajectory=traj)
                posts.append(post)
                if traj:
                    lr, k = matched_ft_lr(cfg), cfg.matched.max_checkpoints
                    trajs.append(TrajRun(post=post, ft_lr=lr, max_checkpoints=k,
                                         traj_id=traj_key(cfg, post.upstream_id, lr, k)))
                    tok4 += k * _batched_tokens(cfg.ft.tokens, cfg.ft.batch_size, T)
                tok2 += post_sequences(cfg, n_post, post) * T
                for ft_lr in cfg.ft.lr:
                    fts.append(FtRun(post=post, ft_lr=ft_lr, run_id=ft_key(cfg, post.upstream_id, ft_lr)))
                    tok3 += _batched_tokens(cfg.ft.tokens, cfg.ft.batch_size, T)
    return Plan(pre=pres, post=posts, ft=fts, sizes={**sizes, "post_used": n_post},
                tokens={"pre": tok1, "post_max": tok2, "ft": tok3, "traj_max": tok4}, traj=trajs)


def post_sequences(cfg: PipelineConfig, n_post: int, run: PostRun) -> int:
    """Upper bound on the sequences a post-training run trains on (early stopping may end sooner)."""
    lam = run.pre.mix_fraction
    if run.compute_matched:
        n = n_post - int(round(lam * n_post))
        epochs = 1
    else:
        n, epochs = n_post, cfg.post.max_epochs
    if n == 0:
        return 0
    r = run.setting.replay
    per_epoch = n + int(round(r * n / (1.0 - r)))
    total = per_epoch * epochs
    if cfg.post.max_tokens is not None:
        total = min(total, cfg.post.max_tokens // cfg.data.seq_len)
    return total


def describe_plan(cfg: PipelineConfig, plan: Plan, pipeline: str) -> str:
    """Human-readable plan: runs and tokens per stage."""
    s = plan.sizes
    T = s["seq_len"]
    lines = [f"pipeline {pipeline}: model {cfg.model.preset}, seq_len {T}, seeds {list(cfg.seeds)}",
             f"  data: D_pre {s['pre'] * T:,} train tokens, D_post {s['post_used'] * T:,} used of "
             f"{s['post'] * T:,}, D_ft {s['ft'] * T:,}; held-out {s['pre_val'] * T:,} / {s['post_val'] * T:,} / "
             f"{s['ft_val'] * T:,} tokens",
             f"  stage 1: {len(plan.pre)} runs (lambda {sorted(cfg.pre_fractions)}), "
             f"{plan.tokens['pre']:,} tokens",
             f"  stage 2: {len(plan.post)} runs ({len(cfg.post.settings())} settings x "
             f"{len(cfg.pre.mix_fraction)} lambdas x {len(cfg.seeds)} seeds"
             f" + {len(cfg.post.compute_matched) * len(cfg.seeds)} compute-matched), "
             f"at most {plan.tokens['post_max']:,} tokens",
             f"  stage 3: {len(plan.ft)} runs (lr {list(cfg.ft.lr)}), {plan.tokens['ft']:,} tokens"]
    if plan.traj:
        lines.append(f"  matched L_im: {len(plan.traj)} trajectories x up to {cfg.matched.max_checkpoints} stage-2 "
                     f"checkpoints fine-tuned at lr {plan.traj[0].ft_lr:g}, at most {plan.tokens['traj_max']:,} tokens")
    return "\n".join(lines)


def estimate_seconds(cfg: PipelineConfig, plan: Plan, prepared: Any, device: Any) -> dict[str, float]:
    """Rough wall time of ``plan`` from a quick throughput probe on this machine.

    Three optimizer steps (of ``micro_batch`` rows when set) and two evaluation batches of
    the configured model are timed (after one warm-up each); training tokens are divided by
    the measured training rate, evaluation tokens (all held-out sets after each stage, plus
    post-training early-stopping evaluations at most every ``eval_every_epochs``) by the
    evaluation rate. Post-training is an upper bound (all ``max_epochs``); early stopping
    usually ends it sooner.
    """
    import torch

    from lm_experiments.engine.device import autocast_context
    from lm_experiments.engine.model import build_model

    T = plan.sizes["seq_len"]
    model = build_model(cfg.model.preset, vocab_size=len(prepared.tokenizer), max_seq_len=T, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = min(cfg.pre.batch_size, cfg.micro_batch or cfg.pre.batch_size)  # one forward's rows
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
        seqs = post_sequences(cfg, plan.sizes["post_used"], post)
        per_epoch = max(1, plan.sizes["post_used"] // post.setting.batch_size)
        every = max(1, round(cfg.post.eval_every_epochs * per_epoch))
        n_es += math.ceil(math.ceil(seqs / post.setting.batch_size) / every)
    eval_tokens = (len(plan.pre) + len(plan.post) + len(plan.ft)) * val_all + n_es * plan.sizes["post_val"] * T
    train_tokens = plan.tokens["pre"] + plan.tokens["post_max"] + plan.tokens["ft"]
    return {"train_tokens_per_s": train_tps, "eval_tokens_per_s": eval_tps,
            "train_s": train_tokens / train_tps, "eval_s": eval_tokens / eval_tps,
            "total_s": train_tokens / train_tps + eval_tokens / eval_tps}


__all__ = ["POST_AXES", "PreRun", "PostRun", "FtRun", "TrajRun", "Plan", "traj_key", "matched_ft_lr", "post_subset", "check_budgets", "make_plan",
           "post_sequences", "describe_plan", "estimate_seconds", "pre_key", "post_key", "ft_key"]
