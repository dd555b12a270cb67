"""The resumable state of a training run: RNG states, snapshots of the trainable weights,
the checkpoint file (written atomically) and the fingerprint a resumed run must match
(:func:`lm_experiments.engine.train.train`)."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from early_exposure import integrity
from early_exposure.io import atomic_write_via
from lm_experiments.engine.optim import OptimConfig

STATE_FILE = "state.pt"
_FORMAT = 1



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
