"""The training loop shared by all three stages of the paper's protocol (Sec. 3, App. B).

One function, :func:`train`: AdamW with betas (0.9, 0.95) and decoupled weight decay on
matrices only, linear warmup then cosine decay to ``min_lr`` over ``len(source)`` steps
(:func:`lm_experiments.engine.optim.lr_at`), gradient clipping, bf16 autocast on GPUs, a tqdm bar with tokens/s and
ETA, early stopping on a validation loss (post-training, Sec. 3: "early stopping on
D_post validation loss"), divergence detection (a non-finite loss stops the run with
``diverged=True``; never an exception), and resumable atomic checkpoints.

Determinism and resume: batches come from a :class:`BatchSource` that is a pure function
of the step; dropout randomness comes from a torch RNG seeded from ``seed`` inside
``torch.random.fork_rng`` (the caller's RNG is untouched). A checkpoint stores model,
optimizer, step, RNG states, early-stopping state (with the best weights) and history, so
a resumed run replays exactly the same updates as an uninterrupted one on CPU.

Checkpoint directory lifecycle: ``ckpt_dir/state.pt`` is (re)written atomically every
``checkpoint_every`` steps; a call that finds it resumes from it (refusing a checkpoint of
a different run). When :func:`train` returns normally (finished, stopped early or
diverged) the files it wrote are deleted and ``ckpt_dir`` is removed if empty: the
caller saves the final model (e.g. ``evaluate.save_checkpoint``). ``stop_after_steps``
simulates an interruption: it writes a checkpoint and returns with the checkpoint kept.

Fast path (``compile``, ``cross_entropy``, ``ce_chunk_tokens``; config section ``train``):
the loss is :class:`lm_experiments.engine.losses.CausalLMLoss` (Hugging Face's plain loss, a
chunked linear cross-entropy in plain torch, or a fused kernel on CUDA), optionally
``torch.compile``-d; AdamW is fused on CUDA. The defaults (no compile, ``auto`` = plain off
CUDA) are bitwise the plain path on CPU. Several processes (``torchrun``): DDP at the same
global batch, see :mod:`lm_experiments.engine.distributed`. FLOPs and MFU of each run are in the
:class:`TrainResult` (``flops``, ``mfu``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from early_exposure import integrity
from early_exposure.errors import ConfigError
from early_exposure.seeding import int_seed
from lm_experiments.engine import distributed
from lm_experiments.config import TrainSection
from lm_experiments.engine.device import autocast_context, check_precision, device_name, device_peak_tflops
from lm_experiments.engine.losses import CausalLMLoss, resolve_cross_entropy
from lm_experiments.engine.optim import OptimConfig, lr_at, make_optimizer
from lm_experiments.engine.train_state import (
    STATE_FILE, atomic_torch_save, load_state, restore_snapshot, rng_state, run_fingerprint, set_rng_state,
    trainable_snapshot,
)

class BatchSource(Protocol):
    """Deterministic stream of training batches, indexed by optimizer step."""

    def __len__(self) -> int:  # number of optimizer steps
        ...

    def batch(self, step: int) -> np.ndarray:  # int64 (batch_size, seq_len) token ids of that step
        ...


@dataclass
class TrainResult:
    """Outcome of :func:`train`. ``steps`` counts completed optimizer steps (cumulative
    over resumes); ``tokens`` the tokens fed (batch_size * seq_len per step); ``wall_s`` the
    wall time including evaluations; ``tokens_per_s`` = tokens / (wall_s - eval_s), the
    training throughput; ``best_step`` is the completed-step count at the best evaluation.
    ``history`` has one dict per step: ``step`` (1-based), ``train_loss``, ``lr`` (the rate
    used by that update), ``grad_norm`` (before clipping; when clipping is on) and
    ``val_loss`` on evaluation steps. After a divergence the last entry is the failed step."""

    steps: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    diverged: bool
    stopped_early: bool
    best_step: int | None
    best_val: float | None
    history: list[dict] = field(default_factory=list)
    eval_s: float = 0.0
    resumed_from: int | None = None
    #: training FLOPs per token (``model.train_flops_per_token``: 6N + 12 L d T) and in all
    #: (``flops_per_token * tokens``, evaluation excluded)
    flops_per_token: float | None = None
    flops: float | None = None
    #: achieved training FLOP/s over (peak dense bf16 FLOP/s x world size); None off CUDA or
    #: for an unknown GPU
    mfu: float | None = None
    peak_tflops: float | None = None
    device_name: str | None = None
    world_size: int = 1
    compiled: bool = False
    cross_entropy: str = "plain"  # the resolved mode: plain | chunked | fused:liger | fused:cce

    def compute_summary(self) -> dict[str, Any]:
        """FLOPs, MFU and the fast-path settings that ran (for a stage's result)."""
        return {"flops": self.flops, "flops_per_token": self.flops_per_token, "mfu": self.mfu,
                "peak_tflops": self.peak_tflops, "device_name": self.device_name, "world_size": self.world_size,
                "compiled": self.compiled, "cross_entropy": self.cross_entropy}


def loss_and_backward(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, micro_batch: int,
                      *, loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, global_rows: int | None = None,
                      world: int = 1, zero_weight: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of batch ``x`` (b, t); backward is run here per
    micro-batch (gradient accumulation), the detached mean loss is returned.

    ``loss_fn(xi)`` gives the mean loss of rows ``xi`` (default: Hugging Face's,
    ``model(input_ids=xi, labels=xi).loss``; the engine passes a
    :class:`~lm_experiments.engine.losses.CausalLMLoss`, possibly DDP-wrapped). Data parallel:
    ``x`` is this rank's slice of a global batch of ``global_rows`` rows over ``world``
    ranks; micro-batch losses are weighted by ``rows * world / global_rows`` so that DDP's
    gradient average is the gradient of the global mean (the returned value is this rank's
    share times ``world``: its all-reduced sum / world is the global mean). Accumulation
    steps of a DDP module skip the gradient all-reduce (``no_sync``). ``zero_weight``: this
    rank holds no rows of the global batch (a plan's last batch with fewer rows than ranks);
    ``x`` is then a stand-in row whose loss enters with weight 0, so the rank still joins
    DDP's gradient all-reduce (with zeros) and the step equals the one-device step."""
    b = x.shape[0]
    rows_total = b if global_rows is None else global_rows
    mb = b if micro_batch <= 0 else min(micro_batch, b)
    fn = loss_fn if loss_fn is not None else (lambda xi: model(input_ids=xi, labels=xi).loss)
    no_sync = getattr(loss_fn, "no_sync", None)
    starts = range(0, b, mb)
    total = torch.zeros((), device=device, dtype=torch.float32)
    for k, i in enumerate(starts):
        xi = x[i:i + mb]  # (mb, t)
        sync = contextlib.nullcontext() if no_sync is None or k == len(starts) - 1 else no_sync()
        with sync:
            with autocast_context(device, precision):
                mean = fn(xi)  # HF shifts labels: mean over mb * (t - 1) targets
            # every row has t - 1 targets, so weighting by rows gives the full-batch mean exactly
            loss = mean.float() * (0.0 if zero_weight else xi.shape[0] * world / rows_total)
            loss.backward()
        total += loss.detach()
    return total


@dataclass(frozen=True)
class EarlyStop:
    """Early stopping of one training run on a validation loss (paper Sec. 3).

    Attributes:
        eval_fn: validation loss of the model (it may switch to eval mode; train mode is
            restored afterwards). Called after every ``eval_every`` completed steps and after
            the last step. With ``eval_fn``, the best-scoring trainable weights are restored
            at the end unless ``restore_best=False``.
        eval_every: steps between evaluations (0: only after the last step).
        patience: stop after this many consecutive evaluations without improvement
            (``None``: never stop early, still restore the best weights).
        restore_best: with ``eval_fn``, load the best-scoring weights at the end (default);
            False keeps the last weights (evaluations are then only recorded).
        on_eval: called as ``on_eval(step, model, val_loss)`` after every finite evaluation
            (e.g. to save the stage-2 trajectory); it must not change the model.
    """

    eval_fn: Callable[[nn.Module], float] | None = None
    eval_every: int = 0
    patience: int | None = None
    restore_best: bool = True
    on_eval: Callable[[int, nn.Module, float], None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ConfigError("train.eval_every", f"must be an integer >= 0, got {self.eval_every!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ConfigError("train.patience", f"must be a positive integer or None, got {self.patience!r}")
        if self.eval_every and self.eval_fn is None:
            raise ConfigError("train.eval_every", "eval_every > 0 needs an eval_fn")


def train(
    model: nn.Module,
    source: BatchSource,
    *,
    optim: OptimConfig,
    ckpt_dir: Path,
    device: torch.device,
    precision: str = "fp32",
    stopping: EarlyStop = EarlyStop(),
    speed: TrainSection = TrainSection(),
    checkpoint_every: int = 0,
    desc: str = "train",
    stop_after_steps: int | None = None,
    seed: int = 0,
    micro_batch: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``len(source)`` batches (paper App. B optimisation).

    Args:
        model: a ``LlamaForCausalLM`` (or ``PeftModel``) already on ``device``.
        source: step-indexed batches; ``len(source)`` is the schedule length.
        optim: AdamW and schedule settings (:func:`lm_experiments.engine.optim.lr_at`).
        ckpt_dir: directory for the resumable checkpoint (see module docstring).
        device, precision: see :mod:`lm_experiments.engine.device`.
        stopping: early stopping on a validation loss (:class:`EarlyStop`; off by default).
        speed: the config's ``train`` section (:class:`lm_experiments.config.TrainSection`):
            ``compile`` the training forward (:class:`~lm_experiments.engine.losses.CausalLMLoss`;
            evaluation runs the eager model), ``cross_entropy`` ``auto`` | ``plain`` | ``chunked``
            | ``fused`` (:func:`~lm_experiments.engine.losses.resolve_cross_entropy`; ``auto`` is
            ``plain`` off CUDA) and ``ce_chunk_tokens``; validated by the section itself.
        checkpoint_every: write a checkpoint every this many steps (0: never, except at
            ``stop_after_steps``).
        desc: progress-bar label.
        progress: show the tqdm bar (False for logs and batch jobs).
        stop_after_steps: return after this many completed steps with a checkpoint written
            (simulated interruption, for tests and time-sliced jobs).
        seed: seed of the training RNG (dropout); the caller's RNG state is preserved.
        micro_batch: rows per forward/backward (gradient accumulation); 0 = whole batch.

    In a multi-process job (an initialised process group, e.g. under ``torchrun``) the run
    is data-parallel at the same global batch (:mod:`lm_experiments.engine.distributed`); rank 0
    writes the checkpoints. Neither the fast-path options nor the world size enter the
    checkpoint fingerprint: a run may resume with other ones (same math, float tolerance).

    Returns:
        :class:`TrainResult`. A non-finite training loss, gradient norm or validation loss
        ends the run (before the weights are updated) with
        ``diverged=True`` (best weights restored when an evaluation had succeeded).
    """
    from lm_experiments.engine.model import train_flops_per_token

    check_precision(precision)
    total_steps = len(source)
    if total_steps < 1:
        raise ConfigError("train.steps", f"the batch source has {total_steps} steps; need at least 1")
    for name, v in (("checkpoint_every", checkpoint_every), ("micro_batch", micro_batch)):
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"train.{name}", f"must be an integer >= 0, got {v!r}")
    if stop_after_steps is not None and (not isinstance(stop_after_steps, int) or stop_after_steps < 1):
        raise ConfigError("train.stop_after_steps", f"must be a positive integer or None, got {stop_after_steps!r}")
    eval_fn, eval_every, patience = stopping.eval_fn, stopping.eval_every, stopping.patience
    restore_best, on_eval = stopping.restore_best, stopping.on_eval
    compile, cross_entropy, ce_chunk_tokens = speed.compile, speed.cross_entropy, speed.ce_chunk_tokens
    ce_mode = resolve_cross_entropy(cross_entropy, device, model)

    dctx = distributed.context()
    world, rank = dctx.world_size, dctx.rank
    main = dctx.is_main
    ckpt_dir = Path(ckpt_dir)
    state_path = ckpt_dir / STATE_FILE
    fingerprint = run_fingerprint(model, source, optim, seed)
    global_rows = int(fingerprint["first_batch_shape"][0])
    if global_rows < world:
        raise ConfigError("batch_size", f"a global batch of {global_rows} rows cannot be split over {world} "
                          "processes; use a batch of at least one row per process")
    opt = make_optimizer(model, optim, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    seq_len = int(fingerprint["first_batch_shape"][1])
    try:
        flops_tok: float | None = train_flops_per_token(model, seq_len)
    except ConfigError:  # not a Llama model: no FLOP count
        flops_tok = None
    peak = device_peak_tflops(device)

    # --- state that a checkpoint carries --------------------------------------------------
    step = 0  # completed optimizer steps
    tokens = 0
    history: list[dict] = []
    best_val: float | None = None
    best_step: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    bad_evals = 0
    wall_before = 0.0
    eval_s = 0.0
    resumed_from: int | None = None
    diverged = stopped_early = False

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        # rank 0 (and a single process) seeds with ``seed``: one process is the plain run bitwise
        torch.manual_seed(int(seed) if rank == 0 else int_seed(int(seed), "ddp-rank", rank))
        ck = load_state(state_path, main)
        if ck is not None:
            if ck["fingerprint"] != fingerprint:
                raise ConfigError(
                    "ckpt_dir", f"{state_path} belongs to a different run (model, steps, optimiser or seed "
                    "differ); delete it or use another ckpt_dir")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            step, tokens, history = ck["step"], ck["tokens"], ck["history"]
            best_val, best_step, bad_evals = ck["best_val"], ck["best_step"], ck["bad_evals"]
            best_weights = ck["best_weights"]
            wall_before, eval_s = ck["wall_s"], ck["eval_s"]
            rank_states = ck.get("rng_ranks")
            if rank_states is not None and len(rank_states) == world:
                set_rng_state(rank_states[rank], device)
            elif rank == 0:
                set_rng_state(ck["rng"], device)
            else:  # written at another world size: a fresh stream for this rank at this step
                torch.manual_seed(int_seed(int(seed), "ddp-rank", rank, step))
            resumed_from = step

        loss_module = CausalLMLoss(model, cross_entropy=ce_mode, chunk_tokens=ce_chunk_tokens, compile=compile)
        step_module = distributed.wrap_ddp(loss_module, device) if world > 1 else loss_module

        def save_state() -> None:
            rng_ranks = distributed.all_gather_object(rng_state(device)) if world > 1 else None
            if main:
                atomic_torch_save({
                    "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "step": step, "tokens": tokens, "history": history, "best_val": best_val,
                    "best_step": best_step, "bad_evals": bad_evals, "best_weights": best_weights,
                    "wall_s": wall_before + (time.perf_counter() - t0), "eval_s": eval_s, "rng": rng_state(device),
                    **({"rng_ranks": rng_ranks, "world_size": world} if world > 1 else {}),
                }, state_path)
                integrity.seal(state_path)  # size + SHA-256, checked before a resume trusts it
            distributed.barrier()

        model.train()
        t0 = time.perf_counter()
        first = np.asarray(source.batch(0))
        bar = tqdm(total=total_steps * first.size, initial=step * first.size, desc=desc, unit="tok",
                   unit_scale=True, dynamic_ncols=True, mininterval=1.0, leave=False,
                   disable=not (progress and main))
        interrupted = False
        try:
            while step < total_steps:
                lr = lr_at(step, optim, total_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                batch = np.asarray(source.batch(step), dtype=np.int64)  # the global batch (B, T)
                rows = batch.shape[0]  # B, or fewer in a plan's last, partial batch
                lo, hi = distributed.shard_bounds(rows, rank, world)
                empty = world > 1 and hi <= lo  # fewer rows than ranks: a stand-in row at weight 0
                x = torch.as_tensor(batch[:1] if empty else batch[lo:hi] if world > 1 else batch)
                x = x.to(device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                loss_t = loss_and_backward(model, x, device, precision, micro_batch, loss_fn=step_module,
                                           global_rows=rows, world=world, zero_weight=empty)
                if world > 1:  # every rank sees the global mean: the same decisions everywhere
                    loss_t = distributed.all_reduce_sum(loss_t) / world
                loss = float(loss_t)
                if not math.isfinite(loss):
                    history.append({"step": step + 1, "train_loss": loss, "lr": lr})
                    diverged = True
                    break
                rec: dict[str, Any] = {"step": step + 1, "train_loss": loss, "lr": lr}
                if optim.grad_clip > 0:
                    # norm before clipping; a non-finite one would poison the weights: stop first
                    rec["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip))
                    if not math.isfinite(rec["grad_norm"]):
                        history.append(rec)
                        diverged = True
                        break
                opt.step()
                step += 1
                tokens += batch.size
                history.append(rec)
                bar.update(batch.size)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)

                if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == total_steps):
                    te = time.perf_counter()
                    val = float(eval_fn(model))
                    if world > 1:  # rank 0's value decides early stopping on every rank
                        val = float(distributed.broadcast_object(val))
                    model.train()
                    eval_s += time.perf_counter() - te
                    rec["val_loss"] = val
                    if not math.isfinite(val):
                        diverged = True
                        break
                    if on_eval is not None:
                        on_eval(step, model, val)
                        model.train()
                    if best_val is None or val < best_val:
                        best_val, best_step, bad_evals = val, step, 0
                        best_weights = trainable_snapshot(model)
                    else:
                        bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        stopped_early = True
                        break

                if stop_after_steps is not None and step >= stop_after_steps and step < total_steps:
                    save_state()
                    interrupted = True
                    break
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    save_state()
        finally:
            bar.close()

    wall = wall_before + (time.perf_counter() - t0)
    if not interrupted:
        if best_weights is not None and (best_step != step or diverged) and (restore_best or diverged):
            restore_snapshot(model, best_weights)
        if main:
            integrity.unseal(state_path)
            if ckpt_dir.exists() and not any(ckpt_dir.iterdir()):
                ckpt_dir.rmdir()
        distributed.barrier()  # no rank may find the deleted checkpoint of this run later
    train_s = max(wall - eval_s, 1e-9)
    tok_s = tokens / train_s
    return TrainResult(steps=step, tokens=tokens, wall_s=wall, tokens_per_s=tok_s, diverged=diverged,
                       stopped_early=stopped_early, best_step=best_step, best_val=best_val, history=history,
                       eval_s=eval_s, resumed_from=resumed_from, flops_per_token=flops_tok,
                       flops=flops_tok * tokens if flops_tok else None,
                       mfu=(tok_s * flops_tok / (peak * 1e12 * world)) if peak and flops_tok else None,
                       peak_tflops=peak, device_name=device_name(device), world_size=world, compiled=compile,
                       cross_entropy=ce_mode)
