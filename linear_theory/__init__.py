"""Two-layer linear-network simulator for Appendix C of arXiv 2605.12705.

Public API::

    from linear_theory import default_config, load_config, simulate
    res = simulate(default_config())           # SimResult: losses, spectra, offdiag, diverged, ...

Modules: :mod:`config` (frozen dataclasses), :mod:`tasks` (A^t, covariances, idealized inits),
:mod:`simulate` (full-matrix and spectral GD paths), :mod:`spectral` (closed forms: Saxe et al.
2014, learning times), :mod:`verify` (numerical theorem checks), :mod:`assumptions`
(assumption checker, joint feasibility, errata), :mod:`cli` (``python -m linear_theory``).
"""

from linear_theory.config import (
    FtConfig, ModelConfig, PostConfig, PreConfig, SimConfig, StagesConfig, TaskConfig,
    default_config, load_config,
)
from linear_theory.simulate import SimResult, expected_loss, simulate
from linear_theory.tasks import build_task, ideal_sigma, ideal_weights

__all__ = [
    "FtConfig", "ModelConfig", "PostConfig", "PreConfig", "SimConfig", "StagesConfig", "TaskConfig",
    "default_config", "load_config", "SimResult", "expected_loss", "simulate", "build_task",
    "ideal_sigma", "ideal_weights",
]
