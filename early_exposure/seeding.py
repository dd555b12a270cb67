"""One derivation of every random stream from a run's root seed (theory and LM alike).

A stream is named by the root seed and a tuple of tags::

    rng = stream(seed, "stage2-replay")          # LM: replay blocks of post-training
    rng = stream(seed, 2)                        # theory: the random-init stream of a task

Tags are folded into ``numpy.random.SeedSequence(entropy=seed, spawn_key=...)``: an ``int``
tag is used as it is, any other tag (a string, a float such as a mixing fraction) through
CRC32 of its ``str`` (stable across processes and Python versions, unlike ``hash``).
``seed_sequence(s, i) == SeedSequence(s).spawn(n)[i]``, so integer tags name the children
that ``spawn`` would give. Streams with different tags are independent; the same
``(seed, tags)`` gives the same stream in every process, which is what lets a run execute
anywhere given only its record.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["seed_sequence", "stream", "int_seed"]


def _tag(t: object) -> int:
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if t < 0:
            raise ValueError(f"integer stream tags must be >= 0, got {t}")
        return int(t)
    return zlib.crc32(str(t).encode("utf-8"))


def seed_sequence(seed: int, *tags: object) -> np.random.SeedSequence:
    """The ``SeedSequence`` of stream ``tags`` under root ``seed``."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(_tag(t) for t in tags))


def stream(seed: int, *tags: object) -> np.random.Generator:
    """A fresh ``numpy`` Generator for stream ``tags`` under root ``seed``."""
    return np.random.default_rng(seed_sequence(seed, *tags))


def int_seed(seed: int, *tags: object) -> int:
    """A 31-bit integer seed for libraries that take one (``torch.manual_seed``, dropout RNG)."""
    return int(stream(seed, *tags).integers(2**31 - 1))
