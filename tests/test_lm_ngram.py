"""n-gram baselines (``lm_experiments.analysis.ngram``) against independent references.

References: hand counts of a tiny corpus with ``collections.Counter`` and explicit Python
loops (a second code path for every formula of the module docstring); the LM's own
evaluation (``evaluate``) run on a torch module whose logits are the n-gram tables, for
which positions are scored; the closed-form entropy rate of a bigram Markov chain.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

# ---- every lm_experiments name used here (remap these lines when modules move) --------
import lm_experiments.analysis.ngram as NGRAM_MODULE
from lm_experiments.config import config_from_mapping as CONFIG_FROM_MAPPING
from lm_experiments.data import prepare_data as PREPARE_DATA
from lm_experiments.engine.evaluate import evaluate as LM_EVALUATE
from lm_experiments.protocol.plan import post_subset as POST_SUBSET

fit = NGRAM_MODULE.fit
baselines = NGRAM_MODULE.baselines
baselines_from_config = NGRAM_MODULE.baselines_from_config
baseline_columns = NGRAM_MODULE.baseline_columns
LAM_GRID, MU_GRID = NGRAM_MODULE.LAM_GRID, NGRAM_MODULE.MU_GRID

# a tiny corpus, V = 6; id 5 plays EOS (an ordinary token for scoring)
V, K = 6, 0.1
TRAIN = np.array([[0, 1, 2, 1, 5, 3],
                  [1, 2, 1, 2, 0, 5],
                  [5, 3, 3, 1, 2, 4]], dtype=np.int32)
VAL = np.array([[1, 2, 4, 5, 0, 1],
                [3, 1, 2, 1, 0, 5]], dtype=np.int32)
TEST = np.array([[2, 1, 2, 3, 5, 0],
                 [4, 0, 1, 2, 1, 5],
                 [1, 1, 2, 5, 3, 1]], dtype=np.int32)


class HandCounts:
    """The module docstring's models by explicit loops over Counters."""

    def __init__(self, blocks: np.ndarray, vocab: int, k: float) -> None:
        self.V, self.k = vocab, k
        self.c1: Counter = Counter()
        self.c2: Counter = Counter()
        self.c3: Counter = Counter()
        for row in blocks.tolist():
            for j in range(1, len(row)):  # position 0 is context only
                self.c1[row[j]] += 1
                self.c2[(row[j - 1], row[j])] += 1
                if j >= 2:
                    self.c3[(row[j - 2], row[j - 1], row[j])] += 1
        self.n = sum(self.c1.values())
        self.cv: Counter = Counter()   # pairs per context token
        for (a, _), c in self.c2.items():
            self.cv[a] += c
        self.cuv: Counter = Counter()  # triples per context pair
        for (a, b, _), c in self.c3.items():
            self.cuv[(a, b)] += c

    def p1(self, w: int) -> float:
        return (self.c1[w] + self.k) / (self.n + self.k * self.V)

    def p2(self, v: int, w: int) -> float:
        return (self.c2[(v, w)] + self.k) / (self.cv[v] + self.k * self.V)

    def p3(self, u: int | None, v: int, w: int, lam: float, mu: float) -> float:
        low = mu * self.p2(v, w) + (1 - mu) * self.p1(w)
        if u is None:
            return low
        cuv = self.cuv[(u, v)]
        if cuv == 0:
            return low
        return lam * self.c3[(u, v, w)] / cuv + (1 - lam) * low

    def loss(self, blocks: np.ndarray, order: int, lam: float = 0.0, mu: float = 1.0) -> float:
        total, n = 0.0, 0
        for row in blocks.tolist():
            for j in range(1, len(row)):
                w, v = row[j], row[j - 1]
                u = row[j - 2] if j >= 2 else None
                p = self.p1(w) if order == 1 else self.p2(v, w) if order == 2 else self.p3(u, v, w, lam, mu)
                total -= math.log(p)
                n += 1
        return total / n

    def tuned(self, val: np.ndarray) -> tuple[float, float]:
        """The grid point of least validation loss (first in grid order on ties)."""
        grid = [(lam, mu) for lam in LAM_GRID for mu in MU_GRID]
        return grid[min((self.loss(val, 3, lam, mu), i) for i, (lam, mu) in enumerate(grid))[1]]


