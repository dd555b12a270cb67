"""Device and mixed-precision policy, resolved in ONE place (library code never picks a device itself).

Library code never calls ``.cuda()`` or picks a dtype on its own: callers resolve a
:class:`torch.device` once with :func:`resolve_device` and wrap forward passes in
:func:`autocast_context`. The paper trains in bf16 mixed precision (its tables as transcribed, (T)):
on a GPU ``precision="bf16"`` turns on ``torch.autocast(dtype=torch.bfloat16)`` with
fp32 master weights; on a CPU it silently falls back to fp32 (CPU bf16 autocast is slow
and changes numerics) unless ``cpu_bf16=True`` asks for it explicitly. Under ``torchrun``
each process resolves ``auto``/``cuda`` to its own GPU (``LOCAL_RANK``).
:func:`device_peak_tflops` holds the dense bf16 peaks that MFU is measured against.
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from early_exposure.errors import ConfigError

PRECISIONS = ("bf16", "fp32")


def resolve_device(name: str = "auto") -> torch.device:
    """Map a device name to a :class:`torch.device`.

    ``"auto"`` -> ``cuda`` if available, else ``cpu``. Explicit names (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``, ``"mps"``) are checked for availability. In a process started
    by ``torchrun`` (``WORLD_SIZE`` > 1), ``"auto"`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``
    (one GPU per process); an explicit ``"cuda:N"`` is kept.

    Raises:
        ConfigError: unknown name, or an accelerator that is not present.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("device", f"expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    local = _torchrun_local_rank()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local) if local is not None else torch.device("cuda")
    if name == "cuda" and local is not None and torch.cuda.is_available():
        name = f"cuda:{local}"  # one GPU per torchrun process
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError("device", f"unknown device {name!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                "device", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("device", "'mps' requested but not available; use 'auto' or 'cpu'")
    elif dev.type != "cpu":
        raise ConfigError("device", f"unsupported device type {dev.type!r}: use 'auto', 'cpu', 'cuda' or 'mps'")
    return dev


def _torchrun_local_rank() -> int | None:
    """``LOCAL_RANK`` when this process is one of several started by ``torchrun``, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None
    return local if world > 1 else None


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against
# torch.cuda.get_device_name(): H100 SXM / H200 / GH200 989, H100 PCIe 756, A100 312, ...
_PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
          ("A100", 312.0), ("L40S", 362.0), ("4090", 165.2), ("A10G", 70.0), ("L4", 121.0))


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on CUDA, else the device type (``cpu``, ``mps``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def device_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of ``device`` in TFLOP/s (the MFU denominator), or None when unknown
    (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in _PEAKS:
        if key in name:
            return peak
    return None


def check_precision(precision: str) -> str:
    """Validate a precision name (``"bf16"`` or ``"fp32"``)."""
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
    return precision


def uses_bf16(device: torch.device, precision: str, *, cpu_bf16: bool = False) -> bool:
    """Whether :func:`autocast_context` will actually run matmuls in bf16."""
    check_precision(precision)
    if precision != "bf16":
        return False
    return device.type != "cpu" or cpu_bf16


def autocast_context(device: torch.device, precision: str, *, cpu_bf16: bool = False) -> ContextManager:
    """Context for forward passes: bf16 autocast on accelerators, fp32 otherwise.

    Args:
        device: where the model lives (from :func:`resolve_device`).
        precision: ``"bf16"`` (mixed precision: fp32 weights and optimizer state, bf16
            matmuls) or ``"fp32"``.
        cpu_bf16: on a CPU, ``"bf16"`` means fp32 unless this is True.

    Raises:
        ConfigError: unknown precision, or bf16 on a GPU that does not support it.
    """
    if not uses_bf16(device, precision, cpu_bf16=cpu_bf16):
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", "this GPU does not support bf16; use precision='fp32'")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
