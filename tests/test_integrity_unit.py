"""The shared integrity helper (``early_exposure.integrity``) on hand-made files.

- A manifest records size and SHA-256 (checked against ``hashlib`` directly); truncation,
  a same-size change and a missing file are each named in one line.
- Structural checks by suffix on files built here: intact ones pass, truncated ones fail.
- Locks: exclusive between processes, and a holder killed with SIGKILL leaves no stale lock.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from early_exposure import integrity


def test_manifest_records_size_and_sha256_and_names_each_damage(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.txt"
    b.parent.mkdir()
    a.write_bytes(b"hello world")
    b.write_text("second file\n")
    doc = integrity.write_manifest(tmp_path / "m.json", [a, b])
    assert doc["files"] == {"a.bin": {"size": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()},
                            "sub/b.txt": {"size": 12, "sha256": hashlib.sha256(b"second file\n").hexdigest()}}
    assert integrity.verify(tmp_path / "m.json") is None
    a.write_bytes(b"hello")
    why = integrity.verify(tmp_path / "m.json")
    assert str(a) in why and "5 bytes, 11 were written" in why and "\n" not in why
    a.write_bytes(b"hello wOrld")  # same size
    assert "SHA-256 differs" in integrity.verify(tmp_path / "m.json")
    a.unlink()
    assert integrity.verify(tmp_path / "m.json") == f"{a} is missing"
    (tmp_path / "m.json").write_text('{"files": {"a.b')
    assert "not valid JSON" in integrity.verify(tmp_path / "m.json")


def test_seal_then_check_and_files_without_manifest_get_structural_checks(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"a": 1}')
    integrity.seal(p)
    assert integrity.check(p) is None and integrity.manifest_path(p).name == "x.json.manifest.json"
    p.write_text('{"a": 2}')
    assert "SHA-256 differs" in integrity.check(p)
    integrity.unseal(p)
    assert not p.exists() and not integrity.manifest_path(p).exists()
    assert integrity.check(p) == f"{p} is missing"


def _files(tmp_path: Path) -> dict[str, Path]:
    from safetensors.numpy import save_file

    out = {}
    out["json"] = tmp_path / "r.json"
    out["json"].write_text(json.dumps({"k": list(range(50))}))
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(1000))
    out["npz"] = tmp_path / "e.npz"
    out["npz"].write_bytes(buf.getvalue())
    out["safetensors"] = tmp_path / "m.safetensors"
    save_file({"w": np.ones((20, 20), np.float32)}, str(out["safetensors"]))
    out["parquet"] = tmp_path / "c.parquet"
    pd.DataFrame({"x": np.arange(100)}).to_parquet(out["parquet"])
    out["gz"] = tmp_path / "d.jsonl.gz"
    out["gz"].write_bytes(gzip.compress(b'"doc"\n' * 500))
    out["whl"] = tmp_path / "p.whl"
    with zipfile.ZipFile(out["whl"], "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", "text " * 200)
    out["deb"] = tmp_path / "p.deb"
    member = b"2.0\n"
    out["deb"].write_bytes(b"!<arch>\n" + f"{'debian-binary/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(member):<10}`\n"
                           .encode() + member)
    out["csv"] = tmp_path / "t.csv"
    out["csv"].write_text("a,b\n1,2\n3,4\n")
    return out


def test_structural_checks_pass_intact_files_and_catch_truncated_ones(tmp_path: Path) -> None:
    for kind, p in _files(tmp_path).items():
        assert integrity.structural_check(p) is None, kind
        data = p.read_bytes()
        p.write_bytes(data[: len(data) - 3])
        why = integrity.structural_check(p)
        assert why is not None and str(p) in why and "\n" not in why, kind


def test_tree_files_leave_out_records_locks_and_temp_files(tmp_path: Path) -> None:
    for name in ("result.json", "eval.npz", "model/model.safetensors", "train_state/state.pt", "x.lock",
                 "model/.model.safetensors.abc.tmp", "a.json.manifest.json", ".model.xyz.tmp/config.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert integrity.tree_files(tmp_path, exclude=("result.json", "train_state")) == ["eval.npz",
                                                                                       "model/model.safetensors"]


def _hold_forever(lock: str, ready) -> None:
    with integrity.unit_lock(lock):
        ready.set()
        signal.pause()


def test_lock_is_exclusive_and_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".locks" / "pre-x.lock"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(str(lock), ready))
    holder.start()
    try:
        assert ready.wait(60)
        notes: list[str] = []
        with integrity.unit_lock(lock, blocking=False, on_wait=notes.append) as got:
            assert got is False
        assert len(notes) == 1 and "another process is running this unit" in notes[0]
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
    finally:
        if holder.is_alive():
            holder.kill()
    with integrity.unit_lock(lock, blocking=False) as got:  # released by the kernel at the holder's death
        assert got is True


def test_read_json_names_each_problem(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    assert integrity.read_json(p) == (None, f"{p} is missing")
    p.write_bytes(b'{"a": \xff}')
    assert "not UTF-8" in integrity.read_json(p)[1]
    p.write_text('{"a": [1, 2')
    assert "not valid JSON" in integrity.read_json(p)[1]
    p.write_text('{"a": 1}')
    assert integrity.read_json(p) == ({"a": 1}, None)


@pytest.mark.parametrize("big", [False, True])
def test_a_changed_file_is_hashed_again(tmp_path: Path, big: bool) -> None:
    """Large files' digests are remembered per process; a rewrite (new inode or size) is seen."""
    p = tmp_path / "big.bin"
    n = (2 << 20) if big else 100
    p.write_bytes(b"a" * n)
    first = integrity.file_record(p)
    q = tmp_path / "new.bin"
    q.write_bytes(b"b" * n)
    os.replace(q, p)  # same size and name, new content (as an atomic writer leaves it)
    second = integrity.file_record(p)
    assert second["size"] == first["size"] and second["sha256"] == hashlib.sha256(b"b" * n).hexdigest()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def test_safetensors_check_refuses_each_damage_and_passes_bf16(tmp_path: Path) -> None:
    """safe_open validates the header and the file's extent: a bf16 checkpoint (numpy has no
    bf16; no tensor is read) passes; appended bytes, a cut or bad header, overlapping offsets
    and a file shorter than its tensors are each refused in one line."""
    good = {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}, "__metadata__": {"format": "pt"}}
    cases = {
        "intact": (_safetensors_bytes(good, bytes(12)), True),
        "appended": (_safetensors_bytes(good, bytes(14)), False),
        "short": (_safetensors_bytes(good, bytes(10)), False),
        "header length past the end": ((10**6).to_bytes(8, "little") + b"{}", False),
        "header cut": (_safetensors_bytes(good, bytes(12))[:20], False),
        "bad offsets": (_safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
                        False),
        "empty": (b"", False),
    }
    for name, (data, ok) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        p.write_bytes(data)
        why = integrity.structural_check(p)
        assert (why is None) == ok, (name, why)
        assert ok or (str(p) in why and "truncated or corrupted" in why and "\n" not in why), (name, why)


