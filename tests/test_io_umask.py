"""Atomic writes honour the umask: 0644 files / 0755 directories under umask 022 (not
mkstemp's 0600 / mkdtemp's 0700), 0600 / 0700 under umask 077. The kernel applies it (files
are created with mode 0o666, directories by ``mkdir``): the module never reads nor sets the
umask (no ``/proc``, no ``os.umask``)."""

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
    assert io.new_modes(tmp_path) == (fmode, dmode)
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


def test_the_umask_is_never_read_nor_set(tmp_path, umask, monkeypatch):
    """Writers work with os.umask and /proc unavailable: the mode comes from the kernel."""
    umask(0o027)

    def no_umask(*_a):
        raise AssertionError("os.umask called")

    real_open = open

    def no_proc(file, *a, **k):
        assert not str(file).startswith("/proc"), file
        return real_open(file, *a, **k)

    monkeypatch.setattr(os, "umask", no_umask)
    monkeypatch.setattr("builtins.open", no_proc)
    assert _mode(io.atomic_write_json(tmp_path / "x" / "r.json", {"a": 1})) == 0o640
    with io.atomic_dir(tmp_path / "d") as t:
        fd, name = tempfile.mkstemp(dir=t)
        os.close(fd)
        os.chmod(name, 0o755)  # an executable keeps its execute bits, cut by the umask
    assert _mode(tmp_path / "d") == 0o750 and _mode(name.replace(str(t), str(tmp_path / "d"))) == 0o750
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.rglob(".umask.*"))


def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    """A file written here has the mode a plain open() gives beside it (the same rule)."""
    for mask in (0o022, 0o077, 0o002, 0o000):
        umask(mask)
        ref = tmp_path / f"plain-{mask:o}"
        ref.write_text("x")
        assert _mode(io.atomic_write_text(tmp_path / f"atomic-{mask:o}", "x")) == _mode(ref)
        (tmp_path / f"dir-{mask:o}").mkdir()
        assert _mode(io.make_temp_dir(tmp_path, prefix=f".m{mask:o}.")) == _mode(tmp_path / f"dir-{mask:o}")
