"""Integrity of every artefact a rerun trusts, and one lock per unit of work.

Integrity. An artefact is written atomically (:mod:`early_exposure.io`) and then *sealed*:
its size and SHA-256 are recorded in a small manifest written atomically after it (a
``<name>.manifest.json`` beside a single file, :func:`seal`; or a ``{relative path:
{"size", "sha256"}}`` mapping embedded in a record that is itself written last, e.g. a
run's ``result.json``, :func:`records`). On reuse the artefact is checked against its
manifest (:func:`check`, :func:`check_records`); an artefact without a manifest (written
before manifests existed, or a crash between the artefact and its manifest) gets a
structural check instead (:func:`structural_check`: JSON parses, a zip / npz / ``torch.save``
file has its central directory and CRCs, a safetensors file opens with
``safetensors.safe_open`` (which checks that its header parses and that its tensors cover
the file exactly), a parquet file has its footer, a gzip stream ends). A damaged artefact is
reported in one line (:func:`report`: which file, what is wrong, what happens now) and
redone by the caller, never trusted and never a traceback.

Verifying a file reads it once (``hashlib.file_digest``); the digest of a large one (>= 1 MiB) is remembered per
process for an unchanged file (same inode, size, modification and change times), so a
theta_post read by every fine-tuning run of a sweep is hashed once.

Locks. :func:`unit_lock` holds an exclusive ``filelock.FileLock`` on one lock file per
unit (a run of the LM pipeline, a chunk of a theory sweep; an ``fcntl.flock`` on Linux and
macOS, ``msvcrt.locking`` on Windows): a second process on the same output directory waits
for the holder, then finds the unit finished and reuses its verified result instead of
running it again. The kernel releases the lock when its holder dies, so a killed process
never leaves a stale lock; lock files are left in place (removing them would race with a
waiting process).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import filelock

from early_exposure.io import atomic_write_json

MANIFEST_SUFFIX = ".manifest.json"
#: (path, inode, size, mtime_ns, ctime_ns) -> sha256 of the large files hashed in this process
_HASHED: dict[tuple[str, int, int, int, int], str] = {}
_MEMO_MIN_BYTES = 1 << 20  # smaller files are simply hashed again


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (``hashlib.file_digest``: one reused buffer, memory flat in the file's size)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _hash(path: Path) -> tuple[int, str]:
    st = path.stat()
    if st.st_size < _MEMO_MIN_BYTES:
        return st.st_size, sha256_file(path)
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return st.st_size, _HASHED[key]


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of one file."""
    size, sha = _hash(Path(path))
    return {"size": size, "sha256": sha}


def tree_files(root: str | os.PathLike[str], exclude: Iterable[str] = ()) -> list[str]:
    """Every regular file under ``root`` as a sorted relative POSIX path, without the
    entries (at any depth) named in ``exclude``, lock files, manifests and atomic writers'
    temp files (``.name.*.tmp``)."""
    root = Path(root)
    skip = set(exclude)
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if skip & set(rel.parts) or p.is_symlink() or not p.is_file():
            continue
        if p.name.endswith((".lock", MANIFEST_SUFFIX)) or (p.name.startswith(".") and ".tmp" in p.name):
            continue
        if any(part.startswith(".") and part.endswith((".tmp", ".old")) for part in rel.parts[:-1]):
            continue
        out.append(rel.as_posix())
    return sorted(out)


