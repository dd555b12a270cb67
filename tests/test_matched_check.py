"""The matched-L_im check on tables built for each half: it PASSes a planted retention
benefit at equal L_im, FAILs the confound it exists for (the mixed arm reaches a lower
L_im and hence a lower L_ret, on the SAME L_ret(L_im) curve), and is INCONCLUSIVE without
overlap or with too few seeds; the per-seed statistic is pinned on a hand example; the
theory study writes a table whose checkpoints are the simulator's own runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paper_checks.checks_frontier import CheckOptions
from paper_checks.checks_matched import judge_matched, matched_checks, seed_difference

OPTS = CheckOptions()


def _rows(method: str, lam: float, seed: int, l_im: np.ndarray, l_ret: np.ndarray, side: str = "lm") -> list[dict]:
    return [{"side": side, "pipeline": "p", "method": method, "mix_fraction": lam, "seed": seed,
             "upstream_id": f"{method}{seed}", "checkpoint": i, "post_step": 10 * (i + 1), "ft_lr": 1e-4,
             "L_im": float(a), "L_ret": float(b), "L_ft": 2.0, "L_pre": 4.0, "diverged": False,
             "run_id": f"{method}{seed}:{i}"} for i, (a, b) in enumerate(zip(l_im, l_ret))]


def _lm_table(benefit: float, seeds: int = 5, noise: float = 0.02, rng_seed: int = 0) -> pd.DataFrame:
    """L_ret = 1 + 0.8 L_im (+ seed offset + noise) on both arms; the mixed arm's
    trajectory runs to lower L_im (2.6 vs 2.9 at its end) and sits ``benefit`` lower."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for s in range(seeds):
        off = rng.normal(0, 0.05)
        im_u = np.linspace(3.6, 2.9, 6)
        im_m = np.linspace(3.2, 2.6, 6)
        rows += _rows("unmixed", 0.0, s, im_u, 1 + 0.8 * im_u + off + rng.normal(0, noise, 6))
        rows += _rows("mixed", 1.0, s, im_m, 1 + 0.8 * im_m + off - benefit + rng.normal(0, noise, 6))
    return pd.DataFrame(rows)


def test_seed_difference_hand_example() -> None:
    # unmixed: L_ret = 5 at L_im 1, 7 at L_im 3 (slope 1); mixed: 4 at L_im 2, 4 at L_im 4
    # overlap [2, 3]: unmixed 6..7 (mean 6.5), mixed 4 -> mean difference 2.5 on any uniform grid
    u = pd.DataFrame({"L_im": [1.0, 3.0], "L_ret": [5.0, 7.0]})
    m = pd.DataFrame({"L_im": [2.0, 4.0], "L_ret": [4.0, 4.0]})
    d, (lo, hi) = seed_difference(u, m)
    assert (lo, hi) == (2.0, 3.0) and d == pytest.approx(2.5)
    # equal L_im averaged; no overlap -> NaN
    d2, _ = seed_difference(pd.DataFrame({"L_im": [1.0, 1.0, 2.0], "L_ret": [1.0, 3.0, 2.0]}),
                            pd.DataFrame({"L_im": [1.0, 2.0], "L_ret": [0.0, 0.0]}))
    assert d2 == pytest.approx(2.0)
    assert np.isnan(seed_difference(u, pd.DataFrame({"L_im": [5.0, 6.0], "L_ret": [1.0, 1.0]}))[0])


def test_lm_like_pass_fail_inconclusive() -> None:
    status, ev, data = judge_matched(_lm_table(benefit=0.3), "lm", OPTS)
    assert status == "PASS", ev
    assert data["difference"]["point"] == pytest.approx(0.3, abs=0.03)
    # the confound: the mixed arm has lower L_im and lower L_ret, but on the same curve
    status, ev, data = judge_matched(_lm_table(benefit=0.0), "lm", OPTS)
    assert status == "FAIL", ev
    # reversed: mixed retains worse at equal L_im
    assert judge_matched(_lm_table(benefit=-0.3), "lm", OPTS)[0] == "FAIL"
    # too few seeds
    status, ev, _ = judge_matched(_lm_table(benefit=0.3, seeds=2), "lm", OPTS)
    assert status == "INCONCLUSIVE" and "too few seeds" in ev