def test_losses_equal_hand_counts() -> None:
    hand = HandCounts(TRAIN, V, K)
    m = fit(TRAIN, V, k=K)
    assert m.n_targets == TRAIN.shape[0] * (TRAIN.shape[1] - 1) == hand.n
    assert m.loss(TEST, 1) == pytest.approx(hand.loss(TEST, 1), rel=1e-12)
    assert m.loss(TEST, 2) == pytest.approx(hand.loss(TEST, 2), rel=1e-12)
    for lam, mu in ((0.3, 0.6), (0.9, 0.1), (0.55, 1.0)):
        assert m.loss(TEST, 3, lam=lam, mu=mu) == pytest.approx(hand.loss(TEST, 3, lam, mu), rel=1e-12)


def test_baselines_tune_on_validation_and_score_on_test() -> None:
    hand = HandCounts(TRAIN, V, K)
    lam, mu = hand.tuned(VAL)
    split = SimpleNamespace(train=TRAIN, val=VAL, test=TEST, report=TEST)
    res = baselines({"post": split}, roles=("post",), vocab_size=V, k=K)["post"]
    assert res["unigram"] == pytest.approx(hand.loss(TEST, 1), rel=1e-12)
    assert res["bigram"] == pytest.approx(hand.loss(TEST, 2), rel=1e-12)
    assert (res["trigram_lam"], res["trigram_mu"]) == (lam, mu)
    assert res["trigram"] == pytest.approx(hand.loss(TEST, 3, lam, mu), rel=1e-12)
    assert res["tokens"] == 3 * 5 and res["train_tokens"] == 3 * 5
    assert res["tuned_on_scored_split"] is False
    # no test split: the report is validation, and the result says the weights saw it
    res_v = baselines({"post": SimpleNamespace(train=TRAIN, val=VAL, test=None, report=VAL)}, roles=("post",),
                      vocab_size=V, k=K)["post"]
    assert res_v["tuned_on_scored_split"] is True and res_v["bigram"] == pytest.approx(hand.loss(VAL, 2), rel=1e-12)
    # the default vocabulary is the largest id seen + 1 (here 5 + 1 = V)
    assert baselines({"post": split}, roles=("post",), k=K)["post"]["vocab_size"] == V


@pytest.mark.parametrize("order,lam,mu", [(1, 0.0, 1.0), (2, 0.0, 1.0), (3, 0.7, 0.4), (3, 0.95, 0.0),
                                          (3, 0.0, 1.0)])
