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
:class:`TrainResult` (``flops``, ``mfu`` and ``mfu_causal`` measured after warm-up, the SDPA backend).

Host work off the critical path: the loss and gradient norm stay on the device and are read
back (one transfer, :func:`_to_host`) only at the logging steps (``log_every``; evaluation,
checkpoint and last steps included), where divergence is checked (see :func:`train`); the next
batch is prepared while the device computes (pinned memory, non-blocking copy on CUDA). The
optional ``curves`` sink (:mod:`lm_experiments.engine.curves`) gets the new history records at
those same steps: the run's curve grows on disk while it trains, at no extra device sync.

Preemption: a SIGTERM under :func:`lm_experiments.engine.train_state.preemption_handler` stops
the loop at the next step boundary with the checkpoint written
(:class:`~lm_experiments.engine.train_state.Preempted`, exit code 75).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
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
from lm_experiments.engine.curves import CurveSink
from lm_experiments.engine.device import autocast_context, check_precision, device_name, device_peak_tflops
from lm_experiments.engine.losses import CausalLMLoss, resolve_cross_entropy
from lm_experiments.engine.optim import OptimConfig, lr_at, make_optimizer
from lm_experiments.engine.train_state import (
    STATE_FILE, Preempted, atomic_torch_save, fault_sigterm_step, load_state, note_preempted, preempt_now,
    restore_snapshot, rng_state, run_fingerprint, set_rng_state, trainable_snapshot,
)

#: default steps between reads of the training loss and gradient norm back to the host on an
#: accelerator; on the CPU every step (the values already live in host memory: reading them is
#: free, and divergence is then caught before the update of every step)
LOG_EVERY = 50
LOG_EVERY_CPU = 1

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
    #: training FLOPs per token, attention counted in full (``model.train_flops_per_token``:
    #: 6N + 12 L d T, PaLM App. B; frozen weights 4N) and in all (``flops_per_token * tokens``,
    #: evaluation excluded); ``flops_per_token_causal``: the causal-half convention (6 L d T)
    flops_per_token: float | None = None
    flops: float | None = None
    flops_per_token_causal: float | None = None
    #: achieved training FLOP/s over (peak dense bf16 FLOP/s x world size), measured after
    #: warm-up (``mfu_window``), in both conventions; None off CUDA or for an unknown GPU
    mfu: float | None = None
    mfu_causal: float | None = None
    #: training tokens/s over the measured window (after warm-up; the whole run when the run
    #: had no synchronisation point after warm-up), and that window: {"from_step", "to_step",
    #: "steps", "after_warmup"}
    tokens_per_s_measured: float | None = None
    mfu_window: dict[str, Any] | None = None
    peak_tflops: float | None = None
    device_name: str | None = None
    world_size: int = 1
    compiled: bool = False
    cross_entropy: str = "plain"  # the resolved mode: plain | chunked | fused:liger | fused:cce
    sdpa_backend: str | None = None  # the attention kernel torch picks for this run (:func:`sdpa_backend`)

    def compute_summary(self) -> dict[str, Any]:
        """FLOPs, MFU and the fast-path settings that ran (for a stage's result)."""
        return {"flops": self.flops, "flops_per_token": self.flops_per_token,
                "flops_per_token_causal": self.flops_per_token_causal, "mfu": self.mfu, "mfu_causal": self.mfu_causal,
                "tokens_per_s_measured": self.tokens_per_s_measured, "mfu_window": self.mfu_window,
                "peak_tflops": self.peak_tflops, "device_name": self.device_name, "world_size": self.world_size,
                "compiled": self.compiled, "cross_entropy": self.cross_entropy, "sdpa_backend": self.sdpa_backend}


def _to_host(t: torch.Tensor) -> list[float]:
    """The one device -> host read of the training loop (a 1-d tensor to Python floats): the
    loop calls it only at logging, evaluation and checkpoint steps (tests count the calls)."""
    return t.tolist()


