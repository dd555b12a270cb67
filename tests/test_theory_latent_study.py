"""The latent-benefit study: closed forms (linear_theory.latent.theory) against independent
computations and the simulator, the cell verdict, and the verdict rows of latent_check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from linear_theory.latent import run_many, witness_config
from linear_theory.latent.check import CHECK_KEYS, latent_check
from linear_theory.latent.study import compare
from linear_theory.latent.theory import eckart_young, escape_gap, mode_flow, predict_pair, slots


def _logistic(s0: float, target: float, t: float) -> float:
    """Saxe et al. (2014): s(t) = target e^{4 target t} / (e^{4 target t} - 1 + target / s0)."""
    if target == 0.0:
        return s0 / (1.0 + 4.0 * s0 * t)
    e = math.exp(4.0 * target * t)
    return target * e / (e - 1.0 + target / s0)


def test_mode_flow_matches_saxe_and_discrete_gd():
    for s0, tgt, var, t in ((3.0, 0.2, 1.0, 2.0), (0.01, 2.0, 1.0, 1.5), (3.0, 0.0, 0.3, 2.0)):
        ref = _logistic(s0, tgt, var * t)  # the input variance rescales time
        assert mode_flow(s0, tgt, var, t) == pytest.approx(ref, rel=1e-12)
    # depth 3: balanced scalar GD a_l <- a_l - lr 2 (s - target) prod_{m != l} a_m at a small lr
    a, lr, steps = np.full(3, 3.0 ** (1 / 3)), 1e-4, 20000
    for _ in range(steps):
        s = a.prod()
        a = a - lr * 2 * (s - 0.2) * np.array([a[1] * a[2], a[0] * a[2], a[0] * a[1]])
    assert mode_flow(3.0, 0.2, 1.0, lr * steps, depth=3) == pytest.approx(a.prod(), rel=2e-3)


def test_eckart_young_is_the_best_rank_h_error():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    U, s, Vt = np.linalg.svd(A)
    for h in range(7):
        trunc = (U[:, :h] * s[:h]) @ Vt[:h]
        assert eckart_young(s, h) == pytest.approx(float(np.sum((A - trunc) ** 2)), rel=1e-10, abs=1e-12)


def test_cell_verdict_thresholds():
    def res(L_im, L_ret):
        return SimpleNamespace(losses={"L_im": L_im, "L_ret": L_ret, "L_ft": 0.0}, post_stopped=True, post_steps=10,
                               post_grad_norm=0.0, diverged=False)

    assert compare(res(18.0, 33.9), res(18.1, 18.0))["latent"]  # 0.55% apart, 47% better
    assert not compare(res(18.0, 33.9), res(18.3, 18.0))["latent"]  # L_im 1.7% apart
    assert not compare(res(18.0, 33.9), res(18.0, 33.7))["latent"]  # L_ret only 0.6% better
    assert not compare(res(18.0, 18.0), res(18.0, 33.9))["latent"]  # mixed retains worse


@pytest.fixture(scope="module")
def witness_runs():
    """h = 6 at gaps 0, 0.01, 0.1 and h = 8 at gap 0, each unmixed and mixed (alpha = 0.5)."""
    cases = [(6, 0.0), (6, 0.01), (6, 0.1), (8, 0.0)]
    cfgs = []
    for h, g in cases:
        cu = witness_config(width=h, gap=g)
        cfgs += [cu, cu.with_(pre={"mix_fraction": 0.5})]
    res = run_many(cfgs)
    return {case: (cfgs[2 * i], cfgs[2 * i + 1], res[2 * i], res[2 * i + 1]) for i, case in enumerate(cases)}


def test_tie_closed_form_against_simulation(witness_runs):
    """Exact tie, h = 6: both arms at the Eckart-Young optimum 2 c^2 (they drop different
    features), Delta L_ret = -[(c - s_inc0(t))^2 + (c - s_inc1(t))^2] with Saxe's logistic."""
    cu, cm, u, m = witness_runs[(6, 0.0)]
    c, t = 3.0, cu.ft.lr * cu.ft.steps
    assert u.post_stopped and m.post_stopped
    assert u.losses["L_im"] == pytest.approx(2 * c * c, abs=1e-8)
    assert m.losses["L_im"] == pytest.approx(2 * c * c, abs=1e-8)
    benefit = (c - _logistic(c, 0.2, t)) ** 2 + (c - _logistic(c, 0.0, t)) ** 2
    d_ret = m.losses["L_ret"] - u.losses["L_ret"]
    assert d_ret == pytest.approx(-benefit, rel=5e-3)  # gradient flow vs GD at lr 0.01
    assert predict_pair(cm, cu)["dL_ret"] == pytest.approx(-benefit, rel=1e-12)
    # mechanism: unmixed carries post-training on inc, fine-tuning erases it; mixed on spec, kept
    assert np.all(u.spectra["post"][4:6] > 2.99) and np.all(np.abs(u.spectra["post"][6:]) < 1e-3)
    assert np.all(m.spectra["post"][6:] > 2.99) and np.all(np.abs(m.spectra["post"][4:6]) < 1e-3)
    np.testing.assert_allclose(m.spectra["ft"][6:], m.spectra["post"][6:], atol=1e-6)
    assert np.all(u.spectra["ft"][4:6] < 0.3)
    assert slots(cm)["pre"] == [0, 1, 2, 3, 6, 7] and slots(cu)["pre"] == [0, 1, 2, 3, 4, 5]


def test_near_tie_plateau_and_escape(witness_runs):
    """gap 0.01: the unmixed arm stays on its plateau for the whole budget and Delta L_im is
    2 (c^2 - beta^2) = -0.1202; gap 0.1 > escape gap: it swaps and both arms agree."""
    cu, _, u, m = witness_runs[(6, 0.01)]
    assert not u.post_stopped and u.post_steps == cu.post.steps
    assert m.losses["L_im"] - u.losses["L_im"] == pytest.approx(2 * (9.0 - 3.01 ** 2), rel=1e-3)
    assert m.losses["L_ret"] - u.losses["L_ret"] < -15.0
    cu, _, u, m = witness_runs[(6, 0.1)]
    assert abs(m.losses["L_ret"] - u.losses["L_ret"]) < 1e-6
    assert u.losses["L_im"] == pytest.approx(2 * 9.0, abs=1e-8)  # now holds spec, drops inc
    assert escape_gap(1e-4, 3.0, 200.0) < 0.1 < escape_gap(1e-4, 3.0, 20.0)


def test_no_bottleneck_no_latent_benefit(witness_runs):
    cu, cm, u, m = witness_runs[(8, 0.0)]
    assert u.losses["L_im"] < 1e-20 and m.losses["L_im"] < 1e-20
    assert abs(m.losses["L_ret"] - u.losses["L_ret"]) < 1e-5 * u.losses["L_ret"]
    assert predict_pair(cm, cu)["switched"] == 0


def test_latent_check_rows(witness_runs):
    rows = latent_check()
    assert [r["id"] for r in rows] == ["theory.latent.bottleneck_tie", "theory.latent.closed_form",
                                       "theory.latent.appendix_c_width"]
    for r in rows:
        assert tuple(r) == CHECK_KEYS and r["side"] == "theory" and "beyond the paper" in r["source"]
        assert isinstance(r["evidence"], str) and r["evidence"]
    assert [r["status"] for r in rows] == ["PASS", "PASS", "FAIL"]
    # negative control: far from the tie the unmixed arm escapes, the rows must not PASS
    far = latent_check(gap=0.3)
    assert far[0]["status"] == "FAIL" and far[2]["status"] == "FAIL"
