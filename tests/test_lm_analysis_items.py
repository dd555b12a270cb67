"""Items (lm_experiments.analysis.items): transitions and chance adjustment against hand-made
examples, the multiple-choice scorer against a model whose logits are set by hand, the
document segmentation of packed blocks, template families."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lm_experiments.analysis import items as it


# ---- transitions ------------------------------------------------------------------------------
def test_transition_counts_and_rates_hand_example():
    # item:     0  1  2  3  4  5  6  7
    before = [1, 1, 1, 0, 0, 1, 0, 1]
    after = [1, 0, 0, 1, 0, 1, 0, 1]
    m = it.item_metrics(before, after, k=4)
    # by hand: 1->1 at 0, 5, 7; 1->0 at 1, 2; 0->1 at 3; 0->0 at 4, 6
    assert (m["n_1->1"], m["n_1->0"], m["n_0->1"], m["n_0->0"]) == (3, 2, 1, 2)
    assert m["acc_before"] == 5 / 8 and m["acc_after"] == 4 / 8
    assert m["forgetting"] == pytest.approx(2 / 8)
    assert m["forgetting_relative"] == pytest.approx(2 / 5)
    assert m["backward_transfer"] == pytest.approx(1 / 8)
    assert m["backward_transfer_relative"] == pytest.approx(1 / 3)
    # chance term (1 - 5/8)(1 - 4/8)/(4 - 1) = (3/8)(1/2)/3 = 1/16
    assert it.chance_term(5 / 8, 4 / 8, 4) == pytest.approx(1 / 16)
    assert m["forgetting_chance_adjusted"] == pytest.approx(2 / 8 - 1 / 16)
    assert m["backward_transfer_chance_adjusted"] == pytest.approx(1 / 8 - 1 / 16)


def test_chance_adjustment_clips_at_zero_and_vanishes_for_a_pure_guesser():
    # 8 two-way items, one forgotten, nothing gained: chance (7/8)(1)/1 = 7/8 > 1/8 -> 0
    m = it.item_metrics([1, 0, 0, 0, 0, 0, 0, 0], [0] * 8, k=2)
    assert m["forgetting"] == pytest.approx(1 / 8)
    assert m["forgetting_chance_adjusted"] == 0.0
    assert m["backward_transfer_chance_adjusted"] == 0.0
    # a guesser at 1/k before and after whose flips have the guessing rate (1/k)(1-1/k):
    # k = 2, 4 items, acc 1/2 both times, one 1->0 and one 0->1 (rate 1/4 = (1/2)(1/2))
    g = it.item_metrics([1, 1, 0, 0], [1, 0, 1, 0], k=2)
    assert g["forgetting"] == pytest.approx(0.25) and g["backward_transfer"] == pytest.approx(0.25)
    assert g["forgetting_chance_adjusted"] == pytest.approx(0.0, abs=1e-15)
    assert g["backward_transfer_chance_adjusted"] == pytest.approx(0.0, abs=1e-15)
    # no chance terms without k; a model that is always right needs no correction
    assert "forgetting_chance_adjusted" not in it.item_metrics([1, 0], [0, 1])
    assert it.chance_term(1.0, 0.3, 4) == 0.0


def test_agreement_across_seeds_hand_example():
    before = [[1, 1, 0, 1], [1, 1, 0, 0]]
    after = [[0, 1, 1, 0], [0, 0, 1, 0]]
    a = it.agreement(before, after)
    # item 0: 1->0 in both seeds; item 1: 1->1 then 1->0; item 2: 0->1 in both; item 3: 1->0 then 0->0
    assert a["all_1->0"] == 1 and a["all_0->1"] == 1 and a["all_1->1"] == 0 and a["all_0->0"] == 0
    assert a["all_1->0_rate"] == 0.25 and a["seeds"] == 2


# ---- the multiple-choice scorer ----------------------------------------------------------------
class BigramLogits(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next-token distribution depends only on the
    current token, set by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids):
        class Out:
            pass

        o = Out()
        o.logits = self.table[input_ids]
        return o


def _table() -> torch.Tensor:
    V = 8
    t = torch.full((V, V), -20.0)
    # from token 1 (prompt end): log-probs of 2 and 3 set via logits; from 2 -> 7 (EOS) likely
    t[1, 2], t[1, 3], t[1, 4] = 2.0, 1.0, 0.0
    t[2, 7] = 5.0
    t[3, 5] = 5.0
    t[5, 7] = 5.0
    t[4, 7] = 5.0
    return t


def _logp(table: torch.Tensor, prev: int, nxt: int) -> float:
    row = table[prev].double()
    return float(row[nxt] - torch.logsumexp(row, 0))


def test_sequence_scores_equal_hand_computed_log_likelihoods():
    table = _table()
    model = BigramLogits(table)
    seqs = [np.array([6, 1, 2, 7]), np.array([6, 1, 3, 5, 7]), np.array([0, 6, 1, 4, 7])]
    starts = np.array([2, 2, 3])
    ll, greedy, acc = it.sequence_scores(model, seqs, starts, batch_size=2)
    by_hand = [_logp(table, 1, 2) + _logp(table, 2, 7),
               _logp(table, 1, 3) + _logp(table, 3, 5) + _logp(table, 5, 7),
               _logp(table, 1, 4) + _logp(table, 4, 7)]
    np.testing.assert_allclose(ll, by_hand, rtol=1e-6)
    # greedy from 1 is 2 (largest logit), from 2 is 7: only the first continuation is greedy
    assert greedy.tolist() == [True, False, False]
    # token accuracy: seq 2 continuation 3, 5, 7: argmax from 1 is 2 (miss), from 3 is 5 (hit), from 5 is 7 (hit)
    # seq 3 continuation 4, 7: from 1 miss, from 4 (row 4: 7 at 5.0) hit
    np.testing.assert_allclose(acc, [1.0, 2 / 3, 1 / 2])


def test_mc_scorer_picks_highest_total_log_likelihood_not_mean():
    V = 8
    t = torch.full((V, V), 0.0)
    # option A: one token (2) then EOS; option B: two tokens (3, 5) then EOS, each more likely
    # per token than A's first token but lower in total
    t[1] = torch.tensor([-9, -9, 0.0, 2.0, -9, -9, -9, -9])
    t[2] = torch.tensor([-9, -9, -9, -9, -9, -9, -9, 3.0])
    t[3] = torch.tensor([-9, -9, -9, -9, -9, 0.0, 0.84, -9])
    t[5] = torch.tensor([-9, -9, -9, -9, -9, -9, 0.84, 0.0])
    t[4] = torch.tensor([-9, -9, -9, -9, -9, -9, -9, 0.0])
    model = BigramLogits(t)
    lp = lambda a, b: _logp(t, a, b)  # noqa: E731
    tot_a = lp(1, 2) + lp(2, 7)
    tot_b = lp(1, 3) + lp(3, 5) + lp(5, 7)
    tot_c = lp(1, 4) + lp(4, 7)
    assert tot_a > tot_b and tot_a / 2 < tot_b / 3  # A wins on the total, B on the mean
    ctx = [6, 1]
    opts = [[3, 5, 7], [2, 7], [4, 7]]   # the answer (A) sits at position 1
    mc = it.MCSet(items=[it.Item("f", "q", "a", "d")], k=3, seqs=[np.array(ctx + o) for o in opts],
                  starts=np.array([2, 2, 2]), answer=np.array([1]))
    s = it.score_mc(model, mc)
    assert s["choice"].tolist() == [int(np.argmax([tot_b, tot_a, tot_c]))] == [1]
    assert s["mc"].tolist() == [True]
    assert s["answer_ll"][0] == pytest.approx(tot_a, rel=1e-6)
    # greedy from 1 is 3 (logit 1.0 > 0.0), so the answer 2 is not an exact match
    assert s["em"].tolist() == [False]
    # answer tokens 2 (argmax from 1 is 3: miss) and EOS (argmax from 2 is 7: hit)
    assert s["answer_acc"].tolist() == [0.5]
    # a second item (same options, answer at C) scored without distractors: answer values only
    mc2 = it.MCSet(items=mc.items * 2, k=3, seqs=mc.seqs * 2, starts=np.array([2] * 6), answer=np.array([1, 2]))
    s2 = it.score_mc(model, mc2, mc_items=1)
    assert s2["mc_scored"].tolist() == [True, False] and s2["mc"].tolist() == [True, False]
    assert s2["answer_ll"][1] == pytest.approx(tot_c, rel=1e-6) and s2["answer_acc"][1] == 0.5
    assert s2["choice"].tolist() == [1, -1]
    # move the answer to option B: the scorer still chooses A, so the item is wrong
    mc.answer = np.array([0])
    assert it.score_mc(model, mc)["mc"].tolist() == [False]


def test_build_mc_distractors_same_family_and_truncation():
    items = [it.Item("fa", f"q{i}", f"ans{i}", f"d{i}") for i in range(5)] + \
            [it.Item("fb", "qb0", "bb0", "e0"), it.Item("fb", "qb1", "bb1", "e1")]

    def encode(s: str) -> list[int]:
        return [ord(c) % 50 + 2 for c in s]

    mc = it.build_mc(items, encode, eos_id=1, seq_len=12, k=3, seed=0)
    # family fb has 2 distinct answers: fewer than k - 1 = 2 distractors -> left out
    assert [x.family for x in mc.items] == ["fa"] * 5 and mc.dropped == 2
    for i, item in enumerate(mc.items):
        for j in range(3):
            s = mc.seqs[i * 3 + j]
            assert len(s) <= 12 and s[-1] == 1 and s[0] == 1  # [eos] + prompt ... option + [eos]
        ans = encode(item.targets)
        assert list(mc.seqs[i * 3 + mc.answer[i]][mc.starts[i * 3 + mc.answer[i]]:-1]) == ans
        others = [list(mc.seqs[i * 3 + j][mc.starts[i * 3 + j]:-1]) for j in range(3) if j != mc.answer[i]]
        pool = [encode(x.targets) for x in items if x.family == "fa" and x is not item]
        assert all(o in pool for o in others) and len({tuple(o) for o in others}) == 2
    # a long prompt is cut from the left; the continuation is kept whole
    long = [it.Item("fa", "x" * 40, f"ans{i}", f"l{i}") for i in range(3)]
    mc2 = it.build_mc(long, encode, eos_id=1, seq_len=12, k=2, seed=0)
    assert all(len(s) == 12 for s in mc2.seqs)


# ---- documents in packed blocks ----------------------------------------------------------------------
def test_document_ids_and_accuracy_hand_example():
    eos = 1
    blocks = np.array([[5, 1, 6, 7], [1, 8, 9, 1]])
    # stream 5 1 | 6 7 1 | 8 9 1: targets are stream positions 1-3 and 5-7
    ids = it.document_ids(blocks, eos)
    assert ids.tolist() == [[0, 1, 1], [2, 2, 2]]
    correct = np.array([[True, False, True], [True, True, False]])
    docs, acc = it.document_accuracy(correct, ids, min_tokens=1)
    assert docs.tolist() == [0, 1, 2]
    np.testing.assert_allclose(acc, [1.0, 0.5, 2 / 3])
    docs, acc = it.document_accuracy(correct, ids, min_tokens=2)
    assert docs.tolist() == [1, 2]


def test_block_token_correct_matches_hand_argmax():
    table = _table()
    model = BigramLogits(table)
    blocks = np.array([[1, 2, 7, 0], [3, 5, 7, 1]])
    c = it.block_token_correct(model, blocks, batch_size=1)
    # argmax from 1 -> 2, 2 -> 7, 7 -> 0 (all -20: first index), 3 -> 5, 5 -> 7, 7 -> 0
    assert c.tolist() == [[True, True, True], [True, True, False]]


def test_families_from_templates():
    from lm_experiments.data.instructions import FT_FAMILIES, POST_FAMILIES

    assert it.family_of('What is the opposite of "hot"?', POST_FAMILIES) == "wordnet_antonyms"
    assert it.family_of('Define the word "dog" (noun).', POST_FAMILIES) == "wordnet_definition"
    assert it.family_of('Give synonyms of the verb "run".', POST_FAMILIES) == "wordnet_synonyms"
    assert it.family_of("How are you today?", POST_FAMILIES) == "chatterbot_qa"
    assert it.family_of('Name a part of "car".', FT_FAMILIES) == "wordnet_part_of"
    assert it.family_of("Chemistry question: What is the symbol of iron?", FT_FAMILIES) == "element_facts"
    item = it.parse_document('What is the opposite of "hot"?\n\ncold', POST_FAMILIES, "h")
    assert (item.family, item.inputs, item.targets, item.doc) == ("wordnet_antonyms", 'What is the opposite of "hot"?',
                                                                  "cold", "h")
    assert it.parse_document("no blank line here", POST_FAMILIES) is None
    assert math.isfinite(it.DEFAULT_K)
