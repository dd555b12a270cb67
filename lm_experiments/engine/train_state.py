"""The resumable state of a training run: RNG states, snapshots of the trainable weights,
the checkpoint file (written atomically) and the fingerprint a resumed run must match
(:func:`lm_experiments.engine.train.train`); and preemption (:class:`Preempted`).

Preemption: cluster schedulers (Slurm, Kubernetes, spot instances) send SIGTERM and a grace
period before they kill. A process that runs units installs :func:`preemption_handler` (the
serial executor, every Ray task, every torchrun rank; :mod:`lm_experiments.runner`). The
handler only sets a flag (and forwards the signal to registered child processes, e.g. a
``torchrun`` job); it never writes. :func:`~lm_experiments.engine.train.train` checks the flag
at each step boundary (all ranks agree through one all-reduce when distributed), writes its
resumable checkpoint at that step and raises :class:`Preempted`, a ``SystemExit`` with code
:data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``): no ``except Exception`` records the run as
failed, and a process that lets it through exits 75, the code a job script requeues on.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from early_exposure import integrity
from early_exposure.io import atomic_write_via
from lm_experiments.engine.distributed import any_rank
from lm_experiments.engine.optim import OptimConfig

STATE_FILE = "state.pt"
_FORMAT = 1

#: exit code of a preempted process (``EX_TEMPFAIL`` of sysexits.h: "try again later"): distinct
#: from a crash (1), bad input (2), Ctrl-C (130) and a kill by an unhandled SIGTERM (143)
EXIT_PREEMPTED = 75


class Preempted(SystemExit):
    """Training stopped on a preemption signal after writing its checkpoint at the current
    step. A ``SystemExit`` (code :data:`EXIT_PREEMPTED`), so the per-run error recording
    (``except Exception``) lets it through: the run is neither failed nor finished, and a
    rerun of the same command resumes it from the checkpoint, bitwise."""

    def __init__(self, where: str = "") -> None:
        super().__init__(EXIT_PREEMPTED)
        self.where = where

    def __str__(self) -> str:
        return f"preempted{': ' + self.where if self.where else ''}"


_flag = threading.Event()
_children: set[int] = set()


def _on_signal(signum: int, frame: object) -> None:
    """The handler: set the flag and forward the signal to registered child processes (no
    file is written here; training writes its checkpoint at the next step boundary)."""
    _flag.set()
    for pid in list(_children):
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def preemption_requested() -> bool:
    """Whether a preemption signal arrived (or :func:`request_preemption` was called)."""
    return _flag.is_set()


def request_preemption() -> None:
    """Set the flag as the signal handler does (e.g. a Ray worker told by its driver)."""
    _flag.set()


def clear_preemption() -> None:
    _flag.clear()


@contextlib.contextmanager
def forward_signals_to(pid: int) -> Iterator[None]:
    """While the block runs, a preemption signal of this process is forwarded to ``pid``
    (a child that runs units itself: a ``torchrun`` job)."""
    _children.add(pid)
    try:
        if _flag.is_set():  # arrived before the child existed
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        yield
    finally:
        _children.discard(pid)


@contextlib.contextmanager
def preemption_handler(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Install the preemption handler for ``signals`` while the block runs (the previous
    handlers are restored afterwards; the flag is cleared on entry). Only the main thread can
    install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _flag.clear()
    previous = {s: signal.signal(s, _on_signal) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def fault_sigterm_step(desc: str, rank: int) -> int | None:
    """Testing hook: with ``LM_EXPERIMENTS_FAULT_SIGTERM=<prefix>:<step>[@<rank>]`` a training
    whose ``desc`` is ``<prefix>`` or starts with ``<prefix> `` (a stage, ``pre``, or more of the
    label, ``pre lam=0.5``) sends SIGTERM to its own process once ``<step>`` steps are completed
    (on rank ``<rank>`` only, when given); the real signal path then runs: handler, flag, the
    ranks' agreement, checkpoint, :class:`Preempted`."""
    spec = os.environ.get("LM_EXPERIMENTS_FAULT_SIGTERM")
    if not spec or ":" not in spec:
        return None
    prefix, _, at = spec.rpartition(":")
    at, _, only = at.partition("@")
    if only and (not only.isdigit() or int(only) != rank):
        return None
    return int(at) if at.isdigit() and (desc == prefix or desc.startswith(prefix + " ")) else None


def preempt_now(world: int) -> bool:
    """The preemption flag, agreed by every rank (one all-reduce MAX on the CPU, only when
    distributed): every rank stops at the same step."""
    flag = preemption_requested()
    return flag if world == 1 else any_rank(flag)


def note_preempted(what: str) -> None:
    """One stderr line when a unit stops on preemption."""
    print(f"[preempted] {what}", file=sys.stderr, flush=True)



def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def trainable_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (the only tensors training changes)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def restore_snapshot(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in snap.items():
            params[n].copy_(t)


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_via(path, lambda tmp: torch.save(obj, tmp))


def load_state(path: Path, main: bool) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none or it is damaged (it differs
    from its manifest, or does not load): reported in one line, and the run trains from its
    start (the next checkpoint overwrites the damaged one)."""
    if not path.exists():
        return None
    why = integrity.check(path)
    if why is None:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
            if isinstance(ck, dict) and "fingerprint" in ck:
                return ck
            why = f"{path} is not a training checkpoint"
        except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many types
            why = f"{path} cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if main:
        integrity.report(why, "discarding it: this run trains from its start")
    return None


def run_fingerprint(model: nn.Module, source: Any, optim: OptimConfig, seed: int) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this run."""
    shapes = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    return {"format": _FORMAT, "total_steps": len(source), "optim": asdict(optim), "seed": int(seed),
            "trainable": shapes, "first_batch_shape": list(np.asarray(source.batch(0)).shape)}
