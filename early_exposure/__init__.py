"""Shared plumbing for both halves of the study (theory and LM).

One concept per module:

- :mod:`early_exposure.errors`     -- ``ConfigError`` and the exit-code-2 CLI wrapper.
- :mod:`early_exposure.configs`    -- strict dataclass <-> dict mapping, YAML/JSON loading,
  ``--set a.b=value`` overrides.
- :mod:`early_exposure.io`         -- atomic writes and stable hashes.
- :mod:`early_exposure.provenance` -- package versions and git commit for every result.
- :mod:`early_exposure.frontier`   -- the shared frontier table schema and the protocol's vocabulary.
- :mod:`early_exposure.seeding`    -- one derivation of every random stream from a root seed.
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
