"""Two-layer linear-network simulator for Appendix C of arXiv 2605.12705.

Public API::

    from linear_theory import default_config, load_config, simulate
    res = simulate(default_config())           # SimResult: losses, spectra, offdiag, diverged, ...

Core modules: :mod:`~linear_theory.config` (frozen dataclasses; ``stages.pre.mix_fraction`` is
the paper's alpha), :mod:`~linear_theory.tasks` (A^t, covariances, idealized inits, seeded
streams), :mod:`~linear_theory.simulate` (full-matrix and spectral GD paths),
:mod:`~linear_theory.spectral` (closed forms: Saxe et al. 2014, learning times) and
:mod:`~linear_theory.cli` (``python -m linear_theory``). Subpackages:
:mod:`~linear_theory.checks` (theorem checks, errata, assumption checker),
:mod:`~linear_theory.sweep` (vectorised, resumable grid sweeps) and
:mod:`~linear_theory.studies` (frontier table, finite samples, compute-matched studies).
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
