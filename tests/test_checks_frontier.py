"""Frontier claims judged in nats (paper_checks.checks_frontier.compare_frontiers): the gap at
matched loss against the fixed bar, the hypervolume interval inside its attainable range,
and Appendix B.2's "alone shifts the frontier" checks."""

from __future__ import annotations

import pandas as pd
import pytest

from early_exposure.frontier import FRONTIER_COLUMNS
from early_exposure.stats import t_interval
from paper_checks import CheckOptions, build_report
from paper_checks.checks_frontier import compare_frontiers
from paper_checks.common import HV_RANGE, MEANINGFUL_NATS
from paper_checks.synthetic import frontier_rows, write_fixture

OPTS = CheckOptions()


def frontier_table(points_by_seed: dict[str, dict[int, list[tuple[float, float]]]]) -> pd.DataFrame:
    """An LM frontier table: per method, per seed, (L_ft, L_ret) points at ft lrs 1e-4, 3e-4 (also used by
    tests/test_stats_intervals.py)."""
    rows = []
    for method, by_seed in points_by_seed.items():
        for s, pts in by_seed.items():
            for j, (l_ft, l_ret) in enumerate(pts):
                rows.append({"side": "lm", "pipeline": "p", "method": method,
                             "mix_fraction": 0.0 if method == "unmixed" else 1.0, "compute_matched": False,
                             "upstream_id": f"{method}-{s}", "post_hparams": "{}", "ft_lr": [1e-4, 3e-4][j],
                             "ft_budget": 1.0, "seed": s, "L_im": 2.0, "L_ret": l_ret, "L_ft": l_ft, "L_pre": 4.0,
                             "diverged": False, "run_id": f"{method}-{s}-{j}"})
    return pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))


def test_gap_in_nats_decides_not_the_area():
    """Baseline front y = 4 - x on [1, 3]; candidate the same line lowered by d on every seed
    (plus a per-seed wobble of +-0.002): the gap is d on each seed. d = 0.03 < 0.04 FAILs
    (larger area but no meaningful gain); d = 0.1 PASSes."""
    for d, want in ((0.03, "FAIL"), (0.1, "PASS")):
        base = {s: [(1.0, 3.0), (3.0, 1.0)] for s in range(5)}
        wob = [0.002, -0.002, 0.001, -0.001, 0.0]
        cand = {s: [(1.0, 3.0 - d - wob[s]), (3.0, 1.0 - d - wob[s])] for s in range(5)}
        table = frontier_table({"unmixed": base, "mixed": cand})
        status, ev, data = compare_frontiers(table, "unmixed", "mixed", "ret_ft", "lm", OPTS)
        assert data["loss_gap"]["point"] == pytest.approx(d, abs=1e-9)
        assert data["min_effect_gap"] == MEANINGFUL_NATS
        assert data["hv_diff"]["lo"] > 0  # the area is larger either way
        assert status == want, ev
        assert data["p"] is not None and data["sign_flip_p"] is not None
        assert data["overlap"]["0"] == [1.0, 3.0] and data["overlap_width_min"] == pytest.approx(2.0)


def test_hv_interval_stays_in_its_range():
    base = {s: [(1.0, 3.0), (3.0, 1.0)] for s in range(5)}
    cand = {0: [(1.0, 1.0), (1.0, 1.0)], 1: [(2.9, 2.9), (2.9, 2.9)], 2: [(1.0, 1.05), (1.05, 1.0)],
            3: [(1.0, 1.0), (1.0, 1.0)], 4: [(1.0, 1.0), (1.0, 1.0)]}
    table = frontier_table({"unmixed": base, "mixed": cand})
    _, _, data = compare_frontiers(table, "unmixed", "mixed", "ret_ft", "lm", OPTS)
    per_seed = list(data["per_seed"]["hv_diff"].values())
    assert t_interval(per_seed).hi > HV_RANGE  # the plain t-interval claims an impossible value
    assert data["hv_diff"]["hi"] == HV_RANGE and data["hv_diff"]["lo"] == pytest.approx(t_interval(per_seed).lo)


def test_b2_alone_shifts_the_frontier(tmp_path):
    for good, want in ((True, "PASS"), (False, "FAIL")):
        d = write_fixture(tmp_path / str(good), good=good)
        got = {c["id"]: c for c in build_report(d, OPTS)["checks"]}
        for name in ("replay_alone", "dropout_alone"):
            for side in ("lm.cpu-quick", "theory"):
                c = got[f"{side}.d.{name}.ret_ft.general>music>chem"]
                assert c["status"] == want, (c["id"], c["evidence"])
                assert c["data"]["baseline"] == "unmixed" and c["data"]["candidate"].startswith("unmixed+")


def test_too_few_seeds_reports_estimate_without_p():
    df = frontier_rows("lm", "p", {"unmixed": 0.0, "mixed": 0.5}, seeds=[0, 1])
    status, _, data = compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS)
    assert status == "INCONCLUSIVE" and data["p"] is None


def test_l_im_confound_is_stated():
    """Arms whose best L_im differ by 0.45 nats (the LoRA case): the evidence says the gap can
    reflect post-training; equal L_im: no such note."""
    base = {s: [(1.0, 3.0), (3.0, 1.0)] for s in range(5)}
    cand = {s: [(1.0, 2.8 - 0.001 * s), (3.0, 0.8 - 0.001 * s)] for s in range(5)}
    df = frontier_table({"unmixed": base, "mixed": cand})
    _, ev, data = compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS)
    assert data["L_im_difference"] == 0.0 and "post-training as well as retention" not in ev
    df.loc[df["method"] == "mixed", "L_im"] = 2.0 - 0.45
    _, ev, data = compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS)
    assert data["L_im_difference"] == pytest.approx(0.45) and "post-training as well as retention" in ev


def test_without_overlap_the_area_test_gives_p():
    """Candidate fronts entirely left of the baseline's in L_ft (no matched range): the gap is
    undefined, the verdict and its p come from the area difference against 0.05."""
    from scipy import stats

    base = {s: [(3.0, 2.0), (4.0, 1.0)] for s in range(5)}
    cand = {s: [(1.0, 1.5 + 0.01 * s), (2.0, 0.5)] for s in range(5)}
    status, _, data = compare_frontiers(frontier_table({"unmixed": base, "mixed": cand}), "unmixed", "mixed", "ret_ft",
                                        "lm", OPTS)
    hv = list(data["per_seed"]["hv_diff"].values())
    assert data["statistic"] == "hv_diff" and status == "PASS"
    assert data["p"] == pytest.approx(stats.ttest_1samp(hv, 0.05).pvalue, rel=1e-9)
