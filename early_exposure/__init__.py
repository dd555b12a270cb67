"""Shared plumbing for both halves of the study (theory and LM) and their readers.

One concept per module; nothing here imports ``linear_theory``, ``lm_experiments``,
``paper_checks`` or ``figures`` (``tests/test_import_layers.py``):

- :mod:`early_exposure.errors`        -- ``ConfigError``, the exit-code-2 CLI wrapper, the one ``Parser``.
- :mod:`early_exposure.configs`       -- strict dataclass <-> dict mapping, YAML/JSON loading,
  ``--set a.b=value`` overrides, validators.
- :mod:`early_exposure.io`            -- atomic writes and stable hashes.
- :mod:`early_exposure.integrity`     -- size + SHA-256 manifests, damage reports, unit locks.
- :mod:`early_exposure.runs`          -- the run tree of an LM results directory (every path in it),
  the integrity record of a run, ``read_run`` / ``RunReader``.
- :mod:`early_exposure.provenance`    -- package versions and git commit for every result.
- :mod:`early_exposure.frontier`      -- the shared frontier table schema and the protocol's vocabulary.
- :mod:`early_exposure.interventions` -- the registry of stage-2 interventions (replay, dropout, LoRA).
- :mod:`early_exposure.seeding`       -- one derivation of every random stream from a root seed.
- :mod:`early_exposure.stats`         -- Student-t intervals, sign-flip tests and slopes over seeds.
- :mod:`early_exposure.pareto`        -- Pareto fronts and hypervolume.
- :mod:`early_exposure.forgetting`    -- sample-wise 1->0 / 0->1 transitions between checkpoints.
"""

from early_exposure.errors import ConfigError, cli_main
from early_exposure.io import atomic_write_bytes, atomic_write_json, atomic_write_text, stable_hash
from early_exposure.provenance import provenance

__all__ = [
    "ConfigError",
    "cli_main",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "stable_hash",
    "provenance",
]