def sdpa_backend(model: nn.Module, device: torch.device, seq_len: int, precision: str = "fp32") -> str:
    """The attention kernel of this run: the model's attention implementation when it is not
    ``sdpa`` (``eager``, ``flash_attention_2``, ...), else the backend torch's SDPA dispatcher
    picks for the run's shapes (``flash``, ``efficient``, ``cudnn``, ``math``; on CPU torch's
    own flash kernel or ``math``), asked through ``torch._fused_sdp_choice``; on CUDA the
    backends switched off (``torch.backends.cuda.*_sdp_enabled``) are excluded by that choice."""
    try:
        cfg = getattr(model, "config", None)
        impl = getattr(cfg, "_attn_implementation", None) or "sdpa"
        if impl != "sdpa":
            return str(impl)
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        from lm_experiments.engine.device import uses_bf16

        dtype = torch.bfloat16 if uses_bf16(device, precision) else torch.float32
        q = torch.empty(1, heads, seq_len, head_dim, device=device, dtype=dtype)
        p = float(getattr(cfg, "attention_dropout", 0.0) or 0.0)
        choice = int(torch._fused_sdp_choice(q, q, q, None, p, True))
        from torch.nn.attention import SDPBackend

        name = SDPBackend(choice).name.lower()
        return {"flash_attention": "flash", "efficient_attention": "efficient",
                "cudnn_attention": "cudnn"}.get(name, name)
    except Exception:  # noqa: BLE001 - a report, never a reason to fail a run
        if device.type == "cuda":
            on = [n for n in ("flash", "mem_efficient", "cudnn", "math")
                  if getattr(torch.backends.cuda, f"{n}_sdp_enabled", lambda: False)()]
            return "enabled:" + "+".join(on) if on else "unknown"
        return "unknown"


