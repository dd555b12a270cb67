"""Finite-sample mode, sampled dropout, compute-matched study and the theory frontier table.

References: :func:`linear_theory.simulate` (exact-expectation GD, its own code path) for the
N -> infinity limit and for frontier rows; the expected inverted-dropout loss written out in
closed form in this file for Monte Carlo dropout; hand-computed budgets.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from early_exposure.errors import ConfigError
from early_exposure.frontier import read_frontier
from linear_theory import default_config, simulate
from linear_theory.studies.finite import FiniteSpec, dropout_loss_sampled, prepare, run_finite
from linear_theory.tasks import build_task


def _cfg(alpha: float = 0.0, extra: list[str] | None = None):
    return default_config().replace(["stages.pre.steps=80", "stages.post.steps=30", "stages.ft.steps=30",
                                     "stages.pre.lr=0.02", f"stages.pre.mix_fraction={alpha}", *(extra or [])])


@pytest.mark.parametrize("lam,extra", [
    (0.0, []),
    (0.5, []),
    (0.0, ["stages.post.dropout=0.2", "stages.post.replay=0.1", "stages.post.reg=0.05"]),
])
def test_finite_sample_mode_converges_to_exact_path(lam, extra):
    """Full-batch SGD on N samples (30 epochs = the 30 exact post steps) -> simulate() as N grows.

    With lam = 0.5 and pre_pool = lam N_total, the mixing share is exactly alpha = 0.5. With
    sampled dropout (one mask per sample) the full-batch gradient tends to the closed form.
    """
    cfg = _cfg(alpha=lam, extra=extra)
    ref = simulate(cfg, method="full").losses
    errs = []
    for N in (50, 500, 5000):
        total = int(N / (1 - lam))
        specs = [FiniteSpec(total, lam, seed, pre_pool=total - N if lam else 1.0, batch=N, epochs=30)
                 for seed in (0, 1)]
        res = run_finite(cfg, specs)
        errs.append(np.mean([abs(r[k] - ref[k]) / ref[k] for r in res for k in ("L_im", "L_ret", "L_ft")]))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 5e-3 and errs[0] > 3 * errs[2], errs


def _expected_dropout_loss(W1, W2, A, C, kappa):
    """E_x E_mask ||W1 (mask * W2 x) - A x||^2 for x ~ (0, C) and masks with mean 1, variance kappa:
    tr((theta - A) C (theta - A)^T) + kappa sum_j ||W1[:, j]||^2 (W2 C W2^T)_jj, theta = W1 W2."""
    R = W1 @ W2 - A
    return jnp.trace(R @ C @ R.T) + kappa * jnp.sum(jnp.sum(W1 * W1, axis=0) * jnp.diag(W2 @ C @ W2.T))


def test_sampled_dropout_matches_closed_form_in_expectation():
    """Mean of the sampled inverted-dropout loss and gradient == the closed-form expected loss.

    Reference: the data term + p/(1-p) sum_j ||W1[:, j]||^2 W2[j] C W2[j]^T, C = I (D_post).
    """
    cfg = _cfg()
    tm = build_task(cfg.task)
    n, h, p, M = cfg.task.n, 5, 0.3, 200_000
    rng = np.random.default_rng(0)
    W1 = jnp.asarray(rng.standard_normal((n, h)) * 0.5)
    W2 = jnp.asarray(rng.standard_normal((h, n)) * 0.5)
    A, C = jnp.asarray(tm.A("post")), jnp.asarray(tm.C("post"))
    X = jnp.asarray(rng.standard_normal((M, n)))  # x ~ N(0, I): D_post
    masks = jnp.asarray((rng.random((M, h)) >= p) / (1 - p))
    err = ((X @ W2.T) * masks) @ W1.T - X @ A.T  # per-sample sampled-dropout residuals (M, n)
    per = jnp.sum(err * err, axis=1)
    kappa = p / (1 - p)
    closed = _expected_dropout_loss(W1, W2, A, C, kappa)
    se = float(jnp.std(per)) / math.sqrt(M)
    assert abs(float(jnp.mean(per)) - float(closed)) < 4 * se, (float(jnp.mean(per)), float(closed), se)
    # conditioned on the drawn x (empirical covariance), only the masks are random: the mean is
    # then pinned to a few mask-noise standard errors (a 5% error in the penalty is ~5 of them)
    C_hat = X.T @ X / M
    per0 = jnp.sum(((X @ W2.T) @ W1.T - X @ A.T) ** 2, axis=1)  # same x, no dropout
    se_mask = float(jnp.std(per - per0)) / math.sqrt(M)
    closed_hat = _expected_dropout_loss(W1, W2, A, C_hat, kappa)
    assert abs(float(jnp.mean(per)) - float(closed_hat)) < 4 * se_mask, (float(jnp.mean(per)), float(closed_hat))
    g_mc = jax.grad(lambda a, b: dropout_loss_sampled(a, b, X, jnp.full(M, 1.0 / M), masks, A), argnums=(0, 1))(W1, W2)
    g_cf = jax.grad(lambda a, b: _expected_dropout_loss(a, b, A, C_hat, kappa), argnums=(0, 1))(W1, W2)
    for gm, gc in zip(g_mc, g_cf):
        assert float(jnp.linalg.norm(gm - gc) / jnp.linalg.norm(gc)) < 0.01  # mask noise ~0.4% at M=2e5
    # without dropout the penalty vanishes: the sampled mean estimates the exact data term only
    assert float(closed) > float(_expected_dropout_loss(W1, W2, A, C, 0.0)) + 10 * se


def test_finite_budget_is_one_pass_and_seeded():
    """lambda N samples go to pretraining, the rest once to post-training; seeds reproduce."""
    cfg = _cfg(extra=["stages.post.dropout=0.2"])
    specs = [FiniteSpec(50, lam, 3, pre_pool=50.0, batch=8, epochs=1) for lam in (0.0, 0.3, 1.0)]
    fb = prepare(cfg, specs)
    assert list(fb.n_mix) == [0, 15, 50]
    assert list(fb.post_steps) == [math.ceil(50 / 8), math.ceil(35 / 8), 0]
    # every post sample is used once: weights of real samples sum to one per real step
    w = fb.post_w.sum(axis=2)
    np.testing.assert_allclose(w[fb.post_valid > 0], 1.0)
    assert np.all(w[fb.post_valid == 0] == 0)
    # mixing share a_t = |B_t| / (|B_t| + pre_pool / steps): 15 samples over 80 steps, pool 50/80 per step
    a = fb.pre_a[1][fb.pre_a[1] > 0]
    assert len(a) == 15 and np.allclose(a, 1.0 / (1.0 + 50.0 / 80.0))
    # inverted dropout masks: values 0 or 1/(1-p), mean near 1 on real samples
    real = fb.masks[0][fb.post_w[0] > 0]
    assert set(np.unique(real)) <= {0.0, 1.0 / 0.8} and abs(real.mean() - 1.0) < 0.1
    again = prepare(cfg, specs)
    np.testing.assert_array_equal(again.post_X, fb.post_X)
    other = prepare(cfg, [FiniteSpec(50, 0.3, 4, 50.0, 8, 1)])
    assert not np.array_equal(other.post_X[0], fb.post_X[1])


def test_compute_matched_cli_writes_frontier_and_tidy_rows(tmp_path):
    from linear_theory.cli import main

    cfgfile = tmp_path / "cm.yaml"
    cfgfile.write_text(json.dumps({
        "set": ["stages.pre.steps=40", "stages.post.lr=0.02", "stages.ft.steps=20"],
        "n_samples": 24, "mix_fraction": [0.0, 0.5, 1.0], "seeds": [0, 1], "pre_pool": 24, "batch": 4,
        "sec41": {"mix_fraction": [0.0, 1.0], "n_samples": [12], "epochs": 2}}))
    out = tmp_path / "cm"
    assert main(["compute-matched", "--config", str(cfgfile), "--out", str(out)]) == 0
    fr = read_frontier(out / "frontier.csv")
    assert len(fr) == 3 * 2 + 2 * 2 and set(fr["side"]) == {"theory"}
    cm = fr[fr["compute_matched"]]
    assert len(cm) == 6 and set(cm["mix_fraction"]) == {0.0, 0.5, 1.0}
    assert set(fr.loc[fr["mix_fraction"] == 0, "method"]) == {"unmixed"}
    tidy = pd.read_csv(out / "compute_matched.csv")
    assert set(tidy["study"].astype(str)) == {"4.2", "4.1"}
    # lambda = 1 in the compute-matched study leaves nothing for post-training
    assert list(tidy.loc[(tidy["study"].astype(str) == "4.2") & (tidy["mix_fraction"] == 1.0), "post_steps"]) == [0, 0]
    assert (out / "compute_matched.png").read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad"
    assert main(["compute-matched", "--set", "mix_fraction=[0.5,1.5]", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_theory_frontier_rows_match_simulate(tmp_path):
    """Frontier rows in the shared schema; sampled rows equal a direct simulate() call."""
    from linear_theory.cli import main
    from linear_theory.studies.frontier import FrontierConfig, base_config

    cfgfile = tmp_path / "fr.json"
    spec = {"set": ["stages.pre.steps=80", "stages.pre.lr=0.02"], "mix_fraction": [0.5],
            "post": {"steps": [10, 20], "lr": [0.01], "reg": [0.0, 0.1]}, "ft": {"lr": [0.01, 0.03], "steps": [15]}}
    cfgfile.write_text(json.dumps(spec))
    out = tmp_path / "fr"
    assert main(["frontier", "--config", str(cfgfile), "--out", str(out)]) == 0
    fr = read_frontier(out / "frontier.csv")
    assert len(fr) == 6 * 4 * 2
    assert set(fr["method"]) == {"unmixed", "mixed", "mixed+replay", "mixed+dropout", "unmixed+replay",
                                 "unmixed+dropout"}
    # one upstream checkpoint per (method, post setting), shared by its ft settings
    assert fr.groupby("upstream_id")["ft_lr"].nunique().eq(2).all() and fr["upstream_id"].nunique() == 24
    assert fr["run_id"].nunique() == len(fr)
    base = base_config(FrontierConfig(**{k: v for k, v in spec.items() if k in ("set", "mix_fraction")}))
    for method in ("mixed+dropout", "unmixed+replay"):
        row = fr[(fr["method"] == method) & (fr["ft_lr"] == 0.03)].iloc[-1]
        hp = json.loads(row["post_hparams"])
        cfg = base.replace([f"stages.pre.mix_fraction={row['mix_fraction']}", f"stages.post.steps={hp['steps']}",
                            f"stages.post.reg={hp['reg']}", f"stages.post.replay={hp['replay']}",
                            f"stages.post.dropout={hp['dropout']}", "stages.ft.lr=0.03", "stages.ft.steps=15"])
        ref = simulate(cfg, method="full").losses
        for k in ("L_im", "L_ret", "L_ft", "L_pre"):
            np.testing.assert_allclose(row[k], ref[k], rtol=1e-9)
    with pytest.raises(ConfigError, match="methods"):
        FrontierConfig(methods=("mixed+lora",))


def test_theta_pre_post_loss_is_recorded_for_the_c_precondition():
    """``run_finite`` records theta_pre's exact D_post loss (``L_post_stage1``, read by the (c)
    precondition of paper_checks): at lambda = 0 pretraining is the exact path, so it equals the
    D_post loss of ``simulate``'s own theta_pre (a second code path)."""
    from linear_theory.simulate import task_losses

    cfg = _cfg(alpha=0.0)
    ref = simulate(cfg, method="full")
    W1, W2 = ref.weights["pre"]
    expected = task_losses(np.asarray(W1) @ np.asarray(W2), build_task(cfg.task))["post"]
    res = run_finite(cfg, [FiniteSpec(200, 0.0, 0, pre_pool=1.0, batch=200, epochs=1)])
    assert res[0]["L_post_stage1"] == pytest.approx(expected, rel=1e-9)
