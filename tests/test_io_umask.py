"""Atomic writes honour the umask: 0644 files / 0755 directories under umask 022 (not
mkstemp's 0600 / mkdtemp's 0700), 0600 / 0700 under umask 077."""

import os
import stat
import tempfile

import pytest

from early_exposure import io


@pytest.fixture
def umask():
    """Set the process umask for one test; restored after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda m: os.umask(m)
    os.umask(saved)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_atomic_writes_follow_umask(tmp_path, umask, mask, fmode, dmode):
    umask(mask)
    assert io.current_umask() == mask
    assert _mode(io.atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})) == fmode
    assert _mode(io.atomic_write_bytes(tmp_path / "b.bin", b"xyz")) == fmode
    assert _mode(io.atomic_write_text(tmp_path / "c.txt", "hi")) == fmode
    # a writer that wants a file name (torch.save, to_parquet), also one that recreates the file
    def recreate(tmp):
        os.unlink(tmp)
        with open(tmp, "w") as fh:
            fh.write("new")
    assert _mode(io.atomic_write_via(tmp_path / "d.txt", recreate)) == fmode
    # overwriting keeps the umask's mode, not the old file's
    p = tmp_path / "e.json"
    p.write_text("{}")
    os.chmod(p, 0o600)
    assert _mode(io.atomic_write_json(p, [1])) == fmode

    d = io.make_temp_dir(tmp_path / "parent", prefix=".x.")
    assert _mode(d) == dmode
    d.rmdir()
    with io.atomic_dir(tmp_path / "model") as t:
        (t / "f.json").write_text("{}")
        assert _mode(t) == dmode
        # third-party writers that go through mkstemp (save_pretrained's safetensors)
        (t / "sub").mkdir()
        fd, name = tempfile.mkstemp(dir=t / "sub")
        os.close(fd)
        os.replace(name, t / "sub" / "weights.bin")
        assert _mode(t / "sub" / "weights.bin") == 0o600
    m = tmp_path / "model"
    assert _mode(m) == dmode and (m / "f.json").is_file()
    assert _mode(m / "sub") == dmode and _mode(m / "sub" / "weights.bin") == fmode
    # no temp files left next to the targets
    assert not [q for q in tmp_path.rglob(".*.tmp")]


def test_atomic_dir_replaces_or_keeps(tmp_path):
    out = tmp_path / "m"
    with io.atomic_dir(out) as t:
        (t / "v").write_text("1")
    with io.atomic_dir(out) as t:
        (t / "v").write_text("2")
    assert (out / "v").read_text() == "2"
    with pytest.raises(RuntimeError), io.atomic_dir(out) as t:
        (t / "v").write_text("3")
        raise RuntimeError("boom")
    assert (out / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_umask_without_proc_uses_the_import_time_value(monkeypatch, umask):
    umask(0o027)
    monkeypatch.setattr(io, "_umask_from_proc", lambda: None)
    assert io.current_umask() == io._IMPORT_UMASK
    if os.path.exists("/proc/self/status"):
        monkeypatch.undo()
        assert io.current_umask() == 0o027
