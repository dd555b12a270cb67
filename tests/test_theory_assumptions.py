"""Assumption checker: verdicts, the C.6 alpha interval, Gamma along the trajectory, joint
feasibility (C.3 + C.4 + C.6) and the relaxation checked in simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from linear_theory import default_config, simulate
from linear_theory.checks.assumptions import alpha_interval_c6, check_assumptions, run_assumptions
from linear_theory.cli import main


@pytest.fixture(scope="module")
def body():
    return run_assumptions(default_config())


def _a(body, aid):
    return next(a for a in body["assumptions"] if a["id"] == aid)


def test_all_ids_present_with_numbers(body):
    ids = [a["id"] for a in body["assumptions"]]
    for aid in ("C.1", "C.3", "C.4", "C.5", "C.6", "C.8", "C.11", "C.12", "C.13", "C.13-eps"):
        assert aid in ids
    for a in body["assumptions"]:
        assert set(a) == {"id", "holds", "numbers", "explanation"} and a["numbers"]


def test_default_task_verdicts(body):
    assert _a(body, "C.1")["holds"] and _a(body, "C.3")["holds"] and _a(body, "C.5")["holds"]
    assert _a(body, "C.6")["holds"] and _a(body, "C.8")["holds"]
    assert not _a(body, "C.4")["holds"]  # beta = 4 >= c_mis/2 = 0.5
    assert _a(body, "C.3")["numbers"]["c_mis_sup"] == pytest.approx(1.0)
    lo, hi = _a(body, "C.6")["numbers"]["alpha_interval_where_C6_holds"]
    assert lo == pytest.approx(1 / 3) and hi == 1.0  # alpha (4 - 1) > 1 from the first inconsistent feature


@pytest.mark.parametrize("seed", range(5))
def test_alpha_interval_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    s_pre, s_post, beta = rng.uniform(0, 1, 3), rng.uniform(0, 2, 3), float(rng.uniform(0, 4))
    grid = np.linspace(0, 1, 20001)
    ok = np.array([np.all(a * beta > (1 - a) * s_pre + a * s_post) for a in grid])
    iv = alpha_interval_c6(s_pre, s_post, beta)
    if iv is None:
        assert not ok.any()
    else:
        assert ok.any() and abs(grid[ok].min() - iv[0]) <= 1e-4 and grid[ok].max() == 1.0


def test_gamma_and_c12_from_trajectory():
    cfg = default_config()
    c11 = next(a for a in check_assumptions(cfg) if a["id"] == "C.11")
    c12 = next(a for a in check_assumptions(cfg) if a["id"] == "C.12")
    # independent: paper init is balanced and aligned, so ||W1||_op^2 = ||W2||_op^2 = max_i s_i
    tr = simulate(cfg, trajectory_stride=1).trajectory
    post = tr[tr.stage == "post"]
    gamma = post[[f"s_{i}" for i in range(cfg.task.n)]].to_numpy().max()
    assert c11["numbers"]["Gamma_measured"] == pytest.approx(gamma, rel=1e-12)
    assert c12["numbers"]["4_eta_(lambda+2)_Gamma"] == pytest.approx(4 * 0.01 * 2 * gamma, rel=1e-12)


def test_joint_infeasibility_and_relaxation(body):
    f = body["feasibility"]
    assert f["jointly_feasible"] is False
    sub = f["infeasible_subsets"][0]
    assert sub["ids"] == ["C.3", "C.4", "C.6"]
    mc = sub["numbers"]["random_tasks"]
    assert mc["C3_and_C4_and_C6"] == 0 and mc["C4_and_C6"] == 0
    assert mc["C3_and_C4"] > 0 and mc["C3_and_C6"] > 0  # each pair alone is satisfiable
    mr = f["minimal_relaxation"]
    assert mr["conclusion_holds_in_simulation"] is True
    ideal = mr["simulation"]["idealized"]
    assert abs(ideal["mixed"]["Delta"]) < 1e-9 < ideal["unmixed"]["Delta"]
    assert f["alternative_keep_C4"]["conclusion_holds_in_simulation"] is False


def test_errata_format(body):
    assert body["errata"]
    for e in body["errata"]:
        assert set(e) == {"id", "location", "printed", "observed", "corrected", "evidence"}


def test_cli_writes_assumptions_json(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["assumptions", "--out", str(out), "--set", "stages.post.steps=20"]) == 0
    body = json.loads((out / "assumptions.json").read_text())
    assert {"assumptions", "feasibility", "errata", "config", "provenance"} <= set(body)
    assert "C.6" in capsys.readouterr().out
    assert main(["assumptions", "--out", str(tmp_path / "b"), "--set", "stages.pre.mix_fraction=-1"]) == 2
    assert not (tmp_path / "b").exists()
