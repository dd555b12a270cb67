"""Atomic file writes (temp file + rename) and stable content hashes.

A reader never sees a half-written result: every writer goes through
:func:`atomic_write_bytes`, which writes a sibling temp file, fsyncs it and renames it
over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_via(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a sibling temp file, fsync it, rename it over ``path``.

    For writers that want a file name (``torch.save``, ``DataFrame.to_parquet``); the temp
    file is removed if ``write`` raises, so ``path`` is either the old or the new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create parent directories."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_via(path, write)


def atomic_write_figure(path: str | os.PathLike[str], fig: Any, **savefig_kw: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically, in the format its suffix names."""
    path = Path(path)
    return atomic_write_via(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip("."), **savefig_kw))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy / jax scalars and arrays, paths, dataclasses
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    """Strict JSON has no NaN/Inf: store them as null (readers map null back to NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def to_jsonable(obj: Any) -> Any:
    """Round-trip ``obj`` through JSON so numpy/jax values become plain Python."""
    return _nan_to_none(json.loads(json.dumps(obj, default=_json_default)))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object, independent of dict key order (for run ids)."""
    canon = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:length]
