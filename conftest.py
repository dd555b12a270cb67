"""Theory-only installs: collect only the theory test modules.

``pip install -e '.[theory]'`` installs the simulator (jax) and what both halves share
(numpy, pandas, pyarrow, pyyaml, moocore, scipy, safetensors, filelock), not the
language-model pipeline (torch, transformers, ...), the parallel executor (ray) nor the
checks' verdict table (rich). There the test modules of the other halves cannot even be
imported, so pytest collects only the modules listed in :data:`THEORY_TEST_MODULES` (the
simulator, sweeps, configs, Pareto tools, atomic files, integrity checks and locks, the
statistics and the theory CLI's bad-input tests), and says so in its header. They
are left out of collection, not skipped: with the full ``[test]`` install nothing is left out
and every test runs (no test is ever skipped).

Run the theory tests in such an environment with ``python -m pytest`` (as usual).
"""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

#: modules that need only the [theory] extra (plus pytest)
THEORY_TEST_MODULES = (
    "test_theory_*.py", "test_sweep_*.py", "test_pareto.py", "test_common.py", "test_io_umask.py",
    "test_integrity_theory.py", "test_integrity_unit.py", "test_stats_tests.py", "test_forgetting.py",
    "test_bad_inputs_theory.py",
)
#: top-level modules of the extras beyond [theory] that the other test modules import
OTHER_EXTRAS = ("torch", "transformers", "peft", "tokenizers", "datasets", "ray", "rich")

_MISSING = [m for m in OTHER_EXTRAS if importlib.util.find_spec(m) is None]
_TESTS = Path(__file__).resolve().parent / "tests"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if not _MISSING or collection_path.suffix != ".py" or collection_path.parent != _TESTS:
        return None
    name = collection_path.name
    if not name.startswith("test_"):
        return None
    return True if not any(fnmatch.fnmatch(name, pat) for pat in THEORY_TEST_MODULES) else None


def pytest_report_header(config) -> str | None:
    if not _MISSING:
        return None
    return (f"theory-only install ({', '.join(_MISSING)} not installed): collecting only the theory test "
            f"modules ({', '.join(THEORY_TEST_MODULES)}); install '.[test]' for the whole suite")
