"""Count-based n-gram baselines of the LM testbed's data: a regime diagnostic (issue 21).

Does a stage of the LM pipeline beat a count table of its own data? For every role
(pre, post, ft) a unigram, a bigram and an interpolated trigram model are fit on the
role's packed training blocks and scored on its reported held-out blocks (the test split,
else validation), in nats per token, counted exactly as :func:`lm_experiments.engine.evaluate.evaluate`
counts the LM's loss. numpy only (no torch at import).

What is counted (the LM's evaluation, matched)
----------------------------------------------
Blocks are int ``(num_blocks, T)`` rows of the packed stream (``doc EOS doc EOS ...`` cut
every ``T`` tokens, no BOS, no padding: :mod:`lm_experiments.data.packing`). The LM
predicts tokens ``blocks[i, 1:]`` from their prefix inside the block, so:

* position 0 of a block is never scored (it is context only); every other position is,
  ``num_blocks * (T - 1)`` targets, all weighted equally (the reported loss is the token
  mean = the mean of the block means);
* EOS is an ordinary token: scored as a target and used as context (there is no padding
  to mask);
* context never crosses a block boundary (the LM sees one block at a time): the bigram
  predicts ``blocks[i, j]`` from ``blocks[i, j-1]`` for ``j >= 1``; the trigram has two
  tokens of context for ``j >= 2`` and only one at ``j = 1``, where it uses its
  lower-order part (below) alone.

Training counts use the same (context, target) positions of the training blocks:
unigram counts of ``train[:, 1:]``, bigram counts of the pairs ``(train[:, j-1],
train[:, j])``, trigram counts of the triples ``(train[:, j-2], train[:, j-1],
train[:, j])``, never across a block boundary.

Models (V = vocabulary size, k = add-k constant, default 0.1 for both)
-----------------------------------------------------------------------
* unigram ``p1(w) = (c(w) + k) / (N + k V)``, N = training targets;
* bigram ``p2(w | v) = (c(v, w) + k) / (c(v, .) + k V)`` with ``c(v, .)`` the pairs whose
  context is ``v`` (an unseen context gives the uniform ``1 / V``);
* trigram, interpolated (Jelinek-Mercer, fixed weights)::

      p_low(w | v)   = mu p2(w | v) + (1 - mu) p1(w)
      p3(w | u, v)   = lam p_ml(w | u, v) + (1 - lam) p_low(w | v)   if c(u, v, .) > 0
                     = p_low(w | v)                                   otherwise (and at j = 1)

  with ``p_ml(w | u, v) = c(u, v, w) / c(u, v, .)``. ``(lam, mu)`` are chosen on the
  role's *validation* blocks from a fixed grid (:data:`LAM_GRID` x :data:`MU_GRID`),
  never on the test blocks; ``lam = 0, mu = 1`` is the bigram and ``lam = 0, mu = 0`` the
  unigram. When the data have no test split the reported split *is* the validation split:
  the result then says ``"tuned_on_scored_split": True``.

Counts are sparse: pairs and triples are encoded as int64 keys (``v V + w``,
``(u V + v) V + w``), counted with ``np.unique`` and looked up with ``np.searchsorted``,
so nothing of size V x V is built (V up to ~2 million).

Entry points: :func:`fit` / :class:`NGramModel` (one corpus), :func:`role_baselines` (one
role), :func:`baselines` (every role of a prepared data set or of a ``{role: split}``
mapping), :func:`baselines_from_config` (a pipeline config through the data layer,
:func:`lm_experiments.protocol.prepared.prepare`), ``python -m lm_experiments.analysis.ngram CONFIG``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: interpolation grids of the trigram (chosen on validation)
LAM_GRID = tuple(round(x, 2) for x in np.arange(0.0, 0.96, 0.05)) + (0.98, 0.99)
MU_GRID = tuple(round(x, 2) for x in np.arange(0.0, 1.001, 0.05))
DEFAULT_K = 0.1
_MAX_V = 2_097_151  # V**3 must fit in int64


def _check_blocks(blocks: Any, vocab_size: int, what: str) -> np.ndarray:
    b = np.asarray(blocks)
    if b.ndim != 2 or b.shape[1] < 2:
        raise ValueError(f"{what}: need a 2-D (num_blocks, seq_len >= 2) array of token ids, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"{what}: need integer token ids, got dtype {b.dtype}")
    if b.size and (int(b.min()) < 0 or int(b.max()) >= vocab_size):
        raise ValueError(f"{what}: token ids must lie in [0, {vocab_size}), got [{int(b.min())}, {int(b.max())}]")
    return b.astype(np.int64, copy=False)


def _count(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct int64 keys and their counts."""
    if keys.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    u, c = np.unique(keys, return_counts=True)
    return u.astype(np.int64), c.astype(np.int64)


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Count of each query key (0 when absent); ``keys`` sorted."""
    query = np.asarray(query, dtype=np.int64)
    if keys.size == 0:
        return np.zeros(query.shape, np.int64)
    i = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[i] == query, counts[i], 0)


@dataclass
class NGramModel:
    """Sparse unigram / bigram / trigram counts of training blocks (see the module docstring)."""

    vocab_size: int
    k: float
    uni: np.ndarray          # int64 (V,) target counts
    ctx1: np.ndarray         # int64 (V,) pairs per context token c(v, .)
    pair_keys: np.ndarray    # int64 sorted v V + w
    pair_counts: np.ndarray
    tri_keys: np.ndarray     # int64 sorted (u V + v) V + w
    tri_counts: np.ndarray
    ctx2_keys: np.ndarray    # int64 sorted u V + v
    ctx2_counts: np.ndarray  # c(u, v, .)

    @property
    def n_targets(self) -> int:
        return int(self.uni.sum())

    # ---- per-target probabilities -----------------------------------------------------
    def _parts(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        """Component probabilities of targets ``w`` after ``v`` (and ``u``; -1 = none)."""
        V, k = self.vocab_size, self.k
        p1 = (self.uni[w] + k) / (self.n_targets + k * V)
        p2 = (_lookup(self.pair_keys, self.pair_counts, v * V + w) + k) / (self.ctx1[v] + k * V)
        has_u = u >= 0
        uv = np.where(has_u, u, 0) * V + v
        c_ctx = np.where(has_u, _lookup(self.ctx2_keys, self.ctx2_counts, uv), 0)
        c_tri = np.where(c_ctx > 0, _lookup(self.tri_keys, self.tri_counts, uv * V + w), 0)
        pml = np.divide(c_tri, c_ctx, out=np.zeros(c_tri.shape, np.float64), where=c_ctx > 0)
        return {"p1": p1, "p2": p2, "pml": pml, "seen": c_ctx > 0}

    @staticmethod
    def _combine(parts: dict[str, np.ndarray], order: int, lam: float, mu: float) -> np.ndarray:
        if order == 1:
            return parts["p1"]
        if order == 2:
            return parts["p2"]
        if order != 3:
            raise ValueError(f"order must be 1, 2 or 3, got {order}")
        low = mu * parts["p2"] + (1.0 - mu) * parts["p1"]
        return np.where(parts["seen"], lam * parts["pml"] + (1.0 - lam) * low, low)

    def _block_parts(self, blocks: Any) -> dict[str, np.ndarray]:
        b = _check_blocks(blocks, self.vocab_size, "blocks")
        w = b[:, 1:]
        v = b[:, :-1]
        u = np.concatenate([np.full((b.shape[0], 1), -1, np.int64), b[:, :-2]], axis=1)  # none at j = 1
        return self._parts(u.ravel(), v.ravel(), w.ravel())

    def target_probs(self, blocks: Any, order: int, *, lam: float = 0.0, mu: float = 1.0) -> np.ndarray:
        """float64 ``(num_blocks, T - 1)``: the model's probability of each scored target
        ``blocks[:, 1:]`` (order 3 with weights ``lam``, ``mu``)."""
        b = np.asarray(blocks)
        return self._combine(self._block_parts(b), order, lam, mu).reshape(b.shape[0], b.shape[1] - 1)

    def loss(self, blocks: Any, order: int, *, lam: float = 0.0, mu: float = 1.0) -> float:
        """Mean next-token negative log-likelihood (nats per token) over every scored target."""
        return float(-np.log(self.target_probs(blocks, order, lam=lam, mu=mu)).mean())

    def next_token_probs(self, context: Iterable[int], order: int, *, lam: float = 0.0,
                         mu: float = 1.0) -> np.ndarray:
        """float64 ``(V,)``: the distribution of the next token after ``context`` (the last
        tokens of the block before the target, at most two used; one token = position 1)."""
        ctx = [int(t) for t in context]
        if order >= 2 and not ctx:
            raise ValueError("the bigram and trigram need at least one context token (position 0 is never scored)")
        V = self.vocab_size
        w = np.arange(V, dtype=np.int64)
        v = np.full(V, ctx[-1] if ctx else 0, np.int64)
        u = np.full(V, ctx[-2] if len(ctx) >= 2 else -1, np.int64)
        return self._combine(self._parts(u, v, w), order, lam, mu)

    def choose_trigram_weights(self, blocks: Any, lam_grid: Iterable[float] = LAM_GRID,
                               mu_grid: Iterable[float] = MU_GRID) -> tuple[float, float, float]:
        """``(lam, mu, loss)``: the grid point of least trigram loss on ``blocks`` (the
        validation split; ties: the first in grid order)."""
        parts = self._block_parts(blocks)
        best = (0.0, 1.0, math.inf)
        for lam in lam_grid:
            for mu in mu_grid:
                loss = float(-np.log(self._combine(parts, 3, float(lam), float(mu))).mean())
                if loss < best[2]:
                    best = (float(lam), float(mu), loss)
        return best


def fit(blocks: Any, vocab_size: int, *, k: float = DEFAULT_K) -> NGramModel:
    """Counts of the training ``blocks`` (int ``(num_blocks, T)``) over a vocabulary of
    ``vocab_size`` ids; add-k constant ``k`` (> 0)."""
    if not 1 <= vocab_size <= _MAX_V:
        raise ValueError(f"vocab_size must be in [1, {_MAX_V}], got {vocab_size}")
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    V = int(vocab_size)
    b = _check_blocks(blocks, V, "training blocks")
    uni = np.bincount(b[:, 1:].ravel(), minlength=V).astype(np.int64)
    ctx1 = np.bincount(b[:, :-1].ravel(), minlength=V).astype(np.int64)
    pair_keys, pair_counts = _count((b[:, :-1] * V + b[:, 1:]).ravel())
    tri_keys, tri_counts = _count(((b[:, :-2] * V + b[:, 1:-1]) * V + b[:, 2:]).ravel())
    if tri_keys.size:  # c(u, v, .): sum the sorted triple counts over w
        ctx = tri_keys // V
        starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
        ctx2_keys, ctx2_counts = ctx[starts], np.add.reduceat(tri_counts, starts)
    else:
        ctx2_keys, ctx2_counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    return NGramModel(V, float(k), uni, ctx1, pair_keys, pair_counts, tri_keys, tri_counts, ctx2_keys,
                      ctx2_counts.astype(np.int64))


def role_baselines(train: Any, val: Any, report: Any, vocab_size: int, *, k: float = DEFAULT_K,
                   tuned_on_scored_split: bool = False) -> dict[str, Any]:
    """Baselines of one role: fit on ``train``, trigram weights chosen on ``val``, losses
    (nats per token) on ``report``; ``tokens`` = scored targets, ``train_tokens`` = fitted
    targets."""
    m = fit(train, vocab_size, k=k)
    lam, mu, val_loss = m.choose_trigram_weights(val)
    rep = np.asarray(report)
    return {"unigram": m.loss(rep, 1), "bigram": m.loss(rep, 2), "trigram": m.loss(rep, 3, lam=lam, mu=mu),
            "tokens": int(rep.shape[0] * (rep.shape[1] - 1)), "train_tokens": m.n_targets,
            "trigram_lam": lam, "trigram_mu": mu, "trigram_val": val_loss, "k": float(k),
            "vocab_size": int(vocab_size), "tuned_on_scored_split": bool(tuned_on_scored_split)}


def _vocab_of(prepared_or_splits: Any, splits: Mapping[str, Any], roles: Iterable[str]) -> int:
    tok = getattr(prepared_or_splits, "tokenizer", None)
    if tok is not None:
        return len(tok)
    hi = 0
    for r in roles:
        sp = splits[r]
        for a in (sp.train, sp.val, sp.report):
            hi = max(hi, int(np.asarray(a).max()))
    return hi + 1


def baselines(prepared_or_splits: Any, roles: Iterable[str] = ("pre", "post", "ft"), *, k: float = DEFAULT_K,
              vocab_size: int | None = None, train_override: Mapping[str, Any] | None = None,
              report_split: str = "test") -> dict[str, dict[str, Any]]:
    """role -> :func:`role_baselines` for a :class:`~lm_experiments.data.PreparedData` (or a
    mapping role -> object with ``train``, ``val``, ``report`` arrays): fit on
    ``split.train`` (or ``train_override[role]``), weights chosen on ``split.val``, scored
    on ``split.report`` (test, else validation; validation with ``report_split="val"``, the
    calibration runs' ``eval.report_split``). ``vocab_size``: default the tokenizer's
    size, else the largest id seen + 1."""
    splits = getattr(prepared_or_splits, "splits", prepared_or_splits)
    roles = tuple(roles)
    V = vocab_size if vocab_size is not None else _vocab_of(prepared_or_splits, splits, roles)
    out = {}
    for r in roles:
        sp = splits[r]
        train = (train_override or {}).get(r, sp.train)
        scored = sp.val if report_split == "val" else sp.report
        same = report_split == "val" or getattr(sp, "test", "absent") is None or sp.report is sp.val
        out[r] = role_baselines(train, sp.val, scored, V, k=k, tuned_on_scored_split=bool(same))
    return out


def baselines_from_config(cfg: Any, *, cache_root: Path | None = None, roles: Iterable[str] = ("pre", "post", "ft"),
                          k: float = DEFAULT_K, progress: bool = False) -> dict[str, Any]:
    """Baselines of a pipeline config (a :class:`~lm_experiments.config.PipelineConfig` or
    a preset path): the data prepared through :func:`lm_experiments.protocol.prepared.prepare` (cache,
    fallback corpora). Besides each role fit on its whole training split, ``"post_subset"``
    is D_post fit on the blocks stage 2 actually draws from (``post.post_train_tokens``,
    :func:`lm_experiments.protocol.plan.post_subset`) when that caps D_post; ``"data"`` says which
    data were used."""
    from lm_experiments.config import PipelineConfig, load_config
    from lm_experiments.protocol.plan import post_subset
    from lm_experiments.protocol.prepared import prepare

    if not isinstance(cfg, PipelineConfig):
        cfg = load_config(cfg)
    prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=progress, log=lambda _: None)
    roles = tuple(roles)
    split = cfg.eval.report_split
    out: dict[str, Any] = baselines(prepared, roles, k=k, report_split=split)
    sp = prepared.splits
    if "post" in roles and cfg.post.post_train_tokens is not None:
        T = int(sp["post"].train.shape[1])
        idx = post_subset(int(sp["post"].train.shape[0]), cfg.post.post_train_tokens, T)
        out["post_subset"] = baselines(prepared, ("post",), k=k, report_split=split,
                                       train_override={"post": np.asarray(sp["post"].train)[idx]})["post"]
    out["data"] = {"fingerprint": prepared.fingerprint, "fallback_used": data_used["summary"]["fallback_used"],
                   "vocab_size": len(prepared.tokenizer), "seq_len": int(sp["pre"].train.shape[1]), "report_split": split}
    return out


def baseline_columns(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``{"ngram_<order>_<role>": nats}`` columns of a :func:`baselines` result, to
    sit beside each stage's loss in a regime table."""
    return {f"ngram_{o}_{r}": float(v[o]) for r, v in result.items() if isinstance(v, Mapping)
            for o in ("unigram", "bigram", "trigram") if o in v}


def _main(argv: list[str] | None) -> int:
    from early_exposure.cliopts import add_version, preset_type
    from early_exposure.errors import Parser

    ap = Parser(prog="python -m lm_experiments.analysis.ngram",
                description="n-gram baselines (nats/token) of a pipeline config's data.")
    ap.add_argument("config", type=preset_type("lm"), metavar="PRESET|FILE",
                    help="a shipped LM preset's name (e.g. cpu-quick) or a pipeline config file")
    add_version(ap)
    args = [ap.parse_args(sys.argv[1:] if argv is None else argv).config]
    res = baselines_from_config(args[0], progress=True)
    print(f"{'role':12s} {'unigram':>8s} {'bigram':>8s} {'trigram':>8s} {'lam':>5s} {'mu':>5s} "
          f"{'tokens':>8s} {'train_tok':>10s}")
    for r, v in res.items():
        if r == "data":
            continue
        print(f"{r:12s} {v['unigram']:8.3f} {v['bigram']:8.3f} {v['trigram']:8.3f} {v['trigram_lam']:5.2f} "
              f"{v['trigram_mu']:5.2f} {v['tokens']:8d} {v['train_tokens']:10d}")
    print(json.dumps(res["data"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input -> one line, exit 2."""
    from early_exposure.errors import cli_main

    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
