"""Atomic file writes (temp file + rename) and stable content hashes.

A reader never sees a half-written result: every writer goes through
:func:`atomic_write_bytes`, which writes a sibling temp file, fsyncs it and renames it
over the target (``os.replace`` is atomic on POSIX). Directories are built the same way
(:func:`make_temp_dir` + :func:`replace_dir`, or :func:`atomic_dir`).

Permissions: ``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files / 0700 directories
whatever the umask, which the rename would carry onto the result. Every temp file and
directory made here is chmod-ed to the mode a plain ``open()`` / ``mkdir()`` would give
(``0o666`` / ``0o777`` minus the umask: 0644 / 0755 under umask 022) before it is
renamed into place. The umask is read by :func:`current_umask`: from the ``Umask:`` line of
``/proc/self/status`` (Linux >= 4.7), which reads it without changing it, so it is
thread-safe and follows later ``os.umask`` calls; where that file is absent, the value
read once at import time by setting and restoring it with ``os.umask`` (not thread-safe,
so done only then, while the module is imported, before a writer thread can race it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _umask_by_swap() -> int:
    old = os.umask(0o022)  # not thread-safe: done once, at import
    os.umask(old)
    return old


def _import_umask() -> int:
    m = _umask_from_proc()
    return _umask_by_swap() if m is None else m


#: the umask at import time: :func:`current_umask`'s answer where /proc is unavailable
_IMPORT_UMASK: int = _import_umask()


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``) where the OS
    allows, else the value at import time (see the module docstring)."""
    m = _umask_from_proc()
    return _IMPORT_UMASK if m is None else m


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``os.mkdir`` gives a new directory: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def make_temp_dir(parent: str | os.PathLike[str], prefix: str = ".", suffix: str = ".tmp") -> Path:
    """``tempfile.mkdtemp`` in ``parent`` (created if needed) with the umask's directory
    mode (:func:`dir_mode`) instead of mkdtemp's 0700: for building a directory that is
    then renamed into place (:func:`replace_dir`)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(tmp, dir_mode())
    return tmp


def replace_dir(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Rename the finished directory ``tmp`` onto ``path`` (same filesystem). An existing
    ``path`` is first renamed aside and removed after, so ``path`` is at every moment
    either absent (between the two renames), the old or the new directory, never a mix."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.rmdir(old)  # a free name next to path
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old)
    return path


def apply_umask_modes(root: str | os.PathLike[str]) -> None:
    """Give every file under ``root`` the umask's file mode (executables: ``0o777 & ~umask``)
    and every directory (``root`` included) the directory mode: for trees written by
    third-party code that makes 0600 files (e.g. ``save_pretrained``'s safetensors shards,
    written through a temp file and renamed). Symbolic links are left alone."""
    fm, dm = file_mode(), dir_mode()
    os.chmod(root, dm)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, dm)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, dm if os.stat(p).st_mode & 0o111 else fm)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, umask_modes: bool = True) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` fill ``tmp``; on success it replaces ``out``
    (:func:`replace_dir`), on an exception it is removed and ``out`` is left as it was.
    ``tmp`` gets the umask's directory mode, and with ``umask_modes`` everything in it the
    umask's modes before the rename (:func:`apply_umask_modes`)."""
    path = Path(path)
    tmp = make_temp_dir(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        yield tmp
        if umask_modes:
            apply_umask_modes(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_via(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a sibling temp file, fsync it, rename it over ``path``.

    For writers that want a file name (``torch.save``, ``DataFrame.to_parquet``); the temp
    file is removed if ``write`` raises, so ``path`` is either the old or the new content.
    The result has the umask's file mode (:func:`file_mode`, 0644 under umask 022), not
    mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # after write: a writer may have replaced the file
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
