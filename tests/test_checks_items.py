"""The what / where statistics (paper_checks.checks_items, checks_beyond) against hand
calculations: the same-items permutation null, the rollback units with a minimum effect and
Holm, and the same-items row end to end from eval.npz files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from paper_checks.checks_beyond import beyond_checks
from paper_checks.checks_items import mean_pairwise_jaccard, rollback_units, same_items_test


def test_same_items_permutation_hand_example():
    """Three seeds, two items. Item 0: after post-training both arms are right; fine-tuning
    makes the unmixed arm wrong and leaves the mixed arm right, in every seed (protected in
    all three). Item 1: right throughout in both arms (never protected, whatever the labels).
    Observed overlap 1. Swapping the labels of item 0 in a seed makes it "mixed forgets,
    unmixed keeps", which is not protected, so under the null item 0 is protected in each seed
    with probability 1/2 independently. The overlap (mean over seed pairs with a non-empty
    union) reaches 1 only when item 0 is protected in all three seeds (2 protected: pairs
    1, 0, 0 -> 1/3; 1 protected: 0, 0; none: undefined, counted as not reaching): p = 1/8.
    The old interchangeable-items figure p/(2-p) at share 1/2 would be 1/3; 1/2 itself (the
    share) would be 0.5: neither is this p."""
    s, n = 3, 2
    post_u = np.ones((s, n), bool)
    ft_u = np.array([[False, True]] * s)
    post_m = np.ones((s, n), bool)
    ft_m = np.ones((s, n), bool)
    r = same_items_test(post_u, ft_u, post_m, ft_m)
    assert r["exact"] and r["n_perm"] == 2 ** 6
    assert r["jaccard"] == 1.0 and r["p"] == pytest.approx(1 / 8)
    # null mean over the 8 item-0 patterns with a defined overlap: 1 (x1), 1/3 (x3), 0 (x3); none undefined
    assert r["null_mean"] == pytest.approx((1 + 3 * (1 / 3) + 0) / 7)


def test_mean_pairwise_jaccard_hand():
    sets = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], bool)
    # pairs: (0,1) 1/3; (0,2) 0/2 = 0; (1,2) 0/2 = 0 -> mean 1/9
    assert mean_pairwise_jaccard(sets) == pytest.approx(1 / 9)


def test_rollback_units_min_effect_and_holm():
    """final_norm differs by +0.0015 on every seed (interval far from zero, but under the 0.05
    bar): it must not make the row PASS. layers.3 differs by ~0.3 and does."""
    tiny = [0.0014, 0.0015, 0.0016, 0.0015, 0.0015]
    status, res = rollback_units({"final_norm": tiny})
    assert status == "FAIL" and not res["final_norm"]["differs"]  # inside (-0.05, 0.05)
    big = [0.30, 0.28, 0.33, 0.31, 0.29]
    status, res = rollback_units({"final_norm": tiny, "layers.3": big})
    assert status == "PASS" and res["layers.3"]["differs"]
    # Holm over 2 units by hand: sorted p_(1) <= p_(2): adjusted 2 p_(1) and max(2 p_(1), p_(2))
    p1, p2 = sorted([res["final_norm"]["p"], res["layers.3"]["p"]])
    got = sorted([res["final_norm"]["p_holm"], res["layers.3"]["p_holm"]])
    assert got == pytest.approx([min(1.0, 2 * p1), max(min(1.0, 2 * p1), p2)])
    assert res["layers.3"]["bar"] == 0.05 and res["final_norm"]["bar"] == 0.05
    status, _ = rollback_units({"a": [0.1, -0.2, 0.3], "b": [0.01, 0.02, 0.0]})
    assert status == "INCONCLUSIVE"


def _whatwhere_tree(tmp, protected_every_seed: bool):
    """An LM output directory with 4 seeds x 2 arms, 8 D_post test blocks of 4 target tokens;
    every block fully right after post-training; after fine-tuning the unmixed arm gets blocks
    0-1 wrong (all seeds) and, when ``protected_every_seed`` is False, the mixed arm does too."""
    lm = tmp / "lm" / "q"
    (lm / "whatwhere").mkdir(parents=True)
    rows = []
    for m in ("unmixed", "mixed"):
        for s in range(4):
            rid = f"{m}-{s}"
            st3 = np.ones((8, 4), bool)
            if m == "unmixed" or not protected_every_seed:
                st3[[0, 1]] = False
            (lm / "runs" / rid).mkdir(parents=True)
            np.savez(lm / "runs" / rid / "eval.npz", post_correct_stage2=np.ones((8, 4), bool), post_correct_stage3=st3)
            rows.append({"pipeline": "p", "method": m, "mix_fraction": 0.0 if m == "unmixed" else 1.0,
                         "compute_matched": False, "seed": s, "ft_lr": 1e-3, "run_id": rid, "pair": "post->ft",
                         "set": "post.block", "n": 8, "forgetting": 0.25 if m == "unmixed" else 0.0})
    pd.DataFrame(rows).to_csv(lm / "whatwhere" / "transitions.csv", index=False)
    pd.DataFrame([{"pipeline": "p", "unmixed_arm": "unmixed", "mixed_arm": "mixed", "mix_fraction": 1.0,
                   "ft_lr": 1e-3, "set": "post.block", "seeds": 4, "n": 8, "protected_per_seed": 2.0,
                   "protected_all_seeds": 2, "protected_jaccard_across_seeds": 1.0}]).to_csv(
        lm / "whatwhere" / "protection.csv", index=False)
    (lm / "whatwhere" / "items.json").write_text(json.dumps({"pipeline": "p", "tau": {"post.block": 0.5}}))
    return tmp


def test_same_items_row_from_eval_npz(tmp_path):
    """Blocks 0 and 1 protected in all 4 seeds, the other 6 never flip: observed overlap 1;
    under the null each of the 8 (block, seed) flips of blocks 0-1 keeps the protection with
    probability 1/2, so the overlap reaches 1 only when all 8 keep it or when one block keeps it in all
    seeds and the other in none (then the sets are equal): 1/256 + 2/256 = 3/256 < 0.05."""
    rows = {r["id"]: r for r in beyond_checks(_whatwhere_tree(tmp_path / "a", True))}
    r = rows["lm.q.whatwhere.same_items"]
    assert r["status"] == "PASS", r["evidence"]
    assert r["data"]["jaccard"] == 1.0 and r["data"]["p"] == pytest.approx(3 / 256, abs=0.01)
    rows = {r["id"]: r for r in beyond_checks(_whatwhere_tree(tmp_path / "b", False))}
    r = rows["lm.q.whatwhere.same_items"]  # the mixed arm forgets them too: nothing protected
    assert r["status"] != "PASS"
