"""The streaming, shard-based data preparation against the in-memory recipe, and its memory.

Reference: the recipe written out here in memory (``split.dedupe_sorted`` / ``cap_documents``
/ ``split_documents``, the tokenizer's own ``encode``, ``packing.pack_documents``: a second
code path), applied to the same documents with the tokenizer the preparation trained; the
prepared blocks, document lists and statistics must equal it exactly, on the embedded
corpora (built from stand-in archives, as in test_lm_data_embedded) and on a local corpus
with duplicates, empty documents and character caps. Memory: a corpus with the same number
of documents but ten times the characters must not raise the peak of traced allocations by
more than 20%, and the peak stays below half a byte per corpus character.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lm_experiments.data import CorpusSpec, DataConfig, prepare_data, shards, sources
from lm_experiments.data.packing import pack_documents
from lm_experiments.data.split import cap_documents, dedupe_sorted, split_documents
from test_lm_data_embedded import fake_archives  # noqa: F401  (the stand-in archives fixture)


def _reference(cfg: DataConfig, data, cache: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    eos = int(data.tokenizer.eos_token_id)
    for role in ("pre", "post", "ft"):
        spec = getattr(cfg, role)
        texts, hashes = dedupe_sorted(sources.load_documents(spec, f"data.{role}", cache))
        texts, hashes = cap_documents(texts, hashes, max_docs=spec.max_docs, max_chars=spec.max_chars)
        tr, va = split_documents(texts, hashes, cfg.val_fraction)
        res = {}
        train_cap = None if cfg.max_train_tokens is None else cfg.max_train_tokens // cfg.seq_len
        for name, idx, cap in (("val", va, cfg.num_val_blocks), ("train", tr, train_cap)):
            ids = [data.tokenizer.encode(texts[i], add_special_tokens=False) for i in idx]
            blocks, _ = pack_documents(ids, eos_id=eos, seq_len=cfg.seq_len, max_blocks=cap)
            pos, docs = 0, []
            for i, t in zip(idx, ids):  # documents with a token or EOS inside the kept blocks
                if pos >= blocks.size:
                    break
                docs.append(hashes[i])
                pos += len(t) + 1
            res[name], res[f"{name}_docs"] = blocks, sorted(docs)
        out[role] = res
    return out


def _assert_equal_to_reference(cfg: DataConfig, cache: Path) -> None:
    data = prepare_data(cfg, cache_root=cache, progress=False)
    ref = _reference(cfg, data, cache)
    for role, r in ref.items():
        split = data.splits[role]
        assert isinstance(split.train, np.memmap)  # read from disk, not held in memory
        for name in ("train", "val"):
            got = np.asarray(getattr(split, name))
            assert got.dtype == np.int32 and got.shape == r[name].shape, (role, name)
            np.testing.assert_array_equal(got, r[name])
            assert sorted(getattr(split, f"{name}_doc_hashes")) == r[f"{name}_docs"]
        assert split.train_doc_hashes.isdisjoint(split.val_doc_hashes)


def test_embedded_corpora_give_the_in_memory_token_streams(fake_archives, tmp_path):  # noqa: F811
    cfg = DataConfig(pre=CorpusSpec("embedded", "general"), post=CorpusSpec("embedded", "music"),
                     ft=CorpusSpec("embedded", "chem"), vocab_size=300, seq_len=8, val_tokens=8, val_fraction=0.3)
    _assert_equal_to_reference(cfg, tmp_path)


def _words(rng: np.random.Generator, n: int, repeat: int = 1) -> str:
    vocab = "alpha beta gamma delta mu nu xi omicron pi rho sigma tau".split()
    return " ".join(vocab[i] for i in rng.integers(0, len(vocab), n)) * repeat


def test_caps_duplicates_and_empty_documents_give_the_in_memory_token_streams(tmp_path):
    rng = np.random.default_rng(5)
    paths = {}
    for k, role in enumerate(("pre", "post", "ft")):
        docs = [f"{role}{i} {_words(rng, int(rng.integers(3, 30)))}" for i in range(150)]
        docs += docs[:20] + ["   ", ""]  # exact duplicates and blank documents are dropped
        p = tmp_path / f"{role}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        paths[role] = p
    cfg = DataConfig(pre=CorpusSpec("local", "p", path=str(paths["pre"]), max_chars=3000),
                     post=CorpusSpec("local", "q", path=str(paths["post"]), max_docs=90),
                     ft=CorpusSpec("local", "f", path=str(paths["ft"])),
                     vocab_size=300, seq_len=16, val_tokens=32, val_fraction=0.2, max_train_tokens=640,
                     bpe_sample_chars=2000)
    _assert_equal_to_reference(cfg, tmp_path / "cache")


def _corpus_dir(root: Path, n_docs: int, repeat: int, seed: int) -> Path:
    """A directory of ``n_docs`` one-document files; ``repeat`` scales every document's length."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n_docs):
        (root / f"{i:05d}.txt").write_text(f"doc{i} {_words(rng, 20, repeat)}")
    return root