def test_smoothed_distributions_sum_to_one(order: int, lam: float, mu: float) -> None:
    m = fit(TRAIN, V, k=K)
    # contexts: seen pair/triple, one-token context (position 1), unseen context token 4
    for ctx in ([0, 1], [1, 2], [3, 3], [2], [4], [4, 4], [5, 5]):
        p = m.next_token_probs(ctx, order, lam=lam, mu=mu)
        assert p.shape == (V,) and (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
    big = fit(np.random.default_rng(0).integers(0, 50_000, size=(40, 64)), 50_000, k=K)  # sparse at large V
    assert big.next_token_probs([7, 9], 3, lam=0.5, mu=0.5).sum() == pytest.approx(1.0, abs=1e-9)


def test_block_boundary_is_no_context_and_position_zero_is_not_scored() -> None:
    train = np.array([[0, 1], [2, 3]])  # the stream 0 1 | 2 3: the pair (1, 2) crosses a boundary
    m = fit(train, 4, k=K)
    # only targets 1 and 3 are counted (positions 0 are context only)
    np.testing.assert_allclose(m.next_token_probs([], 1), [K / (2 + 4 * K), (1 + K) / (2 + 4 * K),
                                                            K / (2 + 4 * K), (1 + K) / (2 + 4 * K)])
    # token 1 never precedes a target inside a block: its bigram row is uniform, not peaked at 2
    np.testing.assert_allclose(m.next_token_probs([1], 2), np.full(4, 0.25))
    np.testing.assert_allclose(m.next_token_probs([0], 2), np.array([K, 1 + K, K, K]) / (1 + 4 * K))
    # scoring: a block is scored on its own; the loss of stacked blocks is the mean of each one's loss
    a, b = np.array([[1, 2, 3, 0]]), np.array([[3, 3, 1, 2]])
    for order in (1, 2, 3):
        both = m.loss(np.concatenate([a, b]), order, lam=0.5, mu=0.5)
        assert both == pytest.approx((m.loss(a, order, lam=0.5, mu=0.5) + m.loss(b, order, lam=0.5, mu=0.5)) / 2)
    # T - 1 targets per block: [[1, 2]] scores -log p(2 | 1) and nothing else
    assert m.loss(np.array([[1, 2]]), 2) == pytest.approx(math.log(4))


@pytest.mark.parametrize("order", [2, 3])
def test_counted_positions_match_the_lm_evaluation(order: int) -> None:
    """``evaluate`` (the LM's loss) run on a module whose logits are the n-gram's log
    probabilities gives the n-gram's loss: the same targets, the same contexts."""
    import torch

    lam, mu = 0.6, 0.7
    m = fit(TRAIN, V, k=K)
    low = np.stack([m.next_token_probs([v], 3, lam=lam, mu=mu) if order == 3 else m.next_token_probs([v], 2)
                    for v in range(V)])                                            # (V, V): one context token
    tri = np.stack([[m.next_token_probs([u, v], 3, lam=lam, mu=mu) for v in range(V)] for u in range(V)])

    class Table(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.low = torch.nn.Parameter(torch.as_tensor(np.log(low)), requires_grad=False)
            self.tri = torch.nn.Parameter(torch.as_tensor(np.log(tri)), requires_grad=False)

        def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
            logits = self.low[input_ids]  # (b, t, V): the prediction after each position
            if order == 3:
                logits = logits.clone()
                logits[:, 1:] = self.tri[input_ids[:, :-1], input_ids[:, 1:]]
            return SimpleNamespace(logits=logits)

    res = LM_EVALUATE(Table(), TEST, batch_size=2, device=torch.device("cpu"), shard=False)
    # evaluate computes the cross-entropy in fp32: agreement to float32 precision
    assert res.mean_loss == pytest.approx(m.loss(TEST, order, lam=lam, mu=mu), rel=1e-6)
    np.testing.assert_allclose(res.per_example, -np.log(m.target_probs(TEST, order, lam=lam, mu=mu)).mean(axis=1),
                               rtol=1e-6)


def test_trigram_weight_extremes_reduce_to_unigram_and_bigram() -> None:
    m = fit(TRAIN, V, k=K)
    np.testing.assert_allclose(m.target_probs(TEST, 3, lam=0.0, mu=1.0), m.target_probs(TEST, 2), rtol=1e-14)
    np.testing.assert_allclose(m.target_probs(TEST, 3, lam=0.0, mu=0.0), m.target_probs(TEST, 1), rtol=1e-14)
    # and lam = 1 on a seen context is the maximum-likelihood trigram: (1, 2) -> {1: 2, 4: 1, 0: 1} in TRAIN
    np.testing.assert_allclose(m.next_token_probs([1, 2], 3, lam=1.0, mu=0.3), [0.25, 0.5, 0, 0, 0.25, 0])


def _chain(P: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A stationary run of the chain ``P`` of ``n`` tokens (start drawn from pi)."""
    Vc = P.shape[0]
    pi = _stationary(P)
    cum = np.cumsum(P, axis=1).tolist()
    r = rng.random(n).tolist()
    out = [int(rng.choice(Vc, p=pi))]
    for i in range(1, n):
        out.append(min(bisect.bisect_right(cum[out[-1]], r[i]), Vc - 1))
    return np.asarray(out, dtype=np.int64)


def _stationary(P: np.ndarray) -> np.ndarray:
    w, vecs = np.linalg.eig(P.T)
    pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    return pi / pi.sum()


def test_bigram_test_loss_approaches_the_chain_entropy_rate() -> None:
    rng = np.random.default_rng(1)
    Vc, T = 8, 32
    P = rng.dirichlet(np.full(Vc, 0.5), size=Vc)
    pi = _stationary(P)
    H = float(-(pi[:, None] * P * np.log(P)).sum())  # entropy rate, nats per token
    stream = _chain(P, 600_000, rng)
    blocks = stream[: (stream.size // T) * T].reshape(-1, T)
    test, train = blocks[:3000], blocks[3000:]  # 3000 x 31 scored test tokens
    gaps_expected = []
    for n_blocks in (10, 100, 1000, train.shape[0]):
        m = fit(train[:n_blocks], Vc, k=K)
        Q = np.stack([m.next_token_probs([v], 2) for v in range(Vc)])
        # expected test loss of the fitted table under the chain: H + KL >= H
        gaps_expected.append(float(-(pi[:, None] * P * np.log(Q)).sum()) - H)
    assert all(g >= -1e-12 for g in gaps_expected)
    assert gaps_expected[0] > gaps_expected[1] > gaps_expected[2] > gaps_expected[3]
    assert gaps_expected[-1] < 2e-3  # ~ (V - 1) V / 2 / N_train nats for counts
    # the sampled test loss: within 4 standard errors of H (+ the tiny KL)
    m = fit(train, Vc, k=K)
    lp = -np.log(m.target_probs(test, 2))
    se = lp.std() / math.sqrt(lp.size)
    assert abs(lp.mean() - H - gaps_expected[-1]) < 4 * se
    assert abs(lp.mean() - H) < 0.03


def test_baselines_from_config_through_the_data_layer(tmp_path) -> None:
    """A pipeline config's data prepared through the data layer (tiny local corpora): each
    role fit on its training split, tuned on validation, scored on test; ``post_subset`` fit
    on the capped D_post blocks of stage 2; all equal to hand counts of the same arrays."""
    import yaml
    from lm_tiny import write_corpora

    seq = 16
    cfg = {"data": {role: {"source": "local", "name": role, "path": p} for role, p in write_corpora(tmp_path).items()}
           | {"vocab_size": 300, "seq_len": seq, "val_tokens": 4 * seq, "val_fraction": 0.15, "test_fraction": 0.15,
              "test_tokens": 4 * seq, "bpe_sample_chars": 20000},
           "model": {"preset": "tiny-1m"},
           "pre": {"tokens": 4 * 4 * seq, "batch_size": 4, "mix_fraction": [0.0]},
           "post": {"sweep": {"lr": [1.0e-3], "batch_size": [4]}, "post_train_tokens": 10 * seq},
           "ft": {"lr": [1.0e-3], "tokens": 4 * seq, "batch_size": 4},
           "seeds": [0], "device": "cpu"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = baselines_from_config(path, cache_root=tmp_path / "cache")
    data = PREPARE_DATA(CONFIG_FROM_MAPPING(cfg).data, cache_root=tmp_path / "cache", progress=False)
    vocab = len(data.tokenizer)
    assert res["data"]["vocab_size"] == vocab and res["data"]["fingerprint"] == data.fingerprint
    post_train = np.asarray(data.splits["post"].train)
    sub = post_train[POST_SUBSET(post_train.shape[0], 10 * seq, seq)]
    assert sub.shape == (10, seq)
    for role, train in (("pre", None), ("post", None), ("ft", None), ("post_subset", sub)):
        sp = data.splits["post" if role == "post_subset" else role]
        train = np.asarray(sp.train) if train is None else train
        test, val = np.asarray(sp.test), np.asarray(sp.val)
        hand = HandCounts(train, vocab, K)
        lam, mu = hand.tuned(val)
        r = res[role]
        assert r["tokens"] == test.shape[0] * (seq - 1) and r["train_tokens"] == train.shape[0] * (seq - 1)
        assert r["unigram"] == pytest.approx(hand.loss(test, 1), rel=1e-10)
        assert r["bigram"] == pytest.approx(hand.loss(test, 2), rel=1e-10)
        assert (r["trigram_lam"], r["trigram_mu"]) == (lam, mu)
        assert r["trigram"] == pytest.approx(hand.loss(test, 3, lam, mu), rel=1e-10)
        assert r["tuned_on_scored_split"] is False
    cols = baseline_columns(res)
    assert cols["ngram_bigram_post_subset"] == res["post_subset"]["bigram"] and len(cols) == 4 * 3
