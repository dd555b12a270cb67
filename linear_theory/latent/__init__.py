"""Beyond the paper: where early exposure has a *latent* retention benefit (same L_im,
better L_ret) in linear models. See docs/theory_latent.md and benchmarks/theory_latent.py."""

from linear_theory.latent.config import (
    LatentConfig, LatentData, LatentFt, LatentModel, LatentPost, LatentPre, LatentTask, witness_config,
)
from linear_theory.latent.model import LatentResult, build_tasks, init_weights, run, run_many

__all__ = ["LatentConfig", "LatentData", "LatentFt", "LatentModel", "LatentPost", "LatentPre", "LatentTask",
           "witness_config", "LatentResult", "build_tasks", "init_weights", "run", "run_many"]