def records(root: str | os.PathLike[str], files: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{relative path: file_record}`` for ``files`` (relative to ``root``)."""
    root = Path(root)
    return {f: file_record(root / f) for f in files}


def check_records(root: str | os.PathLike[str], recs: Any, may_be_absent: tuple[str, ...] = ()) -> str | None:
    """None when every file of ``recs`` (:func:`records`) is under ``root`` with its size and
    SHA-256, else what is wrong (one line naming the file). A file whose relative path starts
    with one of ``may_be_absent`` may be missing (a reader that can do without it); when
    present it must still match."""
    root = Path(root)
    if not isinstance(recs, dict):
        return "its integrity record is not a mapping"
    for rel, want in recs.items():
        p = root / rel
        if not isinstance(want, dict) or not {"size", "sha256"} <= set(want):
            return f"{p}: malformed integrity entry"
        if not p.is_file():
            if any(str(rel).startswith(pre) for pre in may_be_absent):
                continue
            return f"{p} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{p} has {size} bytes, {want['size']} were written (truncated or overwritten)"
        if _hash(p)[1] != want["sha256"]:
            return f"{p}: SHA-256 differs from the one recorded when it was written (corrupted)"
    return None


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """Where the manifest of a single file ``path`` lives: ``<name>.manifest.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def write_manifest(manifest: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]],
                   root: str | os.PathLike[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Write ``{"files": {relative path: record}, **extra}`` atomically to ``manifest``
    (paths relative to ``root``, default the manifest's folder); call it after the files."""
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    rels = [Path(f).relative_to(root).as_posix() if Path(f).is_absolute() else Path(f).as_posix() for f in files]
    doc = {"files": records(root, rels), **extra}
    atomic_write_json(manifest, doc)
    return doc


def verify(manifest: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str | None:
    """None when ``manifest`` (:func:`write_manifest`) is readable and every file it lists
    matches, else what is wrong."""
    manifest = Path(manifest)
    doc, why = read_json(manifest)
    if why is not None:
        return why
    if not isinstance(doc, dict) or "files" not in doc:
        return f"{manifest}: not a manifest"
    return check_records(Path(root) if root is not None else manifest.parent, doc["files"])


def seal(path: str | os.PathLike[str]) -> Path:
    """Write the manifest of the single file ``path`` (after ``path`` itself)."""
    path = Path(path)
    write_manifest(manifest_path(path), [path.name], path.parent)
    return manifest_path(path)


def unseal(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and its manifest (if present)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    manifest_path(path).unlink(missing_ok=True)


def check(path: str | os.PathLike[str], *, required: bool = False) -> str | None:
    """None when the file ``path`` is intact: checked against its manifest when it has one,
    else structurally (:func:`structural_check`; with ``required`` a missing manifest is
    itself damage). A missing ``path`` is reported as such."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    m = manifest_path(path)
    if m.is_file():
        return verify(m)
    if required:
        return f"{path} has no manifest ({m.name}): written by an interrupted process"
    return structural_check(path)


def check_tree(root: str | os.PathLike[str], files: Iterable[str]) -> str | None:
    """:func:`structural_check` of each of ``files`` under ``root``; the first damage found."""
    for f in files:
        why = structural_check(Path(root) / f)
        if why is not None:
            return why
    return None


def read_json(path: str | os.PathLike[str]) -> tuple[Any, str | None]:
    """``(object, None)``, or ``(None, what is wrong)`` for a missing, unreadable, non-UTF-8
    or invalid JSON file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, f"{path} is missing"
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text (corrupted)"
    except json.JSONDecodeError as exc:
        return None, f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}: truncated or corrupted)"
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror or exc})"