def test_no_overlap_is_inconclusive() -> None:
    rows = []
    for s in range(3):
        rows += _rows("unmixed", 0.0, s, np.array([5.0, 4.0]), np.array([6.0, 5.0]))
        rows += _rows("mixed", 1.0, s, np.array([3.0, 2.0]), np.array([3.0, 2.0]))
    status, ev, _ = judge_matched(pd.DataFrame(rows), "lm", OPTS)
    assert status == "INCONCLUSIVE" and "do not overlap" in ev


def test_theory_like_exact_pass_and_fail() -> None:
    im_u, im_m = np.linspace(2.0, 0.0, 5), np.linspace(1.0, 0.0, 5)
    same = pd.DataFrame(_rows("unmixed", 0.0, 0, im_u, 3 + im_u, "theory") + _rows("mixed", 0.5, 0, im_m, 3 + im_m, "theory"))
    assert judge_matched(same, "theory", OPTS)[0] == "FAIL"
    better = pd.DataFrame(_rows("unmixed", 0.0, 0, im_u, 3 + im_u, "theory")
                          + _rows("mixed", 0.5, 0, im_m, 2 + im_m, "theory"))
    status, ev, data = judge_matched(better, "theory", OPTS)
    assert status == "PASS" and "exact" in ev


def test_matched_checks_reads_the_table(tmp_path: Path) -> None:
    p = tmp_path / "matched.csv"
    assert matched_checks(p, "lm", "lm.x", OPTS)[0]["evidence"].startswith("no data")
    _lm_table(benefit=0.3).to_csv(p, index=False)
    # three rows per pipeline since issue 22: matched L_im, matched L_im and L_pre, LoRA arms
    c, c_pre, c_lora = matched_checks(p, "lm", "lm.x", OPTS)
    assert c["id"] == "lm.x.b.matched_im.p" and c["status"] == "PASS" and c["analogue"] == "b.matched_im"
    assert c_pre["id"] == "lm.x.b.matched_im_pre.p" and c_lora["evidence"].startswith("no data")


def test_theory_study_checkpoints_are_simulator_runs(tmp_path: Path) -> None:
    """Each row of the Appendix C pipeline is the three-stage simulation with that many
    post-training steps (independent call of ``simulate``), and the last checkpoint of the
    grid is post-trained for the grid's horizon."""
    from linear_theory.config import load_config
    from linear_theory.simulate import simulate
    from linear_theory.studies.matched import appendix_c_rows, step_grid

    rows = pd.DataFrame(appendix_c_rows(None, ["stages.post.steps=20"], n_points=4, horizon=2))
    assert sorted(rows["post_step"].unique()) == step_grid(40, 4)
    r = rows.loc[(rows["method"] == "unmixed")].iloc[-1]
    ref = simulate(load_config(None, ["stages.post.steps=40", "stages.pre.mix_fraction=0.0"]))
    assert r["post_step"] == 40
    assert r["L_im"] == pytest.approx(ref.losses["L_im"], rel=1e-9)
    assert r["L_ret"] == pytest.approx(ref.losses["L_ret"], rel=1e-9)


def test_matched_figure_drawn_per_table(tmp_path: Path) -> None:
    from figures.matched import matched_figures

    (tmp_path / "lm" / "q").mkdir(parents=True)
    _lm_table(benefit=0.3).to_csv(tmp_path / "lm" / "q" / "matched.csv", index=False)
    notes: list[str] = []
    assert matched_figures(tmp_path / "empty", tmp_path / "f0", notes.append) == [] and notes
    paths = matched_figures(tmp_path, tmp_path / "f")
    assert sorted(p.name for p in paths) == ["lm-q_matched_lret-vs-lim.pdf", "lm-q_matched_lret-vs-lim.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
