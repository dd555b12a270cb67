"""Streaming, memory-bounded preparation of one corpus role into on-disk token arrays.

The same token streams as the in-memory recipe (dedupe, order by content hash, cap, split
by hash, tokenize, pack with EOS between documents; :mod:`~lm_experiments.data.split`,
:mod:`~lm_experiments.data.packing`), computed in passes over the document stream that keep
only fixed-size records per document in memory, never the texts or their tokens:

1. :func:`scan`: SHA-256, length and first position of every distinct non-empty document
   (48 bytes per document, numpy arrays), then hash order, ``max_docs``/``max_chars`` cap and
   the train/validation split (:class:`DocIndex`);
2. :func:`bpe_sample` (BPE only): the texts of the leading training documents in hash order,
   up to ``bpe_sample_chars`` characters;
3. :func:`tokenize_to_shard`: every kept document tokenized in stream order into a flat
   uint16/uint32 token shard on disk (:class:`TokenShard`: offsets and lengths per document);
4. :func:`pack_to_npy`: the documents of one split in hash order (each read from the shard
   with one ``pread``), EOS after each, cut into blocks of ``seq_len`` tokens written in
   chunks into an int32 ``.npy`` file (read back memory-mapped).

Memory therefore grows with the number of documents (about 100 bytes each), not with their
characters: a corpus ten times larger in characters but with the same document count costs
the same memory (``benchmarks/lm_data_prep.py`` measures it).
"""

from __future__ import annotations

import dataclasses

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_experiments.data.split import _TWO64

_BATCH_CHARS = 1_000_000  # characters per tokenizer batch (bounds the texts and the tokenizer's encodings held at once)
_WRITE_TOKENS = 1 << 18  # tokens per write of the packed output


@dataclass
class DocIndex:
    """The documents of one role after dedupe, cap and split, in hash order.

    Attributes:
        digests: (n, 32) uint8 SHA-256 digests, ascending (= ascending hex hashes).
        chars: (n,) int64 characters per document.
        train, val, test: int64 positions (into ``digests``) of the training / validation /
            test documents, in hash order (``test`` empty without a test split).
    """

    digests: np.ndarray
    chars: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        self._lead = _lead_keys(self.digests)  # (n,) uint64: first 8 bytes, ascending

    def hexes(self, positions: np.ndarray) -> list[str]:
        return [self.digests[p].tobytes().hex() for p in positions]

    def position(self, digest: bytes) -> int:
        """Position of ``digest`` in hash order, or -1 if it is not a kept document."""
        lead = np.uint64(int.from_bytes(digest[:8], "big"))
        lo = int(np.searchsorted(self._lead, lead, side="left"))
        hi = int(np.searchsorted(self._lead, lead, side="right"))
        for i in range(lo, hi):  # almost always one candidate
            if self.digests[i].tobytes() == digest:
                return i
        return -1


def _lead_keys(digests: np.ndarray) -> np.ndarray:
    return np.frombuffer(np.ascontiguousarray(digests[:, :8]).tobytes(), dtype=">u8").astype(np.uint64)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _kept(text: str) -> bool:
    return bool(text) and bool(text.strip())