# ---- structural checks ----------------------------------------------------------------------
def _zip(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"{path} is not a complete archive ({exc}: truncated or corrupted)"
    return None if bad is None else f"{path}: member {bad} fails its CRC (corrupted)"


def _safetensors(path: Path) -> str | None:
    """``safe_open`` validates the header (its length, JSON, dtypes, shapes, contiguous offsets)
    and that the tensors end exactly at the end of the file: a truncated file, one with bytes
    appended, or a damaged header is refused. No tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        return f"{path} is not a readable safetensors file ({why}: truncated or corrupted)"
    return None


def _ar(path: Path) -> str | None:
    """A Unix ``ar`` archive (a .deb): the magic, and every member within the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            return f"{path} is not an ar archive (missing magic: corrupted)"
        pos = 8
        while pos + 60 <= size:
            fh.seek(pos)
            header = fh.read(60)
            try:
                n = int(header[48:58].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return f"{path}: malformed member header at byte {pos} (corrupted)"
            if pos + 60 + n > size:
                return f"{path}: member at byte {pos} runs past the end of the file (truncated)"
            pos += 60 + n + (n & 1)
    return None if pos >= size else f"{path}: {size - pos} trailing bytes (corrupted)"


def _text_table(path: Path) -> str | None:
    """A CSV table as the writers here leave it: UTF-8, ending with a newline."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{path} is not UTF-8 text (byte {exc.start}: corrupted)"
    if data and not data.endswith(b"\n"):
        return f"{path} does not end with a newline (truncated)"
    return None


def _parquet(path: Path) -> str | None:
    try:
        import pyarrow.parquet as pq

        pq.read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        return f"{path} is not a readable parquet file ({str(exc).splitlines()[0][:120]})"
    return None


def _gzip(path: Path) -> str | None:
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        return f"{path} is not a complete gzip stream ({exc}: truncated or corrupted)"
    return None


def structural_check(path: str | os.PathLike[str]) -> str | None:
    """What is structurally wrong with ``path`` (by its suffix: ``.json``, ``.npz`` / ``.pt`` /
    ``.zip`` / ``.whl``, ``.safetensors``, ``.parquet``, ``.gz``, ``.deb``, ``.csv``), or None; other suffixes
    only need to exist."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    suffix = path.suffix
    if suffix == ".json":
        return read_json(path)[1]
    if suffix in (".npz", ".pt", ".zip", ".whl"):
        return _zip(path)
    if suffix == ".safetensors":
        return _safetensors(path)
    if suffix == ".parquet":
        return _parquet(path)
    if suffix == ".gz":
        return _gzip(path)
    if suffix == ".deb":
        return _ar(path)
    if suffix == ".csv":
        return _text_table(path)
    return None


# ---- reporting ------------------------------------------------------------------------------
def report(reason: str, action: str = "redoing it", log: Callable[[str], None] | None = None) -> str:
    """One line ``damaged artefact: <reason>; <action>`` to ``log`` (default stderr); returned."""
    line = f"damaged artefact: {reason}; {action}"
    if log is None:
        print(line, file=sys.stderr, flush=True)
    else:
        log(line)
    return line


# ---- locks ----------------------------------------------------------------------------------
@contextlib.contextmanager
def unit_lock(path: str | os.PathLike[str], *, on_wait: Callable[[str], None] | None = None,
              blocking: bool = True, optional: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock (``filelock.FileLock``: ``flock`` on POSIX) on ``path`` (created
    with its folder, mode ``0o666`` minus the umask; left in place) for the block.

    A non-blocking try first; when another process holds it, ``on_wait`` is called with a
    one-line note and (``blocking``) the call waits for it, or (not ``blocking``) yields False
    without the lock. Yields True while the lock is held. ``optional``: where the lock file
    cannot be created (a read-only cache) the block runs without it."""
    path = Path(path)
    lock = filelock.FileLock(path, thread_local=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
        held_elsewhere = False
    except filelock.Timeout:  # (a subclass of OSError)
        held_elsewhere = True
    except OSError:
        if not optional:
            raise
        yield True
        return
    if held_elsewhere:
        if on_wait is not None:
            on_wait(f"{path.name}: another process is running this unit; "
                    + ("waiting for it to finish" if blocking else "leaving it to that process"))
        if not blocking:
            yield False
            return
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


__all__ = ["MANIFEST_SUFFIX", "sha256_file", "file_record", "tree_files", "records", "check_records",
           "manifest_path", "write_manifest", "verify", "seal", "unseal", "check", "check_tree", "read_json",
           "structural_check", "report", "unit_lock"]
