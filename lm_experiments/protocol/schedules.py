"""Batch schedules of the three-stage protocol (pure numpy, seeded from the root seed).

Every stage trains on a *slot plan*: an ordered list of training sequences ("slots"),
each naming its source corpus and a block index into that corpus's packed training
blocks (``TokenSplit.train``, int32 ``(num_blocks, seq_len)``). A :class:`PlannedSource`
serves that plan as the engine's ``BatchSource`` (``batch(step)`` is a pure function of
``step``, so resuming is restarting at a step), and counts tokens by source so that the
protocol's fractions can be checked exactly.

The plans realise the paper's protocol (arXiv 2605.12705, Sections 3-4):

* Stage 1 (:func:`pretrain_source`): pretraining on D_pre with a fraction ``lambda`` of
  D_post's blocks (at most one pass) mixed in, *replacing* D_pre blocks at evenly spaced
  positions, so D_post is spread uniformly through the token budget (Section 4.1).
* Stage 2 (:func:`posttrain_source`): epochs over D_post, reshuffled each epoch, with
  an exact fraction ``replay`` of D_pre blocks interleaved at evenly spaced positions
  (Section 4.4, 1% following Bethune et al. 2025).
* Compute-matched (:func:`split_post_blocks`): the first ``round(lambda * N)`` blocks of
  a seeded permutation of D_post go to stage 1, the disjoint rest to one stage-2 epoch,
  so every model sees exactly one pass over D_post in total (Section 4.2).
* Stage 3 (:func:`finetune_source`): a fixed token budget over D_ft, reshuffled per epoch.

All randomness comes from :func:`early_exposure.seeding.stream` (the project's one seeding
helper) keyed by the root seed and a stream name: ``post-split``, ``stage1-pre``,
``stage2-post``, ``stage2-replay``, ``stage3-ft``. The names are part of the results'
identity (renaming one changes every run that draws from it); nothing touches a global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from early_exposure.seeding import stream

#: Source codes stored in a slot plan.
PRE, POST, FT = 0, 1, 2
SOURCE_NAMES: dict[int, str] = {PRE: "pre", POST: "post", FT: "ft"}


def budget_steps(tokens: int, batch_size: int, seq_len: int, stage: str) -> int:
    """Full batches of ``batch_size x seq_len`` tokens that fit in a ``tokens`` budget (>= 1)."""
    steps = tokens // (batch_size * seq_len)
    if steps < 1:
        raise ValueError(f"{stage} budget of {tokens} tokens is less than one batch "
                         f"({batch_size} x {seq_len} tokens)")
    return steps


def epoch_stream(num_blocks: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` block indices: consecutive fresh permutations of ``range(num_blocks)``.

    Each block appears once per epoch (reshuffled every epoch); the last epoch may be
    partial. Returns int64 ``(count,)``.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if num_blocks <= 0:
        raise ValueError("epoch_stream: cannot draw blocks from an empty corpus")
    n_epochs = math.ceil(count / num_blocks)
    return np.concatenate([rng.permutation(num_blocks) for _ in range(n_epochs)])[:count].astype(np.int64)


def spread_positions(n_items: int, n_slots: int) -> np.ndarray:
    """Distinct, evenly spaced positions of ``n_items`` among ``n_slots`` (centred bins).

    Position ``i`` is ``floor((i + 1/2) * n_slots / n_items)``: item ``i`` sits in the middle
    of the ``i``-th of ``n_items`` equal bins, so the items are spread uniformly through the
    stream. Requires ``n_items <= n_slots``. Returns int64 ``(n_items,)``, strictly increasing.
    """
    if n_items > n_slots:
        raise ValueError(f"cannot place {n_items} items in {n_slots} slots")
    if n_items == 0:
        return np.zeros(0, dtype=np.int64)
    return np.floor((np.arange(n_items) + 0.5) * n_slots / n_items).astype(np.int64)


def split_post_blocks(num_post: int, mix_fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split D_post's blocks into the stage-1 share and the disjoint remainder.

    A seeded permutation of ``range(num_post)``; its first ``round(lambda * num_post)``
    entries are mixed into pretraining, the rest are what compute-matched post-training
    uses (Section 4.2: lambda in stage 1, 1 - lambda in stage 2, one pass in total). The
    permutation depends on the seed only, so the stage-1 shares are nested across lambda.
    """
    if not 0.0 <= mix_fraction <= 1.0:
        raise ValueError(f"mix_fraction must be in [0, 1], got {mix_fraction}")
    perm = stream(seed, "post-split").permutation(num_post).astype(np.int64)
    n_mix = int(round(mix_fraction * num_post))
    return perm[:n_mix], perm[n_mix:]


