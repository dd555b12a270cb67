"""Tiny synthetic data shared by the LM tests (not a test module): corpora for the pipeline
tests, step-indexed token batches and the tiny model for the engine tests."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

V, T = 64, 16  # vocabulary and sequence length of the engine tests


def write_corpora(root: Path) -> dict[str, str]:
    """Three small synthetic corpora with distinct alphabets (blank-line separated docs)."""
    r = random.Random(0)
    words = "the a of and to in is was he she it that for on with as his her they at by".split()

    def doc(alpha: str, n: int) -> str:
        return " ".join("".join(r.choice(alpha) for _ in range(r.randint(2, 6))) for _ in range(n))

    texts = {
        "pre": "\n\n".join(" ".join(r.choice(words) for _ in range(r.randint(30, 60))) for _ in range(160)),
        "post": "\n\n".join(doc("ABCDEFGabcdefg|/2", r.randint(30, 60)) for _ in range(120)),
        "ft": "\n\n".join(doc("CNOc1=()[]@H", r.randint(30, 60)) for _ in range(120)),
    }
    paths = {}
    for role, text in texts.items():
        p = root / f"{role}.txt"
        p.write_text(text)
        paths[role] = str(p)
    return paths


class ArraySource:
    """Step-indexed batches (steps, batch, T): a learnable pattern (token i+1 follows token i)
    plus 10% noise, so losses fall."""

    def __init__(self, steps: int, batch: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        start = rng.integers(0, V, size=(steps, batch, 1))
        seq = (start + np.arange(T)) % V
        noise = rng.random((steps, batch, T)) < 0.1
        self.data = np.where(noise, rng.integers(0, V, size=(steps, batch, T)), seq).astype(np.int64)

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, step: int) -> np.ndarray:
        return self.data[step]


def tiny_model(seed: int = 0, dropout: float = 0.0):
    """The tiny-1m preset at vocabulary V and sequence T."""
    from lm_experiments.engine.model import build_model

    return build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=seed, dropout=dropout)
