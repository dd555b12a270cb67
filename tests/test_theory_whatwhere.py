"""Theory analogues of what/where (linear_theory.studies.whatwhere): the fine-tuning update
has zero overlap with the specialized input subspace (Lemma C.16) to machine precision and
a nonzero one with the inconsistent subspace; mode transitions counted against spectra set by
hand; factor rollback against the expected loss written out here."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from linear_theory.config import default_config
from linear_theory.studies import whatwhere as ww
from linear_theory.tasks import build_task

TWO_ARMS = {"unmixed": ["stages.pre.mix_fraction=0.0"], "mixed": []}


@pytest.fixture(scope="module")
def runs():
    return ww.run_arms(default_config(), TWO_ARMS)


@pytest.fixture(scope="module")
def runs_random_basis():
    cfg = default_config().replace(["task.basis=random", "model.init=aligned"])
    return ww.run_arms(cfg, TWO_ARMS)


@pytest.mark.parametrize("which", ["runs", "runs_random_basis"])
def test_ft_update_has_zero_overlap_with_specialized_subspace(which, request):
    res = request.getfixturevalue(which)
    for arm, r in res.items():
        tm = build_task(r.config.task)
        th = r.thetas()
        D = th["ft"] - th["post"]
        n, k = r.config.task.n, r.config.task.k
        assert np.linalg.norm(D) > 0.1  # fine-tuning did move theta
        # Lemma C.16: D_ft has no input variance along V_spec, so D V_spec = 0
        spec = D @ tm.V[:, n - k:]
        assert np.linalg.norm(spec) <= 1e-12 * np.linalg.norm(D), arm
        rows = [x for x in ww.overlap_rows({arm: r}) if x["update"] == "ft"]
        share = {x["block"]: x["input_share"] for x in rows}
        assert abs(share["specialized"]) <= 1e-12
        assert share["inconsistent"] > 0.1   # the inconsistent targets move: fine-tuning acts there
        assert sum(share.values()) == pytest.approx(1.0, abs=1e-9)  # the blocks span the input space


def test_mode_transitions_counted_from_hand_set_spectra():
    cfg = default_config()  # n = 8, k = 2: invariant 0-3, inconsistent 4-5, specialized 6-7
    post = build_task(cfg.task).post.sigma  # 6, 5.5, 5, 4.5, 2.0, 1.8, 4, 4
    spectra = {"pre": np.array([6, 5.5, 5, 4.5, 1.0, 0.8, 4.0, 0.0]),
               "post": np.array([6, 5.5, 5, 4.5, 2.0, 1.0, 3.9, 0.0]),
               "ft": np.array([6, 5.5, 5, 4.0, 0.2, 1.75, 3.9, 4.0])}
    fake = SimpleNamespace(config=cfg, spectra=spectra)
    rows = {(r["pair"], r["block"]): r for r in ww.mode_rows({"x": fake}, tol=0.1)}
    # by hand, |s - post| <= 0.1 post: pre holds inv 1111, inc 00, spec 10; post inv 1111, inc 10, spec 10;
    # ft inv 1110 (4.0 vs 4.5: 11% off), inc 01 (1.75 vs 1.8), spec 11
    assert rows[("pre->post", "inconsistent")]["n_0->1"] == 1 and rows[("pre->post", "inconsistent")]["n_0->0"] == 1
    assert rows[("pre->post", "specialized")]["n_1->1"] == 1 and rows[("pre->post", "specialized")]["n_0->0"] == 1
    r = rows[("post->ft", "invariant")]
    assert (r["n_1->1"], r["n_1->0"]) == (3, 1) and r["forgetting"] == pytest.approx(0.25)
    r = rows[("post->ft", "inconsistent")]
    assert (r["n_1->0"], r["n_0->1"]) == (1, 1)
    r = rows[("post->ft", "specialized")]
    assert (r["n_1->1"], r["n_0->1"]) == (1, 1) and r["modes_after"] == "11"
    assert post[6] == 4.0


def test_default_task_forgets_inconsistent_keeps_specialized(runs):
    rows = ww.mode_rows(runs)
    pf = {(r["arm"], r["block"]): r for r in rows if r["pair"] == "post->ft"}
    assert pf[("mixed", "specialized")]["n_1->1"] == 2        # held through fine-tuning
    assert pf[("unmixed", "specialized")]["n_0->0"] == 2      # never learned
    assert pf[("mixed", "inconsistent")]["n_1->0"] == 2       # moved to the ft targets
    assert all(pf[(a, "invariant")]["n_1->1"] == 4 for a in ("mixed", "unmixed"))


def test_factor_rollback_losses_against_written_out_expected_loss(runs):
    rows = {(r["arm"], r["rolled_back"]): r for r in ww.rollback_rows(runs)}
    for arm, r in runs.items():
        tm = build_task(r.config.task)
        (w1p, w2p), (w1f, w2f) = r.weights["post"], r.weights["ft"]

        def loss(theta, t):
            d = theta - tm.A(t)
            return float(np.trace(d @ tm.C(t) @ d.T))

        l_im, l_ret = loss(w1p @ w2p, "post"), loss(w1f @ w2f, "post")
        for what, theta in (("W1", w1p @ w2f), ("W2", w1f @ w2p)):
            row = rows[(arm, what)]
            assert row["L_ret_rb"] == pytest.approx(loss(theta, "post"), rel=1e-10)
            assert row["share_ret_undone"] == pytest.approx((l_ret - loss(theta, "post")) / (l_ret - l_im), rel=1e-9)
            assert row["cost_ft"] == pytest.approx(loss(theta, "ft") - loss(w1f @ w2f, "ft"), rel=1e-9, abs=1e-12)
        assert rows[(arm, "both")]["share_ret_undone"] == pytest.approx(1.0, abs=1e-12)
        assert rows[(arm, "none")]["share_ret_undone"] == 0.0