class PlannedSource:
    """A ``BatchSource`` that serves a fixed slot plan.

    Args:
        sources: int8 ``(S,)`` source code of each slot (``PRE``/``POST``/``FT``).
        indices: int64 ``(S,)`` block index of each slot into that source's blocks.
        pools: source code -> int ``(num_blocks, seq_len)`` packed training blocks.
        batch_size: sequences per optimizer step; the last step may be partial so that
            a plan of exactly one pass is served exactly (no block dropped).
    """

    def __init__(self, sources: np.ndarray, indices: np.ndarray, pools: Mapping[int, np.ndarray],
                 batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        sources = np.asarray(sources, dtype=np.int8)
        indices = np.asarray(indices, dtype=np.int64)
        if sources.shape != indices.shape or sources.ndim != 1:
            raise ValueError("sources and indices must be 1-D arrays of equal length")
        seq_lens = {int(p.shape[1]) for p in pools.values()}
        if len(seq_lens) != 1:
            raise ValueError(f"all pools must share one sequence length, got {sorted(seq_lens)}")
        for code in np.unique(sources):
            pool = pools[int(code)]
            idx = indices[sources == code]
            if idx.size and (idx.min() < 0 or idx.max() >= pool.shape[0]):
                raise ValueError(f"block index out of range for source {SOURCE_NAMES.get(int(code), code)}")
        self.sources = sources
        self.indices = indices
        self.pools = dict(pools)
        self.batch_size = int(batch_size)
        self.seq_len = seq_lens.pop()

    @property
    def num_slots(self) -> int:
        return int(self.sources.shape[0])

    def __len__(self) -> int:
        """Number of optimizer steps (the last may be a partial batch)."""
        return math.ceil(self.num_slots / self.batch_size)

    def batch(self, step: int) -> np.ndarray:
        """int64 ``(b, seq_len)`` token ids of step ``step`` (``b = batch_size`` except maybe last)."""
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} outside [0, {len(self)})")
        lo, hi = step * self.batch_size, min((step + 1) * self.batch_size, self.num_slots)
        src, idx = self.sources[lo:hi], self.indices[lo:hi]
        out = np.empty((hi - lo, self.seq_len), dtype=np.int64)
        for code in np.unique(src):
            sel = src == code
            out[sel] = self.pools[int(code)][idx[sel]]
        return out

    def tokens_by_source(self) -> dict[str, int]:
        """Training tokens the plan draws from each source (every slot is ``seq_len`` tokens)."""
        counts = np.bincount(self.sources.astype(np.int64), minlength=len(SOURCE_NAMES))
        return {SOURCE_NAMES[c]: int(counts[c]) * self.seq_len for c in SOURCE_NAMES if counts[c]}

    def blocks_used(self, source: int) -> np.ndarray:
        """Block indices drawn from ``source``, in plan order (with repeats if any)."""
        return self.indices[self.sources == source].copy()

    @property
    def num_tokens(self) -> int:
        return self.num_slots * self.seq_len


def pretrain_source(pre_blocks: np.ndarray, post_blocks: np.ndarray, mixed_post: np.ndarray, *,
                    tokens: int, batch_size: int, seed: int) -> PlannedSource:
    """Stage 1: D_pre with the D_post blocks ``mixed_post`` spread uniformly (Section 4.1).

    The budget is ``steps = tokens // (batch_size * seq_len)`` full batches (``S`` slots).
    The ``len(mixed_post)`` D_post blocks (each at most once: at most one pass) replace
    D_pre blocks at the evenly spaced slots of :func:`spread_positions`; the other slots
    hold D_pre blocks, reshuffled each epoch over D_pre.

    Args:
        pre_blocks: int ``(N_pre, T)``; post_blocks: int ``(N_post, T)``.
        mixed_post: int64 ``(n_mix,)`` distinct indices into ``post_blocks``
            (``split_post_blocks(...)[0]``).
    """
    steps = budget_steps(tokens, batch_size, int(pre_blocks.shape[1]), "stage-1")
    n_slots = steps * batch_size
    mixed_post = np.asarray(mixed_post, dtype=np.int64)
    if np.unique(mixed_post).size != mixed_post.size:
        raise ValueError("mixed D_post blocks must be distinct (at most one pass over D_post)")
    if mixed_post.size > n_slots:
        raise ValueError(f"{mixed_post.size} D_post blocks do not fit in {n_slots} stage-1 slots")
    sources = np.full(n_slots, PRE, dtype=np.int8)
    indices = np.empty(n_slots, dtype=np.int64)
    pos = spread_positions(mixed_post.size, n_slots)
    sources[pos] = POST
    indices[pos] = mixed_post
    pre_slots = sources == PRE
    indices[pre_slots] = epoch_stream(pre_blocks.shape[0], int(pre_slots.sum()),
                                      stream(seed, "stage1-pre"))
    return PlannedSource(sources, indices, {PRE: pre_blocks, POST: post_blocks}, batch_size)