def _peak_bytes(tmp: Path, repeat: int, monkeypatch) -> tuple[int, int]:
    dirs = {r: _corpus_dir(tmp / f"c{repeat}" / r, 400, repeat, seed=k) for k, r in enumerate(("pre", "post", "ft"))}
    cfg = DataConfig(**{r: CorpusSpec("local", r, path=str(d)) for r, d in dirs.items()},
                     vocab_size=300, seq_len=32, val_tokens=256, val_fraction=0.1, bpe_sample_chars=20_000)
    chars = sum(f.stat().st_size for d in dirs.values() for f in d.iterdir())
    monkeypatch.setattr(shards, "_BATCH_CHARS", 50_000)  # tokenizer batches: the same bound at both sizes
    tracemalloc.start()
    try:
        prepare_data(cfg, cache_root=tmp / f"cache{repeat}", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, chars


def test_peak_memory_does_not_grow_with_document_length(tmp_path, monkeypatch):
    small, chars_small = _peak_bytes(tmp_path, 4, monkeypatch)
    large, chars_large = _peak_bytes(tmp_path, 40, monkeypatch)
    assert chars_large > 9 * chars_small
    assert large < 1.2 * small, (small, large)
    # the in-memory recipe held ~11 bytes per character; this stays far below one
    assert large < chars_large / 2, (large, chars_large)


def test_local_files_stream_line_by_line_into_the_whole_file_documents(tmp_path):
    """The streamed .txt/.jsonl readers give exactly the whole-text readers' documents."""
    import random

    from lm_experiments.data.sources import _stream_jsonl_documents, _stream_txt_documents, read_jsonl_documents, \
        read_txt_documents

    r = random.Random(0)
    pieces = ["a", "bb c", " ", "\t", "", "x y", "\r", "\x0c", "  z  ", "\t \t", "é東"]
    for k in range(400):
        text = "".join(r.choice(pieces) + r.choice(["\n", "\r\n", "", " "]) for _ in range(r.randint(0, 30)))
        p = tmp_path / f"{k}.txt"
        p.write_bytes(text.encode())
        with open(p, encoding="utf-8", errors="replace") as fh:
            assert list(_stream_txt_documents(fh)) == read_txt_documents(p.read_text(encoding="utf-8")), repr(text)
    rows = "\n".join(json.dumps({"text": f"doc {i}"}) if i % 3 else "  " for i in range(20)) + "\n"
    p = tmp_path / "x.jsonl"
    p.write_text(rows)
    with open(p, encoding="utf-8") as fh:
        assert list(_stream_jsonl_documents(fh, "text", "data.pre")) == read_jsonl_documents(rows, "text", "data.pre")
    p.write_text(rows + "{not json\n")
    from early_exposure.errors import ConfigError

    with open(p, encoding="utf-8") as fh, pytest.raises(ConfigError) as exc:
        list(_stream_jsonl_documents(fh, "text", "data.pre"))
    assert "line 21 is not JSON" in exc.value.message
