"""One run over several processes: ``torchrun`` + DDP, with one-device semantics.

Launch (one node, N GPUs)::

    torchrun --standalone --nproc_per_node N -m lm_experiments run --config ... --out ...

Every process runs the whole sweep in plan order; every training run is data-parallel over
all of them at the *same global batch* as on one device:

* **Data**: :meth:`BatchSource.batch(step)` is a pure function of the step, so every rank
  reads the same global batch and takes its contiguous slice of rows
  (:func:`shard_bounds`: rows ``[r B // W, (r + 1) B // W)``). Mixing and replay counts, data
  order and the schedule are the single-device ones.
* **Gradients**: the model is wrapped in DDP (all-reduce mean); each rank's micro-batch
  losses are weighted by ``rows * W / B``, so the all-reduced gradient is the gradient of the
  global-batch mean (also for uneven slices). ``micro_batch`` applies per rank (the
  accumulation steps skip the all-reduce via ``no_sync``). The reported training loss is
  all-reduced, the gradient norm is computed from the all-reduced gradients: every rank
  takes the same divergence, clipping and early-stopping decisions.
* **Evaluation** (:func:`lm_experiments.engine.evaluate.evaluate`) is sharded: every rank
  evaluates a contiguous slice of the held-out blocks, the per-block results are
  all-gathered, every rank returns the full result. A validation loss used for early
  stopping is broadcast from rank 0.
* **Dropout**: rank 0 seeds its training RNG with the run's seed (so one process is
  bitwise the single-device run), rank ``r > 0`` with ``int_seed(seed, "ddp-rank", r)``;
  masks differ from the one-device run (same distribution), results agree in distribution,
  not bitwise.
* **Files**: rank 0 writes everything (engine checkpoints with every rank's RNG state,
  models, results, manifest, frontier); the other ranks only train and evaluate. Each
  stage function ends with a barrier (:func:`collective_stage`) so that no rank reads an
  upstream run before rank 0 has written it. Data preparation runs on rank 0 first
  (:func:`main_first`), the others then read the cache.
* **Resume**: a checkpoint written at W ranks resumes bitwise at W ranks; at another world
  size it resumes with the same weights, optimizer state, step and data position (rank
  RNG streams re-seeded from (seed, rank, step)).
* **Preemption**: every rank runs under the preemption handler
  (:mod:`lm_experiments.engine.train_state`); at each step boundary the ranks agree on the flag
  (:func:`any_rank`: an all-reduce MAX of one integer on the CPU, a gloo group under NCCL, so the
  GPU stream is not synchronised), so all of them write the checkpoint at the same step and
  exit 75 together. One process does no collective at all.
* **Failures are fail-stop**: a rank whose stage raises cannot rejoin the others'
  collectives, so it prints the traceback and exits 1 (``SystemExit``); ``torchrun`` then
  stops the other ranks. Rerunning the same command resumes from the checkpoints.

The process group is initialised from torchrun's environment (:func:`init_from_env`:
NCCL on CUDA, gloo on CPU). Without torchrun (or with one process) nothing here does
anything: world size 1 is the plain single-device engine, bitwise.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is not used: the largest preset
(``smollm2-1b-paper``, 0.94B parameters) needs ~15 GiB of fp32 weights, gradients and AdamW
state per GPU, far below an 80 GiB device, so DDP's replicated state costs memory that is
free anyway and keeps checkpoints and gradient clipping identical to one device.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from early_exposure.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (world size 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Initialise the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a no-op outside
    torchrun or when already initialised. ``backend`` defaults to NCCL when CUDA is
    available, else gloo; on CUDA the process's device is set to ``cuda:LOCAL_RANK``."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return context()
    if not dist.is_available():
        raise ConfigError("torchrun", "this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise ConfigError("torchrun", f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; "
                              "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def shutdown() -> None:
    """Destroy the default process group if this module's caller initialised one."""
    _cpu_group.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def context() -> DistContext:
    """The current job's :class:`DistContext` (from the initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistContext()


def world_size() -> int:
    return context().world_size


def is_main() -> bool:
    """True on rank 0 and in every process outside a multi-process job."""
    return context().is_main


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous slice ``[lo, hi)`` of ``n`` rows for ``rank`` of ``world`` (sizes differ by <= 1)."""
    return n * rank // world, n * (rank + 1) // world


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _reduce_device() -> torch.device:
    """Tensors of collectives live here: the rank's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` (a tensor) over ranks (a copy; the input is untouched)."""
    if world_size() == 1:
        return value
    t = value.detach().to(_reduce_device(), copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(value.device)


_cpu_group: list[Any] = []


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (an all-reduce MAX of one integer, on the CPU: under
    NCCL a gloo group made on first use, so the GPU stream is never synchronised by it). Every
    rank must call it at the same point (e.g. each step boundary)."""
    if world_size() == 1:
        return flag
    if dist.get_backend() == "gloo":
        group = None
    else:
        if not _cpu_group:
            _cpu_group.append(dist.new_group(backend="gloo"))
        group = _cpu_group[0]
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_reduce_device())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (picklable objects)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over ``module`` (parameters broadcast from rank 0).

    Buffers are synchronised at construction only, not every forward (the only ones are
    RoPE's deterministic frequencies).
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # newer torch renamed broadcast_buffers (deprecated) to forward_sync_buffers
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(module, device_ids=ids, **no_sync)


def main_process_only(fn: F) -> F:
    """``fn`` that runs on rank 0 only (returns None on the other ranks): for file writes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling a cache), the others after it finished."""
    if world_size() == 1:
        yield
        return
    if not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if is_main():
            dist.barrier()


def collective_stage(fn: F) -> F:
    """Decorator of a stage function for multi-process jobs (nothing changes at world size 1).

    Ends with a barrier (rank 0's files of this run exist before any rank goes on) and makes
    a failure fail-stop: a rank that raised prints the traceback and exits 1 (``SystemExit``,
    which the executors' per-run error recording does not catch), because it could not
    rejoin the collectives of the other ranks; ``torchrun`` then stops the job.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = context()
        if not ctx.active:
            return fn(*args, **kwargs)
        try:
            out = fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - any failure of a rank ends the job (fail-stop), after its traceback
            traceback.print_exc()
            print(f"[rank {ctx.rank}] {fn.__name__} failed; stopping this rank (fail-stop: torchrun ends the job, "
                  "rerun the same command to resume)", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        dist.barrier()
        return out

    return wrapper  # type: ignore[return-value]


__all__ = ["DistContext", "launched_by_torchrun", "init_from_env", "shutdown", "context", "world_size", "is_main",
           "shard_bounds", "barrier", "all_reduce_sum", "any_rank", "broadcast_object", "all_gather_object", "wrap_ddp",
           "main_process_only", "main_first", "collective_stage"]
