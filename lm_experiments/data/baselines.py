"""Count baselines of a prepared role: the loss an add-alpha bigram model gets.

A stage "beats its bigram baseline" when its held-out loss is below the cross-entropy of
a bigram model fitted on the same role's training blocks. The bigram model predicts each
target of a block from the token before it, exactly the targets the LM's loss counts
(positions 1 .. seq_len-1 of every block, Hugging Face's causal shift), with add-``alpha``
smoothing over the whole vocabulary:

    p(b | a) = (count(a, b) + alpha) / (count(a) + alpha * V)

``alpha`` is chosen on the validation blocks (never on the test blocks) from a fixed grid,
then the loss is reported on the role's reported blocks (test when there is one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: smoothing values tried on the validation blocks
ALPHAS: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.1, 1.0)


def bigram_counts(blocks: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, V) float64 counts of (previous token, target) over the targets of ``blocks``."""
    b = np.asarray(blocks, dtype=np.int64)
    flat = b[:, :-1].ravel() * vocab_size + b[:, 1:].ravel()
    return np.bincount(flat, minlength=vocab_size * vocab_size).reshape(vocab_size, vocab_size).astype(np.float64)


def bigram_loss(counts: np.ndarray, blocks: np.ndarray, alpha: float) -> float:
    """Mean cross-entropy (nats per target) of the add-``alpha`` bigram of ``counts`` on
    the targets of ``blocks``."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    b = np.asarray(blocks, dtype=np.int64)
    prev, nxt = b[:, :-1].ravel(), b[:, 1:].ravel()
    V = counts.shape[0]
    logp = np.log(counts[prev, nxt] + alpha) - np.log(counts.sum(1)[prev] + alpha * V)
    return float(-logp.mean())


def bigram_baseline(train: np.ndarray, val: np.ndarray, report: np.ndarray, vocab_size: int,
                    alphas: Sequence[float] = ALPHAS) -> dict[str, float]:
    """Fit on ``train``, pick ``alpha`` by the ``val`` loss, report it on ``report``:
    ``{"alpha", "val", "report"}`` (nats per target)."""
    counts = bigram_counts(train, vocab_size)
    val_losses = {a: bigram_loss(counts, val, a) for a in alphas}
    best = min(val_losses, key=lambda a: (val_losses[a], a))
    return {"alpha": float(best), "val": val_losses[best], "report": bigram_loss(counts, report, best)}
