"""AdamW and its schedule, the same for every stage (paper App. B; (T): values of its tables
as transcribed): :class:`OptimConfig`, the warmup + cosine rate :func:`lr_at`, and
:func:`make_optimizer` (weight decay on matrices only, fused kernels on CUDA)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from early_exposure.errors import ConfigError


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + warmup/cosine hyperparameters (paper App. B; (T): values of its tables as transcribed)."""

    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("optim.lr", f"must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            raise ConfigError("optim.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ConfigError("optim.warmup_steps", f"must be an integer >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ConfigError("optim.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ConfigError(f"optim.{name}", f"must be in [0, 1), got {v!r}")
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0):
            raise ConfigError("optim.grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip!r}")


def lr_at(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate of the update with 0-based index ``step``.

    Linear warmup ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, then
    cosine decay ``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` with progress
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` (so the first post-warmup
    update uses ``lr`` and the rate approaches ``min_lr`` at ``total_steps``).
    """
    w = optim.warmup_steps
    if step < w:
        return optim.lr * (step + 1) / w
    progress = min(1.0, (step - w) / max(1, total_steps - w))
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices (ndim >= 2: linear
    layers, embeddings), none on norm gains and biases (as nanoGPT / SmolLM2). Fused
    kernels on CUDA."""
    decay, no_decay = [], []
    for p in model.parameters():  # deduplicated: a tied embedding/head appears once
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("model", "no trainable parameters")
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), **kwargs)
