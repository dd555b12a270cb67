"""``prepare_data``: corpora -> tokenizer -> packed train/validation token blocks, cached.

For each role (pre, post, ft) of the paper's protocol (Sec. 3.1-3.3): documents are
deduplicated and ordered by content hash, capped (``max_docs``/``max_chars``), split by
hash into train/validation (:mod:`~lm_experiments.data.split`), tokenized and packed
with EOS between documents (:mod:`~lm_experiments.data.packing`). The work streams over
the corpus in passes that hold fixed-size records per document, never the texts or their
tokens (:mod:`~lm_experiments.data.shards`): tokens go to an on-disk shard, the packed
blocks straight into ``.npy`` files that are read back memory-mapped, so memory stays
bounded by the number of documents whatever their size.  The validation blocks
are the fixed held-out sets on which L_pre, L_im/L_ret and L_ft are measured (Sec. 3:
"all losses are computed on held-out splits of the corresponding datasets"): the same
tokens for every run with the same :class:`DataConfig` (identified by ``fingerprint``).

Everything is cached under ``cache_root`` keyed by hashes of the config and of the
corpora's checksums; files are written atomically with ``meta.json`` (holding every
file's SHA-256) written last, so a second call only loads arrays (about a second).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from early_exposure import integrity
from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.io import atomic_write_bytes, atomic_write_json, stable_hash
from lm_experiments.data import sources, synthetic
from lm_experiments.data.archives import sha256_file
from lm_experiments.data.config import ROLES, SECTION, WORD_TOKENIZER, DataConfig
from lm_experiments.data.shards import (DocIndex, TokenShard, bpe_sample, cut_document, pack_to_npy, scan,
                                        tokenize_to_shard)
from lm_experiments.data.tokenizer import load_named, train_bpe, word_level

#: Bump when splitting/packing changes: part of every cache key and of the fingerprint.
DATA_VERSION = 1


@dataclass
class TokenSplit:
    """Packed token blocks of one role.

    Attributes:
        train: int32 (num_blocks, seq_len) training blocks in deterministic (hash) order,
            memory-mapped from the cache; the trainer applies its own seeded ordering.
        val: int32 (num_val_blocks, seq_len) fixed held-out blocks (memory-mapped): what
            early stopping selects on.
        train_docs / val_docs: the JSON files listing the SHA-256 of every document with
            tokens in ``train`` / ``val``; read on first use of :attr:`train_doc_hashes` /
            :attr:`val_doc_hashes` (disjoint: the split is by these hashes).
        test / test_docs: the test split (``DataConfig.test_fraction`` > 0) on which the
            reported losses are measured, or None; :attr:`report` is ``test`` when there
            is one, else ``val``.
    """

    train: np.ndarray
    val: np.ndarray
    train_docs: Path
    val_docs: Path
    test: np.ndarray | None = None
    test_docs: Path | None = None

    @property
    def report(self) -> np.ndarray:
        """The blocks the reported losses are measured on (test, else validation)."""
        return self.test if self.test is not None else self.val

    @functools.cached_property
    def test_doc_hashes(self) -> frozenset[str]:
        return frozenset(json.loads(Path(self.test_docs).read_text())) if self.test_docs else frozenset()

    @functools.cached_property
    def train_doc_hashes(self) -> frozenset[str]:
        return frozenset(json.loads(Path(self.train_docs).read_text()))

    @functools.cached_property
    def val_doc_hashes(self) -> frozenset[str]:
        return frozenset(json.loads(Path(self.val_docs).read_text()))


@dataclass
class PreparedData:
    """Output of :func:`prepare_data` (see the module docstring)."""

    tokenizer: PreTrainedTokenizerFast
    tokenizer_dir: Path
    splits: dict[str, TokenSplit]
    fingerprint: str
    stats: dict


def default_cache_root() -> Path:
    """``$EARLY_EXPOSURE_CACHE`` or ``~/.cache/early_exposure``."""
    env = os.environ.get("EARLY_EXPOSURE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "early_exposure"


def _docs(cfg: DataConfig, role: str, cache_root: Path) -> Iterator[str]:
    """A fresh stream over the documents of ``role`` (each pass re-reads the corpus), long
    ones cut into pieces of at most ``max_doc_chars`` when it is set."""
    spec = getattr(cfg, role)
    if spec.source == "synthetic":  # generated (cached in memory), one document per block
        return iter(synthetic.documents(cfg.synthetic, spec.name, cfg.seq_len))
    docs = sources.iter_documents(getattr(cfg, role), f"{SECTION}.{role}", cache_root)
    if cfg.max_doc_chars is None:
        return docs
    return (piece for d in docs for piece in cut_document(d, cfg.max_doc_chars))


def _corpus_identity(cfg: DataConfig, role: str, cache_root: Path, progress: bool) -> dict:
    """:func:`sources.corpus_identity`; for a synthetic role, the SHA-256 of its generated
    documents (so a change of the generator moves every cache key)."""
    spec = getattr(cfg, role)
    if spec.source != "synthetic":
        return sources.corpus_identity(spec, f"{SECTION}.{role}", cache_root, progress=progress)
    h = hashlib.sha256()
    for d in synthetic.documents(cfg.synthetic, spec.name, cfg.seq_len):
        h.update(d.encode("utf-8") + b"\0")
    return {"source": "synthetic", "name": spec.name, "sha256": h.hexdigest(),
            "sources": [{"generator": "lm_experiments.data.synthetic", "license": "generated"}], "missing": []}


def _index_roles(cfg: DataConfig, cache_root: Path) -> dict[str, DocIndex]:
    """Per role: hash order, cap and split (pass 1), with the too-few-documents checks."""
    out = {}
    for role in ROLES:
        spec = getattr(cfg, role)
        idx = scan(_docs(cfg, role, cache_root), max_docs=spec.max_docs, max_chars=spec.max_chars,
                   val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
        if len(idx.digests) == 0:
            raise ConfigError(f"{SECTION}.{role}", "corpus holds no non-empty documents")
        if len(idx.train) == 0 or len(idx.val) == 0:
            raise ConfigError(f"{SECTION}.val_fraction",
                              f"role {role!r}: {len(idx.digests)} documents give {len(idx.train)} train / "
                              f"{len(idx.val)} validation documents; both must be non-empty (add documents or "
                              "change val_fraction)")
        if cfg.test_fraction and len(idx.test) == 0:
            raise ConfigError(f"{SECTION}.test_fraction",
                              f"role {role!r}: no document falls in the test split of {len(idx.digests)} documents; "
                              "raise test_fraction or set max_doc_chars to cut long documents")
        out[role] = idx
    return out


def _tokenizer(cfg: DataConfig, idents: dict, index: dict[str, DocIndex], cache_root: Path
               ) -> tuple[PreTrainedTokenizerFast, Path, str]:
    """Train (or load from cache) the BPE, or load the named tokenizer; return it, its
    directory and its cache key.  The BPE sees each role's first ``bpe_sample_chars``
    characters of training documents in hash order (never validation documents)."""
    ident = {"v": DATA_VERSION, "tokenizer": cfg.tokenizer, "vocab": cfg.vocab_size,
             "sample": cfg.bpe_sample_chars, "val_fraction": cfg.val_fraction,
             "corpora": {r: (idents[r]["sha256"], to_dict(getattr(cfg, r))) for r in ROLES}}
    for k in ("test_fraction", "max_doc_chars"):  # they change the training documents; absent at defaults
        if k in cfg.identity():
            ident[k] = getattr(cfg, k)
    key = stable_hash(ident, 16)
    tdir = cache_root / "tokenizers" / key
    done = tdir / "done.json"
    if done.is_file():
        why = tokenizer_damage(tdir)
        if why is None:
            return PreTrainedTokenizerFast.from_pretrained(str(tdir)), tdir, key
        integrity.report(why, "training the tokenizer again")
        done.unlink()
    if cfg.tokenizer == WORD_TOKENIZER:  # the synthetic world's closed vocabulary, one word = one token
        tok = word_level(synthetic.build_world(cfg.synthetic).vocab, synthetic.UNK_TOKEN)
    elif cfg.tokenizer == "bpe":
        sample: list[str] = []
        for role in ROLES:
            sample += bpe_sample(_docs(cfg, role, cache_root), index[role], cfg.bpe_sample_chars)
        tok = train_bpe(sample, cfg.vocab_size)
    else:
        tok = load_named(cfg.tokenizer)
    tdir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(tdir))
    atomic_write_json(done, {"key": key, "tokenizer": cfg.tokenizer, "vocab_size": len(tok),
                             "files": integrity.records(tdir, integrity.tree_files(tdir, exclude=("done.json",)))})
    return tok, tdir, key


def tokenizer_damage(tdir: Path) -> str | None:
    """What is wrong with the cached tokenizer ``tdir`` (None: intact): ``done.json``
    (written last) unreadable, or a file differing from the sizes and SHA-256s it records
    (a tokenizer cached before they were recorded: its JSON files must parse)."""
    done, why = integrity.read_json(Path(tdir) / "done.json")
    if why is None and not isinstance(done, dict):
        why = f"{Path(tdir) / 'done.json'} is not a tokenizer record"
    if why is None:
        why = (integrity.check_records(tdir, done["files"]) if done.get("files") is not None
               else integrity.check_tree(tdir, integrity.tree_files(tdir, exclude=("done.json",))))
    return why


def _pack_split(shard: TokenShard, idx: DocIndex, positions: np.ndarray, eos_id: int, seq_len: int,
                max_blocks: int | None, path: Path) -> tuple[frozenset[str], dict]:
    """Pack one split into ``path``; its document hashes and statistics."""
    in_blocks, read, total, blocks = pack_to_npy(shard, positions, eos_id=eos_id, seq_len=seq_len,
                                                 max_blocks=max_blocks, path=path)
    stream = int((shard.length[read] + 1).sum())
    chars = int(idx.chars[read].sum())
    info = {"documents": int(len(in_blocks)), "tokens": blocks * seq_len, "stream_tokens": stream,
            "dropped_tokens": stream - blocks * seq_len, "chars_per_token": round(chars / max(stream, 1), 3)}
    return frozenset(idx.hexes(in_blocks)), info


def _pack_held_out(shard: TokenShard, idx: DocIndex, positions: np.ndarray, eos_id: int, cfg: DataConfig,
                   role: str, split: str, n_blocks: int, work: Path) -> tuple[frozenset[str], dict]:
    """Pack a held-out split (``val`` / ``test``) of ``n_blocks``; a split whose documents
    hold fewer tokens raises a ConfigError naming the field to change."""
    out = _pack_split(shard, idx, positions, eos_id, cfg.seq_len, n_blocks, work / f"{role}_{split}.npy")
    if out[1]["tokens"] < n_blocks * cfg.seq_len:
        field, frac = ("val_tokens", "val_fraction") if split == "val" else ("test_tokens", "test_fraction")
        raise ConfigError(f"{SECTION}.{field}",
                          f"role {role!r}: its {'validation' if split == 'val' else 'test'} documents hold "
                          f"{out[1]['stream_tokens']} tokens, fewer than {field}={n_blocks * cfg.seq_len}; lower "
                          f"{field}, raise {frac} or add data ({SECTION}.{role}.max_chars / max_docs)")
    return out


def prepare_data(cfg: DataConfig, *, cache_root: Path | None = None, progress: bool = True) -> PreparedData:
    """Build (or load from cache) the tokenizer and packed token splits of ``cfg``.

    Raises:
        ConfigError: a corpus, package, file or network resource is missing (the field
            names the role, e.g. ``data.post.name``), or a split is too small for
            ``val_tokens``.
    """
    if not isinstance(cfg, DataConfig):
        raise ConfigError(SECTION, f"expected a DataConfig, got {type(cfg).__name__}")
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    t0 = time.perf_counter()
    idents = {r: _corpus_identity(cfg, r, cache_root, progress) for r in ROLES}
    fingerprint = stable_hash({"v": DATA_VERSION, "config": cfg.identity(),
                               "corpora": {r: idents[r]["sha256"] for r in ROLES}}, 16)
    pdir = cache_root / "prepared" / fingerprint
    meta_path = pdir / "meta.json"
    # one process builds a fingerprint at a time; another waits, then loads what it built
    with integrity.unit_lock(pdir.parent / f".{fingerprint}.lock", optional=True, on_wait=lambda m: print(
            f"[data] {m}", file=sys.stderr, flush=True)):
        return _load_or_build(cfg, cache_root, idents, fingerprint, pdir, meta_path, t0, progress)


def _load_or_build(cfg: DataConfig, cache_root: Path, idents: dict, fingerprint: str, pdir: Path, meta_path: Path,
                   t0: float, progress: bool) -> PreparedData:
    """The cached preparation of ``fingerprint`` when intact, else build it (see
    :func:`prepare_data`)."""
    cached = _load_cached(pdir, meta_path)
    if cached is not None:
        splits, meta = cached
        tdir = cache_root / meta["tokenizer_dir"]  # relative to the cache (an absolute one: older caches)
        tok = PreTrainedTokenizerFast.from_pretrained(str(tdir))
        stats = {**meta["stats"], "cache_hit": True, "seconds": round(time.perf_counter() - t0, 3)}
        return PreparedData(tok, tdir, splits, fingerprint, stats)

    from tqdm.auto import tqdm

    index = _index_roles(cfg, cache_root)
    tok, tdir, tok_key = _tokenizer(cfg, idents, index, cache_root)
    max_train_blocks = None if cfg.max_train_tokens is None else cfg.max_train_tokens // cfg.seq_len
    eos = int(tok.eos_token_id)
    stats: dict = {"fingerprint": fingerprint, "tokenizer": cfg.tokenizer, "vocab_size": len(tok),
                   "tokenizer_key": tok_key, "seq_len": cfg.seq_len, "roles": {}}
    files: dict[str, str] = {}
    pdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=pdir))
    try:
        shards: dict[str, TokenShard] = {}
        vals: dict[str, tuple[frozenset[str], dict]] = {}
        tests: dict[str, tuple[frozenset[str], dict]] = {}
        backend = tok.backend_tokenizer

        def encode(texts: list[str]) -> Iterator[list[int]]:
            return (e.ids for e in backend.encode_batch(texts, add_special_tokens=False))

        for role in ROLES:  # every held-out set first: a too-small one fails before the long part
            idx = index[role]
            bar = tqdm(desc=f"{role} tokenize", unit="tok", unit_scale=True, disable=not progress, leave=False)
            shards[role] = tokenize_to_shard(_docs(cfg, role, cache_root), idx, encode, len(tok),
                                             work / f"{role}.tokens", progress=bar.update)
            bar.close()
            vals[role] = _pack_held_out(shards[role], idx, idx.val, eos, cfg, role, "val", cfg.num_val_blocks, work)
            if cfg.num_test_blocks:
                tests[role] = _pack_held_out(shards[role], idx, idx.test, eos, cfg, role, "test", cfg.num_test_blocks,
                                             work)
        for role in ROLES:
            idx = index[role]
            train_h, tinfo = _pack_split(shards[role], idx, idx.train, eos, cfg.seq_len, max_train_blocks,
                                         work / f"{role}_train.npy")
            if tinfo["tokens"] == 0:
                raise ConfigError(f"{SECTION}.{role}", f"training documents hold fewer than seq_len={cfg.seq_len} tokens")
            (work / f"{role}.tokens").unlink()
            val_h, vinfo = vals[role]
            spec = getattr(cfg, role)
            stats["roles"][role] = {
                "source": spec.source, "name": spec.name, "corpus_sha256": idents[role]["sha256"],
                "documents": len(idx.digests), "train_documents_available": len(idx.train),
                "val_documents_available": len(idx.val), "train": tinfo, "val": vinfo,
                **({"test_documents_available": len(idx.test), "test": tests[role][1]} if role in tests else {}),
                "sources": idents[role]["sources"], "missing_sources": idents[role]["missing"],
            }
            held = [("train", train_h), ("val", val_h)] + ([("test", tests[role][0])] if role in tests else [])
            for split, hs in held:
                p = pdir / f"{role}_{split}.npy"
                os.replace(work / f"{role}_{split}.npy", p)
                files[p.name] = sha256_file(p)
                p = atomic_write_bytes(pdir / f"{role}_{split}_docs.json", json.dumps(sorted(hs)).encode())
                files[p.name] = sha256_file(p)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # identifies the held-out token sets alone (unchanged by e.g. max_train_tokens)
    stats["eval_fingerprint"] = stable_hash({r: files[f"{r}_val.npy"] for r in ROLES}, 16)
    stats["seconds_build"] = round(time.perf_counter() - t0, 2)
    if tests:
        stats["test_fingerprint"] = stable_hash({r: files[f"{r}_test.npy"] for r in ROLES}, 16)
    atomic_write_json(meta_path, {"fingerprint": fingerprint, "config": _config_record(cfg), "tokenizer_dir": tdir.relative_to(cache_root).as_posix(),
                                  "files": files, "stats": stats})
    splits, _ = _load_cached(pdir, meta_path, verify=False)
    return PreparedData(tok, tdir, splits, fingerprint, {**stats, "cache_hit": False})


def _config_record(cfg: DataConfig) -> dict:
    """The config as ``meta.json`` records it: ``synthetic`` only for synthetic roles (so
    the other configs' records keep their bytes: it is null there)."""
    d = to_dict(cfg)
    if not cfg.is_synthetic:
        d.pop("synthetic", None)
    return d


def _load_cached(pdir: Path, meta_path: Path, *, verify: bool = True) -> tuple[dict[str, TokenSplit], dict] | None:
    """The cached splits (memory-mapped) if ``meta.json`` and the tokenizer are intact and
    every file is present with its recorded checksum; else None (rebuilt by the caller; a
    damaged ``meta.json`` or tokenizer is reported in one line)."""
    if not meta_path.is_file():
        return None
    meta, why = integrity.read_json(meta_path)
    if why is None and (not isinstance(meta, dict) or not {"tokenizer_dir", "files", "stats"} <= set(meta)):
        why = f"{meta_path} is not a prepared-data record"
    if why is not None:
        integrity.report(why, "preparing the data again")
        return None
    tdir = pdir.parent.parent / meta["tokenizer_dir"]
    if not (tdir / "done.json").is_file() or tokenizer_damage(tdir) is not None:
        return None  # rebuilt, and reported, by _tokenizer
    if verify:
        for name, sha in meta["files"].items():
            p = pdir / name
            if not p.is_file() or sha256_file(p) != sha:
                integrity.report(f"{p} is missing" if not p.is_file() else
                                 f"{p}: SHA-256 differs from the one recorded in {meta_path.name} (corrupted)",
                                 "preparing the data again")
                return None
    splits = {}
    for role in ROLES:
        arrs = [np.load(pdir / f"{role}_{s}.npy", mmap_mode="c", allow_pickle=False)  # copy-on-write: writable views
                for s in ("train", "val")]
        test = test_docs = None
        if f"{role}_test.npy" in meta["files"]:
            test = np.load(pdir / f"{role}_test.npy", mmap_mode="c", allow_pickle=False)
            test_docs = pdir / f"{role}_test_docs.json"
        splits[role] = TokenSplit(arrs[0], arrs[1], pdir / f"{role}_train_docs.json", pdir / f"{role}_val_docs.json",
                                  test, test_docs)
    return splits, meta
