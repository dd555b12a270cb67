"""Atomic file writes (temp file + rename) and stable content hashes.

A reader never sees a half-written result: every writer goes through
:func:`atomic_write_bytes`, which writes a sibling temp file, fsyncs it and renames it
over the target (``os.replace`` is atomic on POSIX). Directories are built the same way
(:func:`make_temp_dir` + :func:`replace_dir`, or :func:`atomic_dir`).

Permissions: ``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files / 0700 directories
whatever the umask, which the rename would carry onto the result. So the temp files and
directories here are made like a plain ``open()`` / ``mkdir()`` makes them: a file with
``os.open(path, O_CREAT | O_EXCL, 0o666)``, a directory with ``os.mkdir`` (mode 0o777), and the
kernel applies the umask (and a default ACL) -- 0644 / 0755 under umask 022. The umask is
never read nor changed (``os.umask`` sets it process-wide, which is not thread-safe). A tree
written by third-party code that makes 0600 files gets the modes read off a new probe
directory (:func:`apply_umask_modes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_TRIES = 100  # random names tried before giving up (each collision is a 2^-48 event)


def _create_file(parent: Path, prefix: str, suffix: str) -> tuple[Path, int]:
    """A new empty file ``parent/<prefix><random><suffix>`` created with mode 0o666, which
    the kernel cuts by the umask; returns it with the mode it got."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TRIES):
        p = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(p, flags, 0o666)
        except FileExistsError:
            continue
        try:
            return p, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"no free temp file name in {parent}")


def _create_dir(parent: Path, prefix: str, suffix: str) -> Path:
    """A new directory ``parent/<prefix><random><suffix>`` made by ``os.mkdir`` (0o777 cut by
    the umask)."""
    for _ in range(_TRIES):
        p = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            p.mkdir()
        except FileExistsError:
            continue
        return p
    raise FileExistsError(f"no free temp directory name in {parent}")


def new_modes(where: str | os.PathLike[str]) -> tuple[int, int]:
    """``(file mode, directory mode)`` that a plain ``open()`` / ``mkdir()`` gives in the
    directory ``where`` (0644 / 0755 under umask 022): read off a probe directory made there
    and removed (a file gets the directory's mode without its execute bits)."""
    probe = _create_dir(Path(where), ".umask.", ".tmp")
    try:
        dm = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.rmdir()
    return dm & 0o666, dm


def make_temp_dir(parent: str | os.PathLike[str], prefix: str = ".", suffix: str = ".tmp") -> Path:
    """A new directory in ``parent`` (created if needed) with the mode ``mkdir`` gives (the
    umask's) instead of mkdtemp's 0700: for building a directory that is then renamed into
    place (:func:`replace_dir`)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _create_dir(parent, prefix, suffix)


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
    """Give every file under ``root`` the mode a new file gets there (executables: a new
    directory's) and every directory (``root`` included) a new directory's mode
    (:func:`new_modes`): for trees written by third-party code that makes 0600 files (e.g.
    ``save_pretrained``'s safetensors shards, written through a temp file and renamed).
    Symbolic links are left alone."""
    fm, dm = new_modes(root)
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
    The temp file is created with ``os.open(..., 0o666)`` (the umask applies: 0644 under umask
    022), and given that mode again after ``write`` in case the writer replaced it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path, mode = _create_file(path.parent, f".{path.name}.", ".tmp")
    tmp = str(tmp_path)
    try:
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that recreated the file
            os.chmod(tmp, mode)
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
