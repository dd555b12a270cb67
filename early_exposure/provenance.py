"""Who produced a result: package versions, git commit, python, host, time.

Every result file of the project embeds ``provenance()`` next to its resolved config
and seed, so every number can be traced to the code and versions that made it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

_PACKAGES = (
    "jax", "jaxlib", "numpy", "torch", "transformers", "peft", "tokenizers",
    "datasets", "pandas", "pyarrow", "matplotlib", "early-exposure",
)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the source tree this package was imported from (``+dirty`` if modified)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