def replay_count(num_post: int, replay: float) -> int:
    """D_pre blocks added to an epoch of ``num_post`` D_post blocks so that they make up a
    fraction ``replay`` of the epoch: ``round(replay * num_post / (1 - replay))``."""
    if not 0.0 <= replay < 1.0:
        raise ValueError(f"replay fraction must be in [0, 1), got {replay}")
    return int(round(replay * num_post / (1.0 - replay)))


def posttrain_source(post_blocks: np.ndarray, post_indices: np.ndarray, pre_blocks: np.ndarray, *,
                     epochs: int, replay: float, batch_size: int, seed: int,
                     max_tokens: int | None = None) -> PlannedSource:
    """Stage 2: ``epochs`` passes over the D_post blocks ``post_indices``, reshuffled each
    epoch, with a fraction ``replay`` of D_pre blocks (Section 4.4).

    Each epoch holds the ``n`` D_post blocks in a fresh order and ``k = replay_count(n,
    replay)`` D_pre blocks at evenly spaced positions, so D_pre makes up ``k / (n + k)``
    (= ``replay`` up to one block) of every epoch. Replay blocks are drawn without
    repetition until D_pre is exhausted. ``max_tokens`` truncates the plan (token cap).
    Compute-matched post-training is ``epochs=1`` over the remainder of
    :func:`split_post_blocks`.
    """
    post_indices = np.asarray(post_indices, dtype=np.int64)
    n = post_indices.size
    if n == 0 or epochs < 1:
        raise ValueError("stage 2 needs at least one D_post block and one epoch")
    k = replay_count(n, replay)
    rng_post = stream(seed, "stage2-post")
    replay_stream = epoch_stream(pre_blocks.shape[0], k * epochs, stream(seed, "stage2-replay"))
    pos = spread_positions(k, n + k)
    src_ep, idx_ep = [], []
    for e in range(epochs):
        s = np.full(n + k, POST, dtype=np.int8)
        i = np.empty(n + k, dtype=np.int64)
        s[pos] = PRE
        i[pos] = replay_stream[e * k:(e + 1) * k]
        i[s == POST] = post_indices[rng_post.permutation(n)]
        src_ep.append(s)
        idx_ep.append(i)
    sources, indices = np.concatenate(src_ep), np.concatenate(idx_ep)
    if max_tokens is not None:
        keep = max_tokens // int(post_blocks.shape[1])
        if keep < 1:
            raise ValueError(f"stage-2 token cap {max_tokens} is less than one sequence")
        sources, indices = sources[:keep], indices[:keep]
    return PlannedSource(sources, indices, {POST: post_blocks, PRE: pre_blocks}, batch_size)


def finetune_source(ft_blocks: np.ndarray, *, tokens: int, batch_size: int, seed: int) -> PlannedSource:
    """Stage 3: a fixed budget of ``tokens // (batch_size * T)`` full batches over D_ft,
    reshuffled each epoch (the paper's fixed 200M-token fine-tuning, scaled)."""
    steps = budget_steps(tokens, batch_size, int(ft_blocks.shape[1]), "stage-3")
    n_slots = steps * batch_size
    indices = epoch_stream(ft_blocks.shape[0], n_slots, stream(seed, "stage3-ft"))
    return PlannedSource(np.full(n_slots, FT, dtype=np.int8), indices, {FT: ft_blocks}, batch_size)