class _Batches:
    """This rank's slice of each step's batch on the device, the next one prepared ahead
    (:meth:`prefetch` while the device still runs the current step): on CUDA it is copied
    from pinned host memory without blocking the host."""

    def __init__(self, source: BatchSource, device: torch.device, rank: int, world: int) -> None:
        self.source, self.device, self.rank, self.world = source, device, rank, world
        self.pin = device.type == "cuda"
        self.ahead: tuple[int, tuple[torch.Tensor, int, int, bool]] | None = None

    def _load(self, step: int) -> tuple[torch.Tensor, int, int, bool]:
        batch = np.asarray(self.source.batch(step), dtype=np.int64)  # the global batch (B, T)
        rows = batch.shape[0]  # B, or fewer in a plan's last, partial batch
        lo, hi = distributed.shard_bounds(rows, self.rank, self.world)
        empty = self.world > 1 and hi <= lo  # fewer rows than ranks: a stand-in row at weight 0
        x = torch.as_tensor(batch[:1] if empty else batch[lo:hi] if self.world > 1 else batch)
        if self.pin:
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True), rows, int(batch.size), empty

    def get(self, step: int) -> tuple[torch.Tensor, int, int, bool]:
        """(x, global rows, global tokens, empty) of ``step``."""
        ahead, self.ahead = self.ahead, None
        return ahead[1] if ahead is not None and ahead[0] == step else self._load(step)

    def prefetch(self, step: int) -> None:
        if step < len(self.source):
            self.ahead = (step, self._load(step))


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
    log_every: int | None = None,
    warmup_steps: int | None = None,
    curves: CurveSink | None = None,
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
        log_every: the *logging steps*: every ``log_every``-th step, plus every evaluation
            step, checkpoint step, ``stop_after_steps`` and the last step. Only there are the
            training losses and gradient norms read back to the host (one read of all the
            steps since the previous logging step; they stay on the device meanwhile).
            Default: :data:`LOG_EVERY` (50) on accelerators, :data:`LOG_EVERY_CPU` (1) on the CPU.
        warmup_steps: steps excluded from the MFU measurement (compilation, allocator and
            kernel warm-up); default ``min(10, len(source) // 10)``, at least 1.
        curves: where the curve goes while the run trains (:mod:`lm_experiments.engine.curves`;
            None: nowhere, the default): ``begin(history so far)`` before the first step, then
            ``log(records)`` after each logging step with the steps' final history records
            (main process only; host values the loop already read, no extra device sync).

    Divergence (a non-finite training loss or gradient norm) is checked at the logging
    steps: at a logging step it is found before that step's update (as before); when it
    happened at a step in between, the run still ends ``diverged=True`` at the next logging
    step, with the history cut after the first non-finite step and ``steps``/``tokens``
    counting the steps before it (the record of an every-step check); only the weights
    differ then (updated with non-finite gradients since), which a diverged run never saves.

    Preemption (:mod:`lm_experiments.engine.train_state`): when the process's preemption
    flag is set (SIGTERM under :func:`~lm_experiments.engine.train_state.preemption_handler`)
    the loop stops at the next step boundary (all ranks at the same one), writes the
    checkpoint at that step and raises :class:`~lm_experiments.engine.train_state.Preempted`
    (exit code 75); the same call later resumes from it bitwise.

    In a multi-process job (an initialised process group, e.g. under ``torchrun``) the run
    is data-parallel at the same global batch (:mod:`lm_experiments.engine.distributed`); rank 0
    writes the checkpoints. Neither the fast-path options nor the world size enter the
    checkpoint fingerprint: a run may resume with other ones (same math, float tolerance).

    Returns:
        :class:`TrainResult`. A non-finite training loss, gradient norm or validation loss
        ends the run with ``diverged=True`` (best weights restored when an evaluation had
        succeeded).
    """
    from lm_experiments.engine.model import train_flops_per_token, train_flops_per_token_causal

    check_precision(precision)
    total_steps = len(source)
    if total_steps < 1:
        raise ConfigError("train.steps", f"the batch source has {total_steps} steps; need at least 1")
    for name, v in (("checkpoint_every", checkpoint_every), ("micro_batch", micro_batch)):
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"train.{name}", f"must be an integer >= 0, got {v!r}")
    if log_every is None:
        log_every = LOG_EVERY_CPU if device.type == "cpu" else LOG_EVERY
    if not isinstance(log_every, int) or log_every < 1:
        raise ConfigError("train.log_every", f"must be a positive integer, got {log_every!r}")
    if stop_after_steps is not None and (not isinstance(stop_after_steps, int) or stop_after_steps < 1):
        raise ConfigError("train.stop_after_steps", f"must be a positive integer or None, got {stop_after_steps!r}")
    warmup = max(1, min(10, total_steps // 10)) if warmup_steps is None else int(warmup_steps)
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
        flops_causal: float | None = train_flops_per_token_causal(model, seq_len)
    except ConfigError:  # not a Llama model: no FLOP count
        flops_tok = flops_causal = None
    peak = device_peak_tflops(device)
    attn_kernel = sdpa_backend(model, device, seq_len, precision)
    fault_at = fault_sigterm_step(desc, rank)
    if preempt_now(world):  # the signal came before this run started: nothing new to save
        raise Preempted(f"{desc} before its first step")

    def is_logging_step(n: int) -> bool:
        """Whether completed step ``n`` (1-based) reads its values back to the host."""
        return (n % log_every == 0 or n == total_steps
                or (eval_fn is not None and eval_every > 0 and n % eval_every == 0)
                or (checkpoint_every > 0 and n % checkpoint_every == 0)
                or (stop_after_steps is not None and n >= stop_after_steps))

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

        sink = curves if main else None
        emitted = [len(history)]  # history records already sent to the sink

        def emit() -> None:
            if len(history) > emitted[0]:
                sink.log(history[emitted[0]:])
                emitted[0] = len(history)

        if sink is not None:
            sink.begin(list(history))

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

        # steps whose loss (and gradient norm) are still on the device: (record, loss,
        # grad norm, step and tokens before that step)
        pending: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor | None, int, int]] = []

        def flush() -> tuple[int, int] | None:
            """Read the pending steps' values (one host read), append their records to the
            history; at the first non-finite one stop there: its (step, tokens) before it."""
            if not pending:
                return None
            norms = [g for _, _, g, _, _ in pending if g is not None]
            # fp32 (what the loop computes; an exact upcast otherwise): the same Python floats as float(t)
            vals = _to_host(torch.stack([t.detach().float() for _, t, _, _, _ in pending]
                                        + [g.detach().float() for g in norms]))
            losses, gns = vals[:len(pending)], iter(vals[len(pending):])
            entries = list(pending)
            pending.clear()
            for (rec, _, g, before_step, before_tokens), loss in zip(entries, losses):
                rec["train_loss"] = loss
                if not math.isfinite(loss):  # stopped before clipping: no norm recorded
                    history.append(rec)
                    return before_step, before_tokens
                if g is not None:
                    rec["grad_norm"] = next(gns)
                    if not math.isfinite(rec["grad_norm"]):  # would have poisoned the weights
                        history.append(rec)
                        return before_step, before_tokens
                history.append(rec)
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", lr=f"{history[-1]['lr']:.2e}", refresh=False)
            return None

        # MFU after warm-up: (time, completed work in tokens, eval_s, step) at the first
        # host read after ``warmup`` steps of this call, and at the last one
        start_step = step
        marks: list[tuple[float, int, float, int]] = []

        model.train()
        t0 = time.perf_counter()
        batches = _Batches(source, device, rank, world)
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
                x, rows, ntok, empty = batches.get(step)
                opt.zero_grad(set_to_none=True)
                loss_t = loss_and_backward(model, x, device, precision, micro_batch, loss_fn=step_module,
                                           global_rows=rows, world=world, zero_weight=empty)
                if world > 1:  # every rank sees the global mean: the same decisions everywhere
                    loss_t = distributed.all_reduce_sum(loss_t) / world
                # norm before clipping (kept on the device; checked at the logging steps)
                gn_t = torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip) if optim.grad_clip > 0 else None
                batches.prefetch(step + 1)  # the host prepares the next batch while the device computes
                pending.append(({"step": step + 1, "train_loss": None, "lr": lr}, loss_t, gn_t, step, tokens))
                if is_logging_step(step + 1):
                    bad = flush()  # before this step's update: a non-finite value stops it
                    if step + 1 - start_step >= warmup:  # the measured window: first to last read after warm-up
                        mark = (time.perf_counter(), tokens + ntok, eval_s, step + 1)
                        marks[min(len(marks), 1):] = [mark]
                    if bad is not None:
                        step, tokens = bad
                        diverged = True
                        break
                opt.step()
                step += 1
                tokens += ntok
                bar.update(ntok)

                if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == total_steps):
                    te = time.perf_counter()
                    val = float(eval_fn(model))
                    if world > 1:  # rank 0's value decides early stopping on every rank
                        val = float(distributed.broadcast_object(val))
                    model.train()
                    eval_s += time.perf_counter() - te
                    history[-1]["val_loss"] = val
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

                if sink is not None:  # this step's record is final (its val_loss included)
                    emit()
                if stop_after_steps is not None and step >= stop_after_steps and step < total_steps:
                    save_state()
                    interrupted = True
                    break
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    save_state()
                if fault_at is not None and step == fault_at:
                    os.kill(os.getpid(), signal.SIGTERM)  # testing hook: the real handler runs
                if step < total_steps and preempt_now(world):
                    bad = flush()
                    if bad is not None:  # diverged since the last logging step: end as diverged
                        step, tokens = bad
                        diverged = True
                        break
                    save_state()
                    if main:
                        note_preempted(f"{desc}: checkpoint at step {step} in {state_path}")
                    raise Preempted(f"{desc} at step {step}")
        finally:
            bar.close()
            if sink is not None:  # a run that stopped (diverged, early, preempted): its last records
                emit()

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
    after_warmup = len(marks) == 2 and marks[1][3] > marks[0][3]
    if after_warmup:
        (ta, ka, ea, sa), (tb, kb, eb, sb) = marks
        measured = (kb - ka) / max((tb - ta) - (eb - ea), 1e-9)
        window = {"from_step": sa, "to_step": sb, "steps": sb - sa, "after_warmup": True}
    else:  # no host read after warm-up: the whole call
        measured = tok_s
        window = {"from_step": start_step, "to_step": step, "steps": step - start_step, "after_warmup": False}

    def mfu_of(f: float | None) -> float | None:
        return measured * f / (peak * 1e12 * world) if peak and f else None

    return TrainResult(steps=step, tokens=tokens, wall_s=wall, tokens_per_s=tok_s, diverged=diverged,
                       stopped_early=stopped_early, best_step=best_step, best_val=best_val, history=history,
                       eval_s=eval_s, resumed_from=resumed_from, flops_per_token=flops_tok,
                       flops=flops_tok * tokens if flops_tok else None, flops_per_token_causal=flops_causal,
                       mfu=mfu_of(flops_tok), mfu_causal=mfu_of(flops_causal), tokens_per_s_measured=measured,
                       mfu_window=window, peak_tflops=peak, device_name=device_name(device), world_size=world,
                       compiled=compile, cross_entropy=ce_mode, sdpa_backend=attn_kernel)
