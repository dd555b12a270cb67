"""Simulator mechanics: exact losses, literal gradient steps, dropout expectation, the two code
paths, precision, trajectories and divergence (linear_theory.simulate)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from linear_theory import default_config, load_config, simulate
from linear_theory.config import DEFAULT_CONFIG_PATH
from linear_theory.simulate import expected_loss, stage_objective, stage_specs
from linear_theory.tasks import build_task


def _small(**over):
    """Default task with short stages; overrides as dotted keys."""
    base = default_config().replace(["stages.pre.steps=120", "stages.post.steps=40", "stages.ft.steps=40",
                                     "model.T=3.0"])
    return base.replace([f"{k}={v}" for k, v in over.items()])


def test_default_yaml_is_default_config():
    assert load_config(DEFAULT_CONFIG_PATH) == default_config()
    assert load_config(None, ["stages.pre.mix_fraction=0.25"]).stages.pre.mix_fraction == 0.25


def test_expected_loss_matches_monte_carlo():
    """tr((theta-A) C (theta-A)^T) vs the sample mean of ||theta x - A x||^2, x ~ N(0, C)."""
    rng = np.random.default_rng(0)
    n = 5
    theta, A = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    L = rng.standard_normal((n, n))
    C = L @ L.T / n
    x = rng.multivariate_normal(np.zeros(n), C, size=200_000)  # (N, n)
    per = np.sum(((theta - A) @ x.T) ** 2, axis=0)
    mc, se = per.mean(), per.std() / math.sqrt(per.size)
    assert abs(expected_loss(theta, A, C) - mc) < 4 * se


@pytest.mark.parametrize("p", [0.1, 0.4])
def test_dropout_closed_form_matches_sampled_masks(p):
    """E_{x,m}||W1 M W2 x - A x||^2 (inverted Bernoulli masks per example) vs Monte Carlo."""
    cfg = _small(**{"task.basis": "random", "stages.post.dropout": p, "stages.post.replay": 0.3})
    tm = build_task(cfg.task)
    spec = stage_specs(cfg, tm)["post"]
    rng = np.random.default_rng(1)
    n, h = cfg.task.n, 6
    W1, W2 = rng.standard_normal((n, h)) / 2, rng.standard_normal((h, n)) / 2
    closed = stage_objective(W1, W2, spec, tm)
    N = 400_000
    # mixture (1-r) D_post + r D_pre: sample the component, then x ~ N(0, C_component)
    comp = rng.random(N) < spec.weights[1]
    z = rng.standard_normal((N, n))
    x = np.where(comp[:, None], (z * tm.pre.cov[None, :]) @ tm.V.T, z @ tm.V.T)  # cov in {0,1}: sqrt = cov
    Ax = np.where(comp[:, None], x @ tm.A("pre").T, x @ tm.A("post").T)  # (N, n) targets
    m = (rng.random((N, h)) > p) / (1 - p)  # (N, h) inverted dropout masks
    hid = (x @ W2.T) * m  # (N, h)
    err = hid @ W1.T - Ax
    per = np.sum(err ** 2, axis=1)
    mc, se = per.mean(), per.std() / math.sqrt(N)
    assert abs(closed - mc) < 4 * se, (closed, mc, se)
    assert closed > stage_objective(W1, W2, dataclasses.replace(spec, dropout=0.0), tm)


def test_full_path_step_is_literal_gradient_step():
    """One post step (reg + replay + dropout) vs the hand-derived gradient of the objective."""
    cfg = _small(**{"task.basis": "random", "model.init": "random", "model.T": 0.0, "stages.pre.steps": 0,
                    "stages.post.steps": 1, "stages.post.lr": 0.05, "stages.post.reg": 0.7,
                    "stages.post.replay": 0.25, "stages.post.dropout": 0.2, "stages.ft.steps": 0})
    res = simulate(cfg, method="full")
    tm = build_task(cfg.task)
    W1, W2 = res.weights["init"]
    spec = stage_specs(cfg, tm)["post"]
    A, C = spec.matrices(tm)
    w = spec.weights
    theta = W1 @ W2
    G = sum(2 * w[i] * (theta - A[i]) @ C[i] for i in range(len(w))) + 2 * spec.reg * (theta - theta)  # theta0 = theta
    Cd = sum(w[i] * C[i] for i in range(len(w)))
    q = np.einsum("ji,ik,jk->j", W2, Cd, W2)
    r = np.sum(W1 ** 2, axis=0)
    g1 = G @ W2.T + 2 * spec.kappa * W1 * q[None, :]
    g2 = W1.T @ G + 2 * spec.kappa * r[:, None] * (W2 @ Cd)
    lr = cfg.stages.post.lr
    np.testing.assert_allclose(res.weights["post"][0], W1 - lr * g1, rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.weights["post"][1], W2 - lr * g2, rtol=0, atol=1e-13)


@pytest.mark.parametrize("over", [
    {},
    {"task.basis": "random", "model.init": "aligned", "stages.post.reg": 0.5, "stages.post.replay": 0.3,
     "stages.post.dropout": 0.15},
    {"model.init": "ideal", "stages.post.reg": 0.2},
])
def test_full_and_spectral_paths_agree(over):
    cfg = _small(**over)
    a = simulate(cfg, method="spectral", trajectory_stride=20)
    b = simulate(cfg, method="full", trajectory_stride=20)
    assert a.method == "spectral" and b.method == "full"
    for key in ("init", "pre", "post", "ft"):
        np.testing.assert_allclose(a.spectra[key], b.spectra[key], rtol=0, atol=1e-10)
        assert b.offdiag[key] < 1e-10
    for key in a.losses:
        assert abs(a.losses[key] - b.losses[key]) <= 1e-10 * max(1.0, abs(b.losses[key]))
    cols = [c for c in a.trajectory.columns if c.startswith(("s_", "L_", "W1_op", "W2_op"))]
    assert {"W1_op", "W2_op"} <= set(cols)
    np.testing.assert_allclose(a.trajectory[cols].to_numpy(), b.trajectory[cols].to_numpy(), rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64():
    cfg = _small()
    r64 = simulate(cfg)
    r32 = simulate(dataclasses.replace(cfg, precision="float32"))
    for key in ("pre", "post", "ft"):
        np.testing.assert_allclose(r32.spectra[key], r64.spectra[key], rtol=0, atol=1e-4)
    assert r32.spectra["ft"].dtype == np.float64  # reported in float64


def test_trajectory_layout_and_stride():
    cfg = _small()
    res = simulate(cfg, trajectory_stride=7)
    tr = res.trajectory
    n = cfg.task.n
    assert list(tr.columns[:3]) == ["stage", "step", "global_step"]
    assert [f"s_{i}" for i in range(n)] == [c for c in tr.columns if c.startswith("s_")]
    pre = tr[tr.stage == "pre"]
    assert pre.step.tolist() == list(range(0, cfg.stages.pre.steps + 1, 7))
    # the last recorded point of the run is consistent with the final spectrum within one stride of steps
    post = tr[tr.stage == "post"]
    assert post.global_step.iloc[0] == cfg.stages.pre.steps
    np.testing.assert_allclose(tr.iloc[0][[f"s_{i}" for i in range(n)]].to_numpy(dtype=float), res.spectra["init"])


@pytest.mark.parametrize("method", ["spectral", "full"])
@pytest.mark.parametrize("stage", ["pre", "post"])
def test_divergence_is_reported_not_raised(method, stage):
    cfg = _small(**{f"stages.{stage}.lr": 5.0})
    res = simulate(cfg, method=method)
    assert res.diverged and res.diverged_stage == stage
    assert math.isnan(res.losses["L_ret"]) and math.isnan(res.losses["L_im"])
    assert np.all(np.isnan(res.spectra["ft"]))
    assert np.all(np.isfinite(res.spectra["init"]))
    if stage == "post":
        assert math.isfinite(res.losses["L_pretrain"]) and np.all(np.isfinite(res.spectra["pre"]))
    assert res.steps_done[stage] < getattr(cfg.stages, stage).steps
    assert "ft" not in res.steps_done


def test_ideal_init_skips_pretraining_and_uses_given_sigma():
    from linear_theory.tasks import ideal_sigma, ideal_weights

    cfg = _small(**{"model.init": "ideal"})
    res = simulate(cfg)
    assert res.pre_skipped and res.steps_done["pre"] == 0
    tm = build_task(cfg.task)
    sig = ideal_sigma(tm, cfg.stages.pre.mix_fraction, rank=cfg.task.n - cfg.task.k)
    np.testing.assert_allclose(res.spectra["pre"], sig, atol=1e-14)
    # the builder works for any given Sigma, e.g. the paper's printed Sigma_mixed
    from linear_theory.tasks import printed_sigma_mixed

    W1, W2 = ideal_weights(tm.U, tm.V, printed_sigma_mixed(cfg.task, 0.5))
    np.testing.assert_allclose(np.diag(tm.U.T @ W1 @ W2 @ tm.V), printed_sigma_mixed(cfg.task, 0.5), atol=1e-14)
    np.testing.assert_allclose(W1.T @ W1, W2 @ W2.T, atol=1e-14)  # balanced


def test_spectral_method_refused_when_not_decoupled():
    from early_exposure.errors import ConfigError

    with pytest.raises(ConfigError, match="method"):
        simulate(_small(**{"model.init": "random"}), method="spectral")
    assert simulate(_small(**{"model.init": "random"})).method == "full"


def test_bottleneck_width_learns_only_top_modes():
    """h < n with the paper init: modes beyond the hidden width stay exactly zero (rank <= h)."""
    cfg = _small(**{"model.width": 3, "stages.pre.mix_fraction": 1.0, "stages.pre.steps": 800})
    res = simulate(cfg)
    th = res.thetas()["pre"]
    assert np.linalg.matrix_rank(th, tol=1e-9) <= 3
    np.testing.assert_allclose(res.spectra["pre"][:3], default_config().task.sigma_inv[:3], atol=1e-6)


def test_task_streams_are_the_spawn_children_of_the_seed():
    """U, V and the random init come from early_exposure.seeding with integer tags 0, 1, 2: bit for bit
    the children of SeedSequence(seed).spawn(4), the streams of every earlier version."""
    from linear_theory.simulate import initial_weights
    from linear_theory.tasks import STREAMS, random_orthogonal, task_stream

    assert STREAMS == {"U": 0, "V": 1, "init": 2, "sampling": 3}
    for seed in (0, 7, 2**40 + 3):
        kids = np.random.SeedSequence(seed).spawn(4)
        for name, i in STREAMS.items():
            assert np.array_equal(task_stream(seed, name).random(64), np.random.default_rng(kids[i]).random(64))
        cfg = _small(**{"task.basis": "random", "task.seed": seed, "model.init": "random"})
        tm = build_task(cfg.task)
        np.testing.assert_array_equal(tm.U, random_orthogonal(cfg.task.n, np.random.default_rng(kids[0])))
        np.testing.assert_array_equal(tm.V, random_orthogonal(cfg.task.n, np.random.default_rng(kids[1])))
        W1, _ = initial_weights(cfg, tm)
        g = np.random.default_rng(kids[2]).standard_normal((cfg.task.n, cfg.width))
        np.testing.assert_array_equal(W1, math.exp(-cfg.model.T) * g / math.sqrt(cfg.task.n))
