"""Data preparation throughput and peak memory at two corpus sizes ten times apart.

    python benchmarks/lm_data_prep.py [--chars 2000000] [--factor 10] [--out docs/results/lm_data_prep.json]

A generated corpus (one ``.jsonl`` file per role, documents of ~2,000 characters; the larger
corpus has ``factor`` times the documents and characters) is prepared from scratch by
``lm_experiments.data.prepare_data`` (BPE 2048, seq 128) in a fresh subprocess per size, so
that each peak RSS (``ru_maxrss``, the whole process: Python, torch-free imports, tokenizer,
page cache of the memory-mapped outputs not counted) belongs to one preparation. Printed:
tokens/s (packed training + validation tokens over wall time), peak RSS per size and the
ratio large/small (target: within 1.2).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the of and to in is was he she it that for on with as his her they at by music chem note acid "
         "base scale tone bond atom").split()


def _write_corpus(root: Path, n_docs: int, seed: int) -> Path:
    import random

    r = random.Random(seed)
    p = root / "corpus.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as fh:
        for i in range(n_docs):
            text = f"doc{i} " + " ".join(r.choice(WORDS) for _ in range(380))
            fh.write(json.dumps({"text": text}) + "\n")
    return p


def _child(n_docs: int, work: str) -> None:
    sys.path.insert(0, str(ROOT))
    from lm_experiments.data import CorpusSpec, DataConfig, prepare_data

    w = Path(work)
    paths = {r: _write_corpus(w / r, n_docs, k) for k, r in enumerate(("pre", "post", "ft"))}
    chars = sum(p.stat().st_size for p in paths.values())
    cfg = DataConfig(**{r: CorpusSpec("local", r, path=str(p)) for r, p in paths.items()}, vocab_size=2048,
                     seq_len=128, val_tokens=4096, val_fraction=0.05, bpe_sample_chars=500_000)
    t0 = time.perf_counter()
    data = prepare_data(cfg, cache_root=w / "cache", progress=False)
    wall = time.perf_counter() - t0
    tokens = sum(int(s.train.size + s.val.size) for s in data.splits.values())
    print(json.dumps({"docs_per_role": n_docs, "corpus_bytes": chars, "tokens": tokens, "wall_s": round(wall, 2),
                      "tokens_per_s": round(tokens / wall), "peak_rss_mb":
                      round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chars", type=int, default=2_000_000, help="characters per role of the small corpus")
    ap.add_argument("--factor", type=int, default=10, help="size ratio large / small")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1])
        return 0
    n_small = max(1, args.chars // 2000)
    rows = []
    for n in (n_small, n_small * args.factor):
        with tempfile.TemporaryDirectory() as work:
            out = subprocess.run([sys.executable, __file__, "--child", str(n), work], check=True,
                                 capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['corpus_bytes'] / 1e6:8.1f} MB corpus: {r['tokens']:>11,} tokens in {r['wall_s']:7.1f} s = "
              f"{r['tokens_per_s']:>9,} tok/s; peak RSS {r['peak_rss_mb']:7.1f} MB")
    ratio = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS ratio at {args.factor}x the corpus: {ratio:.3f} (target <= 1.2)")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "rss_ratio": ratio}, indent=1) + "\n")
    _ = resource  # (parent's own RSS is not part of the figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
