"""Packing tokenized documents into fixed-length blocks.

Documents are concatenated in order with one EOS token after each document
(``doc_0 EOS doc_1 EOS ...``) and the stream is cut into consecutive blocks of
``seq_len`` tokens; the trailing partial block is dropped.  No padding is used, so every
position of every block is a real next-token target, and the token count is conserved:
``blocks.size + remainder == sum(len(doc) + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_documents(
    docs: Sequence[Sequence[int] | np.ndarray], *, eos_id: int, seq_len: int, max_blocks: int | None = None
) -> tuple[np.ndarray, int]:
    """Pack token lists into an int32 array of shape (num_blocks, seq_len).

    Args:
        docs: token ids of each document (no special tokens).
        eos_id: id appended after every document.
        seq_len: tokens per block.
        max_blocks: stop after this many full blocks (None = all).

    Returns:
        ``(blocks, dropped)``: blocks of shape (num_blocks, seq_len), int32, and the number
        of stream tokens that did not fill a final block (or were beyond ``max_blocks``).
    """
    if seq_len < 1:
        raise ValueError("seq_len must be positive")
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    stream = np.empty(total, dtype=np.int32)  # (total,) all documents with their EOS
    pos = 0
    for d, n in zip(docs, lengths):
        stream[pos : pos + n - 1] = np.asarray(d, dtype=np.int32)
        stream[pos + n - 1] = eos_id
        pos += int(n)
    num_blocks = total // seq_len
    if max_blocks is not None:
        num_blocks = min(num_blocks, max_blocks)
    blocks = stream[: num_blocks * seq_len].reshape(num_blocks, seq_len).copy()
    return blocks, total - num_blocks * seq_len
