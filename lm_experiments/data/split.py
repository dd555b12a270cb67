"""Document-level train/validation split by a stable content hash.

A document goes to validation iff the last 64 bits of SHA-256 of its UTF-8 text, read
as a fraction of 2**64, fall below ``val_fraction``.  (Documents are *ordered* by the
whole digest, i.e. by its leading bits, for capping and packing; using the trailing
bits for the split keeps the two independent, so a capped corpus keeps ~val_fraction
of its documents for validation.)  Membership depends on the document
alone, so adding or removing other documents never moves an existing one between the
splits, and the split is identical on every machine and Python version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

_TWO64 = float(2**64)


def doc_hash(text: str) -> str:
    """Hex SHA-256 of a document's UTF-8 bytes (its identity everywhere in the pipeline)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_unit(h: str) -> float:
    """Map a hex SHA-256 digest to [0, 1) using its last 64 bits."""
    return int(h[-16:], 16) / _TWO64


def is_validation(h: str, val_fraction: float) -> bool:
    """True when the document with hash ``h`` belongs to the validation split."""
    return hash_unit(h) < val_fraction


def dedupe_sorted(docs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Drop empty and exactly duplicated documents; order the rest by content hash.

    Returns ``(texts, hashes)`` sorted by hash: a deterministic order that interleaves the
    sources of a corpus, used for capping, splitting and packing alike.
    """
    seen: dict[str, str] = {}
    for d in docs:
        if d and d.strip():
            seen.setdefault(doc_hash(d), d)
    hashes = sorted(seen)
    return [seen[h] for h in hashes], hashes


def cap_documents(
    texts: Sequence[str], hashes: Sequence[str], *, max_docs: int | None, max_chars: int | None
) -> tuple[list[str], list[str]]:
    """Keep the leading documents (in the given order) within ``max_docs`` / ``max_chars``.

    The document that crosses ``max_chars`` is kept (at least one document survives).
    """
    out_t: list[str] = []
    out_h: list[str] = []
    chars = 0
    for t, h in zip(texts, hashes):
        if max_docs is not None and len(out_t) >= max_docs:
            break
        if max_chars is not None and chars >= max_chars:
            break
        out_t.append(t)
        out_h.append(h)
        chars += len(t)
    return out_t, out_h


def split_documents(
    texts: Sequence[str], hashes: Sequence[str], val_fraction: float
) -> tuple[list[int], list[int]]:
    """Indices of training and validation documents (order preserved)."""
    train: list[int] = []
    val: list[int] = []
    for i, h in enumerate(hashes):
        (val if is_validation(h, val_fraction) else train).append(i)
    return train, val