def scan(docs: Iterable[str], *, max_docs: int | None, max_chars: int | None, val_fraction: float,
         test_fraction: float = 0.0) -> DocIndex:
    """Pass 1 (see the module docstring): hash order, cap (the document crossing
    ``max_chars`` is kept) and split (``hash_unit < val_fraction`` -> validation,
    ``val_fraction <= hash_unit < val_fraction + test_fraction`` -> test)."""
    dig = bytearray()
    chars: list[int] = []
    for text in docs:
        if _kept(text):
            dig += _digest(text)
            chars.append(len(text))
    raw = np.frombuffer(bytes(dig), dtype=np.uint8).reshape(-1, 32)
    words = np.frombuffer(raw.tobytes(), dtype=">u8").reshape(-1, 4).astype(np.uint64)
    order = np.lexsort(words.T[::-1])  # bytewise ascending (= hex order); stable: first occurrence first
    srt = words[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (srt[1:] != srt[:-1]).any(axis=1)
    first = order[new]
    uniq = raw[first]
    n_chars = np.asarray(chars, dtype=np.int64)[first] if len(first) else np.zeros(0, np.int64)
    keep = len(uniq)
    if max_docs is not None:
        keep = min(keep, max_docs)
    if max_chars is not None and keep:
        before = np.concatenate([[0], np.cumsum(n_chars[:keep])[:-1]])  # characters before each document
        keep = int(np.searchsorted(before, max_chars, side="left"))   # first document with `before >= max_chars`
    uniq, n_chars = uniq[:keep], n_chars[:keep]
    units = np.array([int.from_bytes(d[-8:].tobytes(), "big") / _TWO64 for d in uniq], dtype=np.float64)
    is_val = units < val_fraction
    is_test = ~is_val & (units < val_fraction + test_fraction)
    pos = np.arange(keep, dtype=np.int64)
    return DocIndex(uniq, n_chars, pos[~is_val & ~is_test], pos[is_val], pos[is_test])


def cut_document(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ``max_chars`` characters: whole paragraphs (blank-line
    separated) gathered greedily; a paragraph too long alone is cut at line ends, and a
    line too long alone is cut hard. Pieces keep their own text exactly (joined with the
    separator they were split at, which is dropped at a cut)."""
    if len(text) <= max_chars:
        return [text]

    def pieces(parts: list[str], sep: str, finer: Callable[[str], list[str]]) -> list[str]:
        out: list[str] = []
        cur = ""
        for part in parts:
            if len(part) > max_chars:
                if cur:
                    out.append(cur)
                    cur = ""
                out += finer(part)
                continue
            joined = part if not cur else cur + sep + part
            if len(joined) <= max_chars:
                cur = joined
            else:
                out.append(cur)
                cur = part
        if cur:
            out.append(cur)
        return out

    def hard(line: str) -> list[str]:
        return [line[i:i + max_chars] for i in range(0, len(line), max_chars)]

    def by_line(par: str) -> list[str]:
        return pieces(par.split("\n"), "\n", hard)

    return [p for p in pieces(text.split("\n\n"), "\n\n", by_line) if p.strip()]


def bpe_sample(docs: Iterable[str], index: DocIndex, sample_chars: int) -> list[str]:
    """Pass 2: the leading training documents in hash order until ``sample_chars``
    characters are reached (the one crossing it included)."""
    if len(index.train) == 0:
        return []
    tr_chars = index.chars[index.train]
    before = np.concatenate([[0], np.cumsum(tr_chars)[:-1]])
    n = int(np.searchsorted(before, sample_chars, side="left"))
    wanted = {d.tobytes(): i for i, d in enumerate(index.digests[index.train[:n]])}
    found: dict[int, str] = {}
    for text in docs:
        if len(found) == len(wanted):
            break
        if _kept(text):
            i = wanted.get(_digest(text))
            if i is not None and i not in found:
                found[i] = text
    return [found[i] for i in range(n)]


@dataclass
class TokenShard:
    """The tokens of every kept document of a role, on disk: ``tokens[offset[p]: offset[p] +
    length[p]]`` are the ids of the document at hash-order position ``p``."""

    path: Path
    dtype: np.dtype
    offset: np.ndarray  # (n,) int64
    length: np.ndarray  # (n,) int64

    def read(self, fd: int, p: int, count: int) -> np.ndarray:
        """The first ``count`` token ids of document ``p`` (one ``pread``: no mapping of the
        shard, whose pages would otherwise stay resident)."""
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(fd, count * size, int(self.offset[p]) * size), dtype=self.dtype)


def tokenize_to_shard(docs: Iterable[str], index: DocIndex, encode: Callable[[list[str]], Iterator[list[int]]],
                      vocab_size: int, path: Path, progress: Callable[[int], None] | None = None) -> TokenShard:
    """Pass 3: tokenize each kept document once, in stream order, appending to ``path``."""
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    n = len(index.digests)
    offset = np.full(n, -1, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        batch: list[str] = []
        where: list[int] = []
        size = 0

        def flush() -> None:
            nonlocal written, size
            for p, ids in zip(where, encode(batch)):
                arr = np.asarray(ids, dtype=dtype)
                fh.write(arr.tobytes())
                offset[p], length[p] = written, arr.size
                written += arr.size
                if progress is not None:
                    progress(arr.size + 1)
            batch.clear()
            where.clear()
            size = 0

        for text in docs:
            if not _kept(text):
                continue
            p = index.position(_digest(text))
            if p < 0 or offset[p] >= 0 or p in where:
                continue  # capped away, or a duplicate already tokenized
            batch.append(text)
            where.append(p)
            size += len(text)
            if size >= _BATCH_CHARS:
                flush()
        if batch:
            flush()
    missing = int((offset < 0).sum())
    if missing:
        raise RuntimeError(f"{missing} indexed documents did not reappear in the stream (the corpus changed?)")
    return TokenShard(path, dtype, offset, length)


def pack_to_npy(shard: TokenShard, positions: np.ndarray, *, eos_id: int, seq_len: int, max_blocks: int | None,
                path: Path) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pass 4: documents ``positions`` (hash order) with EOS after each, cut into blocks of
    ``seq_len`` (trailing partial block dropped; at most ``max_blocks``), written into the
    int32 ``.npy`` file ``path``. Returns ``(positions whose tokens or EOS lie in the kept
    blocks, positions a tokenizer stopping at max_blocks would have read, stream tokens of
    all positions, blocks)``."""
    lengths = shard.length[positions] + 1
    total = int(lengths.sum())
    num_blocks = total // seq_len
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    need = num_blocks * seq_len
    if num_blocks == 0:  # (a zero-length file cannot be memory-mapped)
        np.save(path, np.zeros((0, seq_len), dtype=np.int32), allow_pickle=False)
        n_read = len(positions)
        return positions[:0], positions[:n_read], total, 0
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False,
              "shape": (num_blocks, seq_len)}
    pos = 0
    used = 0
    buf = np.empty(_WRITE_TOKENS, dtype=np.int32)
    fill = 0
    fd = os.open(shard.path, os.O_RDONLY)
    try:
        with open(path, "wb") as out:
            np.lib.format.write_array_header_1_0(out, header)
            for p, n in zip(positions, lengths):
                if pos >= need:
                    break
                used += 1
                take = min(int(n), need - pos)
                body = min(take, int(n) - 1)
                piece = np.empty(take, dtype=np.int32)
                piece[:body] = shard.read(fd, int(p), body)
                if take == n:
                    piece[-1] = eos_id
                pos += take
                if fill + take > len(buf):
                    out.write(buf[:fill].data)
                    fill = 0
                if take > len(buf):
                    out.write(piece.data)
                else:
                    buf[fill: fill + take] = piece
                    fill += take
            out.write(buf[:fill].data)
    finally:
        os.close(fd)
    # the documents a tokenizer stopping once max_blocks blocks are covered would have read
    # (all of them without max_blocks): the statistics of the in-memory recipe
    if max_blocks is None:
        n_read = len(positions)
    else:
        cum = np.cumsum(lengths)
        n_read = min(int(np.searchsorted(cum, max_blocks * seq_len, side="left")) + 1, len(positions))
    return positions[:used], positions[:n_read], total, num_blocks


__all__ = ["DocIndex", "TokenShard", "scan", "bpe_sample", "tokenize_to_shard", "pack_to_npy"]
