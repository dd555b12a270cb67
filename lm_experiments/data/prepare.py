"""``prepare_data``: corpora -> tokenizer -> packed train/validation token blocks, cached.

For each role (pre, post, ft) of the paper's protocol (Sec. 3.1-3.3): documents are
deduplicated and ordered by content hash, capped (``max_docs``/``max_chars``), split by
hash into train/validation (:mod:`~lm_experiments.data.split`), tokenized and packed
with EOS between documents (:mod:`~lm_experiments.data.packing`).  The validation blocks
are the fixed held-out sets on which L_pre, L_im/L_ret and L_ft are measured (Sec. 3:
"all losses are computed on held-out splits of the corresponding datasets"): the same
tokens for every run with the same :class:`DataConfig` (identified by ``fingerprint``).

Everything is cached under ``cache_root`` keyed by hashes of the config and of the
corpora's checksums; files are written atomically with ``meta.json`` (holding every
file's SHA-256) written last, so a second call only loads arrays (about a second).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from early_exposure.configs import to_dict
from early_exposure.errors import ConfigError
from early_exposure.io import atomic_write_bytes, atomic_write_json, stable_hash
from lm_experiments.data import sources
from lm_experiments.data.archives import sha256_file
from lm_experiments.data.config import ROLES, SECTION, DataConfig
from lm_experiments.data.packing import pack_documents
from lm_experiments.data.split import cap_documents, dedupe_sorted, split_documents
from lm_experiments.data.tokenizer import encode_documents, load_named, train_bpe

#: Bump when splitting/packing changes: part of every cache key and of the fingerprint.
DATA_VERSION = 1


@dataclass
class TokenSplit:
    """Packed token blocks of one role.

    Attributes:
        train: int32 (num_blocks, seq_len) training blocks in deterministic (hash) order;
            the trainer applies its own seeded ordering.
        val: int32 (num_val_blocks, seq_len) fixed held-out blocks.
        train_doc_hashes / val_doc_hashes: SHA-256 of every document with tokens in
            ``train`` / ``val`` (disjoint: the split is by these hashes).
    """

    train: np.ndarray
    val: np.ndarray
    train_doc_hashes: frozenset[str]
    val_doc_hashes: frozenset[str]


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


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _roles_docs(cfg: DataConfig, cache_root: Path) -> dict[str, tuple[list[str], list[str], list[int], list[int]]]:
    """Per role: (texts, hashes, train indices, val indices) after dedupe, cap and split."""
    out = {}
    for role in ROLES:
        spec = getattr(cfg, role)
        raw = sources.load_documents(spec, f"{SECTION}.{role}", cache_root)
        texts, hashes = dedupe_sorted(raw)
        texts, hashes = cap_documents(texts, hashes, max_docs=spec.max_docs, max_chars=spec.max_chars)
        if not texts:
            raise ConfigError(f"{SECTION}.{role}", "corpus holds no non-empty documents")
        tr, va = split_documents(texts, hashes, cfg.val_fraction)
        if not tr or not va:
            raise ConfigError(f"{SECTION}.val_fraction",
                              f"role {role!r}: {len(texts)} documents give {len(tr)} train / {len(va)} validation "
                              "documents; both must be non-empty (add documents or change val_fraction)")
        out[role] = (texts, hashes, tr, va)
    return out


def _tokenizer(cfg: DataConfig, idents: dict, docs: dict | None, cache_root: Path,
               loader: Callable[[], dict]) -> tuple[PreTrainedTokenizerFast, Path, str]:
    """Train (or load from cache) the BPE, or load the named tokenizer; return it, its
    directory and its cache key.  The BPE sees each role's first ``bpe_sample_chars``
    characters of training documents in hash order (never validation documents)."""
    key = stable_hash({"v": DATA_VERSION, "tokenizer": cfg.tokenizer, "vocab": cfg.vocab_size,
                       "sample": cfg.bpe_sample_chars, "val_fraction": cfg.val_fraction,
                       "corpora": {r: (idents[r]["sha256"], to_dict(getattr(cfg, r))) for r in ROLES}}, 16)
    tdir = cache_root / "tokenizers" / key
    done = tdir / "done.json"
    if done.is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(tdir)), tdir, key
    if cfg.tokenizer == "bpe":
        docs = docs if docs is not None else loader()
        sample: list[str] = []
        for role in ROLES:
            texts, _, tr, _ = docs[role]
            chosen = cap_documents([texts[i] for i in tr], [""] * len(tr), max_docs=None, max_chars=cfg.bpe_sample_chars)[0]
            sample += chosen
        tok = train_bpe(sample, cfg.vocab_size)
    else:
        tok = load_named(cfg.tokenizer)
    tdir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(tdir))
    atomic_write_json(done, {"key": key, "tokenizer": cfg.tokenizer, "vocab_size": len(tok)})
    return tok, tdir, key


def _pack_role(tok: PreTrainedTokenizerFast, texts: list[str], hashes: list[str], idx: list[int],
               seq_len: int, max_blocks: int | None, desc: str, progress: bool) -> tuple[np.ndarray, frozenset[str], dict]:
    """Tokenize documents ``idx`` in order until ``max_blocks`` blocks are filled; pack."""
    from tqdm.auto import tqdm

    need = None if max_blocks is None else max_blocks * seq_len
    ids: list[list[int]] = []
    used: list[int] = []
    total = chars = 0
    bar = tqdm(total=need if need is not None else None, desc=desc, unit="tok", unit_scale=True,
               disable=not progress, leave=False)
    chunk = 512
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        for i, t in zip(part, encode_documents(tok, [texts[i] for i in part])):
            if need is not None and total >= need:
                break
            ids.append(t)
            used.append(i)
            total += len(t) + 1
            chars += len(texts[i])
            bar.update(len(t) + 1)
        if need is not None and total >= need:
            break
    bar.close()
    blocks, dropped = pack_documents(ids, eos_id=int(tok.eos_token_id), seq_len=seq_len, max_blocks=max_blocks)
    # documents whose tokens (or EOS) landed inside the kept blocks
    kept_tokens = blocks.size
    in_blocks: list[str] = []
    pos = 0
    for i, t in zip(used, ids):
        if pos >= kept_tokens:
            break
        in_blocks.append(hashes[i])
        pos += len(t) + 1
    info = {"documents": len(in_blocks), "tokens": int(blocks.size), "stream_tokens": total,
            "dropped_tokens": int(dropped), "chars_per_token": round(chars / max(total, 1), 3)}
    return blocks, frozenset(in_blocks), info


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
    idents = {r: sources.corpus_identity(getattr(cfg, r), f"{SECTION}.{r}", cache_root, progress=progress)
              for r in ROLES}
    fingerprint = stable_hash({"v": DATA_VERSION, "config": to_dict(cfg),
                               "corpora": {r: idents[r]["sha256"] for r in ROLES}}, 16)
    pdir = cache_root / "prepared" / fingerprint
    meta_path = pdir / "meta.json"
    cached = _load_cached(pdir, meta_path)
    if cached is not None:
        splits, meta = cached
        tok = PreTrainedTokenizerFast.from_pretrained(meta["tokenizer_dir"])
        stats = {**meta["stats"], "cache_hit": True, "seconds": round(time.perf_counter() - t0, 3)}
        return PreparedData(tok, Path(meta["tokenizer_dir"]), splits, fingerprint, stats)

    docs: dict | None = None

    def loader() -> dict:
        nonlocal docs
        if docs is None:
            docs = _roles_docs(cfg, cache_root)
        return docs

    tok, tdir, tok_key = _tokenizer(cfg, idents, docs, cache_root, loader)
    docs = loader()
    max_train_blocks = None if cfg.max_train_tokens is None else cfg.max_train_tokens // cfg.seq_len
    splits: dict[str, TokenSplit] = {}
    stats: dict = {"fingerprint": fingerprint, "tokenizer": cfg.tokenizer, "vocab_size": len(tok),
                   "tokenizer_key": tok_key, "seq_len": cfg.seq_len, "roles": {}}
    files: dict[str, str] = {}
    vals = {}
    for role in ROLES:  # all held-out sets first: a too-small one fails before the long part
        texts, hashes, tr, va = docs[role]
        vals[role] = _pack_role(tok, texts, hashes, va, cfg.seq_len, cfg.num_val_blocks, f"{role} val", progress)
        if vals[role][0].shape[0] < cfg.num_val_blocks:
            raise ConfigError(f"{SECTION}.val_tokens",
                              f"role {role!r}: its validation documents hold {vals[role][2]['stream_tokens']} tokens, "
                              f"fewer than val_tokens={cfg.val_tokens}; lower val_tokens, raise val_fraction or add "
                              f"data ({SECTION}.{role}.max_chars / max_docs)")
    for role in ROLES:
        texts, hashes, tr, va = docs[role]
        val, val_h, vinfo = vals[role]
        train, train_h, tinfo = _pack_role(tok, texts, hashes, tr, cfg.seq_len, max_train_blocks,
                                           f"{role} train", progress)
        if train.shape[0] == 0:
            raise ConfigError(f"{SECTION}.{role}", f"training documents hold fewer than seq_len={cfg.seq_len} tokens")
        splits[role] = TokenSplit(train, val, train_h, val_h)
        spec = getattr(cfg, role)
        stats["roles"][role] = {
            "source": spec.source, "name": spec.name, "corpus_sha256": idents[role]["sha256"],
            "documents": len(texts), "train_documents_available": len(tr), "val_documents_available": len(va),
            "train": tinfo, "val": vinfo, "sources": idents[role]["sources"], "missing_sources": idents[role]["missing"],
        }
        for split, arr, hs in (("train", train, train_h), ("val", val, val_h)):
            p = atomic_write_bytes(pdir / f"{role}_{split}.npy", _npy_bytes(arr))
            files[p.name] = sha256_file(p)
            p = atomic_write_bytes(pdir / f"{role}_{split}_docs.json", json.dumps(sorted(hs)).encode())
            files[p.name] = sha256_file(p)
    # identifies the held-out token sets alone (unchanged by e.g. max_train_tokens)
    stats["eval_fingerprint"] = stable_hash({r: files[f"{r}_val.npy"] for r in ROLES}, 16)
    stats["seconds_build"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(meta_path, {"fingerprint": fingerprint, "config": to_dict(cfg), "tokenizer_dir": str(tdir),
                                  "files": files, "stats": stats})
    return PreparedData(tok, tdir, splits, fingerprint, {**stats, "cache_hit": False})


def _load_cached(pdir: Path, meta_path: Path) -> tuple[dict[str, TokenSplit], dict] | None:
    """The cached splits if every file is present with its recorded checksum."""
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if not Path(meta["tokenizer_dir"], "done.json").is_file():
        return None
    for name, sha in meta["files"].items():
        p = pdir / name
        if not p.is_file() or sha256_file(p) != sha:
            return None
    splits = {}
    for role in ROLES:
        arrs = [np.load(pdir / f"{role}_{s}.npy", allow_pickle=False) for s in ("train", "val")]
        hs = [frozenset(json.loads((pdir / f"{role}_{s}_docs.json").read_text())) for s in ("train", "val")]
        splits[role] = TokenSplit(arrs[0], arrs[1], hs[0], hs[1])
    return splits, meta
