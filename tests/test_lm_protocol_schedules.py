"""Stage schedules realise the protocol's fractions exactly (arXiv 2605.12705, Secs 4.1, 4.2, 4.4).

Every check counts tokens in the batches the sources actually serve, identifying the
source of each sequence by its token values (D_pre blocks hold ids in [0, 1000), D_post
in [1000, 2000), D_ft in [2000, 3000), each block's tokens all equal to a unique id), so
the counts are independent of the plan bookkeeping under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from lm_experiments.protocol.schedules import (
    PRE,
    POST,
    finetune_source,
    posttrain_source,
    pretrain_source,
    replay_count,
    spread_positions,
    split_post_blocks,
)

T = 8  # sequence length of the fake blocks


def _blocks(n: int, offset: int) -> np.ndarray:
    """int32 (n, T): block b is filled with the id offset + b."""
    return np.repeat(np.arange(offset, offset + n, dtype=np.int32)[:, None], T, axis=1)


PRE_BLOCKS = _blocks(300, 0)
POST_BLOCKS = _blocks(97, 1000)
FT_BLOCKS = _blocks(41, 2000)


def _served(source) -> np.ndarray:
    """All sequences served over the whole schedule, (slots, T) int64."""
    out = np.concatenate([source.batch(s) for s in range(len(source))])
    assert out.dtype == np.int64
    assert np.all(out == out[:, :1])  # blocks served intact
    return out[:, 0]


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_mixing_fraction_exact_and_spread(lam: float) -> None:
    mixed, _ = split_post_blocks(97, lam, seed=3)
    src = pretrain_source(PRE_BLOCKS, POST_BLOCKS, mixed, tokens=200 * 16 * T + 5, batch_size=16, seed=3)
    ids = _served(src)
    assert ids.size == 200 * 16  # budget rounded down to full batches
    is_post = (ids >= 1000) & (ids < 2000)
    expect = round(lam * 97)  # lambda of D_post's blocks, rounded to a whole block
    assert int(is_post.sum()) == expect
    assert int(is_post.sum()) * T == src.tokens_by_source().get("post", 0)
    assert (~is_post).sum() * T == src.tokens_by_source()["pre"]
    # at most one pass: no D_post block twice
    assert np.unique(ids[is_post]).size == expect
    if expect >= 2:
        # spread uniformly: gaps between consecutive D_post slots differ by at most one slot
        gaps = np.diff(np.flatnonzero(is_post))
        assert gaps.max() - gaps.min() <= 1
        # and the spread covers the whole budget (first/last within one gap of the ends)
        first, last = np.flatnonzero(is_post)[[0, -1]]
        assert first <= gaps.max() and ids.size - 1 - last <= gaps.max()
    # D_pre blocks cycle through full reshuffled epochs: counts differ by at most one
    pre_counts = np.bincount(ids[~is_post], minlength=300)
    assert pre_counts.max() - pre_counts.min() <= 1


def test_mixing_deterministic_and_seeded() -> None:
    mixed, _ = split_post_blocks(97, 0.5, seed=0)
    a = pretrain_source(PRE_BLOCKS, POST_BLOCKS, mixed, tokens=50 * 4 * T, batch_size=4, seed=0)
    b = pretrain_source(PRE_BLOCKS, POST_BLOCKS, mixed, tokens=50 * 4 * T, batch_size=4, seed=0)
    c = pretrain_source(PRE_BLOCKS, POST_BLOCKS, mixed, tokens=50 * 4 * T, batch_size=4, seed=1)
    np.testing.assert_array_equal(a.batch(17), b.batch(17))  # pure function of step (resume)
    assert not np.array_equal(_served(a), _served(c))


def test_mixing_rejects_more_than_budget() -> None:
    mixed, _ = split_post_blocks(97, 1.0, seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        pretrain_source(PRE_BLOCKS, POST_BLOCKS, mixed, tokens=10 * 8 * T, batch_size=8, seed=0)


@pytest.mark.parametrize("replay", [0.0, 0.01, 0.1, 0.3])
def test_replay_fraction_exact(replay: float) -> None:
    post_idx = np.arange(97)
    epochs = 3
    src = posttrain_source(POST_BLOCKS, post_idx, PRE_BLOCKS, epochs=epochs, replay=replay, batch_size=7, seed=5)
    ids = _served(src)
    is_pre = ids < 1000
    n_pre = int(is_pre.sum())
    # every D_post block exactly `epochs` times
    np.testing.assert_array_equal(np.bincount(ids[~is_pre] - 1000, minlength=97), np.full(97, epochs))
    # replay fraction: the closest achievable with whole blocks per epoch
    per_epoch = n_pre // epochs
    assert n_pre == per_epoch * epochs
    assert abs(per_epoch / (97 + per_epoch) - replay) <= 0.5 / (97 + per_epoch) + 1e-12
    assert per_epoch == replay_count(97, replay)
    if replay == 0.1:
        assert per_epoch == 11  # hand-computed: 0.1 * 97 / 0.9 = 10.78 -> 11 (11/108 = 0.102)
    assert src.tokens_by_source().get("pre", 0) == n_pre * T
    # replay blocks distinct while D_pre lasts (300 > 3 * 42)
    assert np.unique(ids[is_pre]).size == n_pre


def test_posttrain_reshuffles_each_epoch_and_caps_tokens() -> None:
    src = posttrain_source(POST_BLOCKS, np.arange(97), PRE_BLOCKS, epochs=2, replay=0.0, batch_size=10, seed=0)
    ids = _served(src)
    assert len(src) == 20  # ceil(194 / 10): the partial last batch keeps the pass exact
    assert not np.array_equal(ids[:97], ids[97:])
    capped = posttrain_source(POST_BLOCKS, np.arange(97), PRE_BLOCKS, epochs=2, replay=0.0, batch_size=10,
                              seed=0, max_tokens=50 * T + 3)
    np.testing.assert_array_equal(_served(capped), ids[:50])


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_compute_matched_sums_to_one_pass(lam: float) -> None:
    stage1_idx, rest = split_post_blocks(97, lam, seed=11)
    s1 = pretrain_source(PRE_BLOCKS, POST_BLOCKS, stage1_idx, tokens=120 * 4 * T, batch_size=4, seed=11)
    ids1 = _served(s1)
    post1 = ids1[ids1 >= 1000] - 1000
    if lam == 1.0:  # everything went to stage 1: compute-matched stage 2 is empty
        assert rest.size == 0
        ids2, post2_tokens = np.zeros(0, dtype=np.int64), 0
    else:
        s2 = posttrain_source(POST_BLOCKS, rest, PRE_BLOCKS, epochs=1, replay=0.0, batch_size=6, seed=11)
        ids2, post2_tokens = _served(s2) - 1000, s2.tokens_by_source()["post"]
    # disjoint, and together exactly one pass over D_post
    assert np.intersect1d(post1, ids2).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([post1, ids2])), np.arange(97))
    assert s1.tokens_by_source().get("post", 0) + post2_tokens == 97 * T


def test_split_nested_across_lambda() -> None:
    a, _ = split_post_blocks(50, 0.2, seed=4)
    b, _ = split_post_blocks(50, 0.6, seed=4)
    assert set(a.tolist()) <= set(b.tolist())
    with pytest.raises(ValueError):
        split_post_blocks(50, 1.5, seed=4)


def test_finetune_fixed_budget() -> None:
    src = finetune_source(FT_BLOCKS, tokens=30 * 5 * T + T, batch_size=5, seed=2)
    ids = _served(src)
    assert len(src) == 30 and ids.size == 150
    assert ids.min() >= 2000 and ids.max() < 2041
    counts = np.bincount(ids - 2000, minlength=41)
    assert counts.max() - counts.min() <= 1  # reshuffled epochs: 150 = 3 * 41 + 27


def test_spread_positions_hand_case() -> None:
    np.testing.assert_array_equal(spread_positions(3, 10), [1, 5, 8])  # floor(10/6), floor(5), floor(25/3)
    np.testing.assert_array_equal(spread_positions(4, 4), [0, 1, 2, 3])
    assert PRE != POST
