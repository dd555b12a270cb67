"""Tiny synthetic corpora shared by the LM pipeline tests (not a test module)."""

from __future__ import annotations

import random
from pathlib import Path


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
