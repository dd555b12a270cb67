"""Matched L_im done fully (paper_checks.checks_matched): the evidence states the overlap and
the checkpoints inside it, fewer than three per arm is INCONCLUSIVE, the L_pre-controlled
variant separates a D_pre effect from retention, and the LoRA arms get the same study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paper_checks.checks_matched import judge_matched, matched_checks
from paper_checks.common import CheckOptions

OPTS = CheckOptions()


def _rows(method, lam, seed, l_im, l_ret, l_pre=None):
    l_pre = np.full(len(l_im), 4.0) if l_pre is None else l_pre
    return [{"side": "lm", "pipeline": "p", "method": method, "mix_fraction": lam, "seed": seed,
             "upstream_id": f"{method}{seed}", "checkpoint": i, "post_step": 10 * (i + 1), "ft_lr": 1e-4,
             "L_im": float(a), "L_ret": float(b), "L_ft": 2.0, "L_pre": float(c), "diverged": False,
             "run_id": f"{method}{seed}:{i}"} for i, (a, b, c) in enumerate(zip(l_im, l_ret, l_pre))]


def _table(benefit=0.3, pre_shift=0.0, pre_slope=0.0, methods=("unmixed", "mixed"), seeds=5, n=6):
    """L_ret = 1 + 0.8 L_im + pre_slope (L_pre - 4) on both arms (mixed lower by ``benefit``);
    L_pre wobbles by checkpoint, the mixed arm's lower by ``pre_shift``; unmixed L_im 3.6 -> 2.9,
    mixed 3.2 -> 2.6 (six checkpoints each: overlap [2.9, 3.2], three of each inside)."""
    rows = []
    wob = np.array([0.1, -0.1, 0.05, -0.05, 0.0, 0.08, -0.02, 0.03])[:n]
    for s in range(seeds):
        off = 0.01 * s
        im_u, im_m = np.linspace(3.6, 2.9, n), np.linspace(3.2, 2.6, n)
        pre_u, pre_m = 4 + wob, 4 - pre_shift + wob[::-1]
        rows += _rows(methods[0], 0.0, s, im_u, 1 + 0.8 * im_u + pre_slope * (pre_u - 4) + off, pre_u)
        rows += _rows(methods[1], 1.0, s, im_m, 1 + 0.8 * im_m + pre_slope * (pre_m - 4) + off - benefit, pre_m)
    return pd.DataFrame(rows)


def test_evidence_states_overlap_and_checkpoints_inside():
    status, ev, data = judge_matched(_table(), "lm", OPTS)
    assert status == "PASS"
    # overlap [2.9, 3.2]: unmixed 3.18, 3.04, 2.9 (steps 40, 50, 60), mixed 3.2, 3.08, 2.96 (10, 20, 30)
    assert data["overlap"][0] == pytest.approx((2.9, 3.2)) and data["overlap_width"]["min"] == pytest.approx(0.3)
    assert data["inside_overlap"][0] == {"baseline": 3, "candidate": 3}
    assert data["inside_post_steps"][0] == {"baseline": [40, 50, 60], "candidate": [10, 20, 30]}
    assert "overlap width 0.3" in ev and "stage-2 steps inside" in ev


def test_fewer_than_three_inside_is_inconclusive():
    # four checkpoints per arm: unmixed 3.6, 3.37, 3.13, 2.9 -> 2 inside [2.9, 3.2]
    status, ev, _ = judge_matched(_table(n=4), "lm", OPTS)
    assert status == "INCONCLUSIVE" and "checkpoints per arm" in ev


def test_l_pre_control_separates_a_d_pre_effect():
    """No retention benefit, but the mixed arm's L_pre is 0.2 lower and L_ret rises 0.5 per
    nat of L_pre: at matched L_im alone the mixed arm looks 0.1 better (PASS); controlling for
    L_pre the benefit is 0 (FAIL). With a real 0.3 benefit on top, both PASS at 0.3 + 0.1 / 0.3."""
    df = _table(benefit=0.0, pre_shift=0.2, pre_slope=0.5)
    s1, _, d1 = judge_matched(df, "lm", OPTS)
    s2, _, d2 = judge_matched(df, "lm", OPTS, control_pre=True)
    assert s1 == "PASS" and d1["difference"]["point"] == pytest.approx(0.1, abs=0.03)
    assert s2 == "FAIL" and d2["difference"]["point"] == pytest.approx(0.0, abs=1e-9)
    s3, _, d3 = judge_matched(_table(benefit=0.3, pre_shift=0.2, pre_slope=0.5), "lm", OPTS, control_pre=True)
    assert s3 == "PASS" and d3["difference"]["point"] == pytest.approx(0.3, abs=1e-9)


def test_lora_arms_get_the_same_study(tmp_path):
    df = pd.concat([_table(), _table(benefit=0.0, methods=("unmixed+lora", "mixed+lora"))])
    df.to_csv(tmp_path / "matched.csv", index=False)
    got = {c["id"]: c for c in matched_checks(tmp_path / "matched.csv", "lm", "lm.x", OPTS)}
    assert got["lm.x.b.matched_im.p"]["status"] == "PASS"
    assert got["lm.x.b.matched_im_lora.p"]["status"] == "FAIL"
    assert got["lm.x.b.matched_im_lora.p"]["data"]["baseline"] == "unmixed+lora"