def test_sha256_file_streams_the_file(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # several buffers and a partial one
    p.write_bytes(data)
    assert integrity.sha256_file(p) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert integrity.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_lock_waits_for_the_holder_with_a_note_and_leaves_its_file(tmp_path: Path) -> None:
    """A second holder (another open of the same lock file, as in another process) is told
    and waits until the first releases; the lock file stays where it was asked for."""
    import threading
    import time

    lock = tmp_path / "locks" / "u.lock"
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with integrity.unit_lock(lock):
            ready.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        timer = threading.Timer(0.4, release.set)
        timer.start()
        notes: list[str] = []
        t0 = time.monotonic()
        with integrity.unit_lock(lock, on_wait=notes.append) as got:
            waited = time.monotonic() - t0
            assert got is True and release.is_set()
    finally:
        release.set()
        holder.join(30)
    assert waited >= 0.3 and notes == ["u.lock: another process is running this unit; waiting for it to finish"]
    assert sorted(p.name for p in lock.parent.iterdir()) == ["u.lock"]


def test_optional_lock_runs_without_a_lock_file_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with integrity.unit_lock(blocker / "u.lock", optional=True) as got:
        assert got is True
    with pytest.raises(OSError), integrity.unit_lock(blocker / "u.lock"):
        pass
