"""The latent-benefit study's simulator (linear_theory.latent.model): every knob against an
independent reference.

- no knobs (depth 2, linear, h = n or h < n, reg): ``linear_theory.simulate.simulate``;
- early stopping: the rule applied by hand to simulate's L_post trajectory;
- D_ft variance / rotation, depth 3, weight decay: a NumPy GD with hand-written gradients and
  independently built task matrices, the decoupled scalar recurrence, the wd closed form;
- finite samples: the least-squares closed form, interpolation of the samples, N -> infinity;
- ReLU: Monte Carlo of the arc-cosine kernel and the paired-unit identity W relu(z) - W relu(-z) = W z.
"""

from __future__ import annotations

import dataclasses
import math
from functools import reduce

import jax
import numpy as np
import pytest

from early_exposure.errors import ConfigError
from linear_theory.config import SimConfig, default_config
from linear_theory.simulate import simulate
from linear_theory.latent import LatentConfig, LatentFt, LatentModel, LatentPost, LatentPre, LatentTask, run_many
from linear_theory.latent.config import LatentData, witness_config
from linear_theory.latent.model import build_tasks, expected_loss, init_weights, post_samples, relu_kernel

SMALL = LatentTask(n=4, k=1, sigma_inv=(3.0, 2.0), sigma_inc_pre=(1.0,), sigma_inc_post=(2.0,),
                   sigma_inc_ft=(0.5,), beta=2.5)


def _alpha_field(sc: SimConfig) -> str:
    """The mixing fraction's field name (``alpha``, renamed ``mix_fraction`` in a refactor)."""
    names = {f.name for f in dataclasses.fields(type(sc.stages.pre))}
    return "alpha" if "alpha" in names else "mix_fraction"


def _sim(sc: SimConfig, *, alpha: float | None = None, post_steps: int | None = None, reg: float | None = None,
         **model) -> SimConfig:
    """A SimConfig with nested fields replaced (no string overrides)."""
    st = sc.stages
    pre = st.pre if alpha is None else dataclasses.replace(st.pre, **{_alpha_field(sc): alpha})
    post = st.post
    if post_steps is not None:
        post = dataclasses.replace(post, steps=post_steps)
    if reg is not None:
        post = dataclasses.replace(post, reg=reg)
    return dataclasses.replace(sc, model=dataclasses.replace(sc.model, **model),
                               stages=dataclasses.replace(st, pre=pre, post=post))


def _latent_from_sim(sc: SimConfig, **post) -> LatentConfig:
    t, st = sc.task, sc.stages
    alpha = getattr(st.pre, _alpha_field(sc))
    return LatentConfig(
        task=LatentTask(n=t.n, k=t.k, sigma_inv=t.sigma_inv, sigma_inc_pre=t.sigma_inc_pre,
                        sigma_inc_post=t.sigma_inc_post, sigma_inc_ft=t.sigma_inc_ft, beta=t.beta),
        model=LatentModel(width=sc.model.width, init="paper" if sc.model.init == "paper" else "random", T=sc.model.T),
        pre=LatentPre(mix_fraction=alpha, steps=st.pre.steps, lr=st.pre.lr),
        post=LatentPost(**{"steps": st.post.steps, "lr": st.post.lr, "reg": st.post.reg, "stop": "budget", **post}),
        ft=LatentFt(steps=st.ft.steps, lr=st.ft.lr))


# --------------------------------------------------------------------------- numpy reference
def _prod(ws):
    return reduce(np.matmul, ws)


def _ref_gd(ws, C, M, steps, lr, wd=0.0, reg=0.0, th0=None):
    """GD with hand-written gradients: dL/dW_l = (W_1..W_{l-1})^T G (W_{l+1}..W_L)^T + 2 wd W_l,
    G = 2 (theta C - M) + 2 reg (theta - theta0)."""
    ws = [w.copy() for w in ws]
    n = ws[0].shape[0]
    for _ in range(steps):
        th = _prod(ws)
        G = 2.0 * (th @ C - M)
        if reg:
            G = G + 2.0 * reg * (th - th0)
        grads = []
        for i in range(len(ws)):
            left = _prod(ws[:i]) if i > 0 else np.eye(n)
            right = _prod(ws[i + 1:]) if i < len(ws) - 1 else np.eye(n)
            grads.append(left.T @ G @ right.T + 2.0 * wd * ws[i])
        ws = [w - lr * g for w, g in zip(ws, grads)]
    return ws


def _ref_tasks(t: LatentTask):
    """Identity-basis task matrices built from the definitions (not from build_tasks)."""
    n, k = t.n, t.k
    A_pre = np.diag(list(t.sigma_inv) + list(t.sigma_inc_pre) + [0.0] * k)
    A_post = np.diag(list(t.sigma_inv) + list(t.sigma_inc_post) + [t.beta] * k)
    A_ft = np.diag(list(t.sigma_inv) + list(t.sigma_inc_ft) + [0.0] * k)
    C_pre = np.diag([1.0] * (n - k) + [0.0] * k)
    C_ft = np.diag([1.0] * (n - k) + [t.ft_spec_var] * k)
    c, s = math.cos(t.ft_rotation), math.sin(t.ft_rotation)
    for i in range(k):  # R diag(1, v) R^T in the plane (inc_i, spec_i), by hand
        a, b = n - 2 * k + i, n - k + i
        C_ft[a, a] = c * c + s * s * t.ft_spec_var
        C_ft[b, b] = s * s + c * c * t.ft_spec_var
        C_ft[a, b] = C_ft[b, a] = c * s * (1.0 - t.ft_spec_var)
    return A_pre, A_post, A_ft, C_pre, np.eye(n), C_ft


def _ref_pipeline(cfg: LatentConfig, ws):
    A_pre, A_post, A_ft, C_pre, C_post, C_ft = _ref_tasks(cfg.task)
    a = cfg.pre.mix_fraction
    ws = _ref_gd(ws, (1 - a) * C_pre + a * C_post, (1 - a) * A_pre @ C_pre + a * A_post, cfg.pre.steps, cfg.pre.lr)
    th0 = _prod(ws)
    ws = _ref_gd(ws, C_post, A_post, cfg.post.steps, cfg.post.lr, cfg.post.wd, cfg.post.reg, th0)
    post = ws
    ws = _ref_gd(ws, C_ft, A_ft @ C_ft, cfg.ft.steps, cfg.ft.lr, cfg.ft.wd)
    loss = lambda th, A, C: float(np.trace((th - A) @ C @ (th - A).T))  # noqa: E731
    return {"L_im": loss(_prod(post), A_post, C_post), "L_ret": loss(_prod(ws), A_post, C_post),
            "L_ft": loss(_prod(ws), A_ft, C_ft), "theta_ft": _prod(ws)}


# --------------------------------------------------------------------------- no knobs = simulate
def test_no_knob_limit_reproduces_simulate():
    """Depth 2, linear, exact D_post, no D_ft relaxation: the Appendix C default (h = n, paper
    init) and a bottleneck h = 6 with random init and the theta_pre regulariser."""
    sc1 = default_config()
    sc2 = _sim(default_config(), width=6, init="random", T=3.0, reg=0.1)
    c1, c2 = _latent_from_sim(sc1), _latent_from_sim(sc2)
    w2 = init_weights(c2)
    r1, r2 = run_many([c1, c2])
    s1 = simulate(sc1)
    s2 = simulate(sc2, init_weights=(w2[0], w2[1]))
    for r, s in ((r1, s1), (r2, s2)):
        for key in ("L_pretrain", "L_im", "L_ret", "L_ft", "L_pre"):
            assert r.losses[key] == pytest.approx(s.losses[key], rel=1e-9, abs=1e-12), key
        for st in ("pre", "post", "ft"):
            np.testing.assert_allclose(r.spectra[st], s.spectra[st], rtol=1e-8, atol=1e-10)
    assert r1.losses["L_im"] < 1e-2 < r2.losses["L_im"]  # the two cases really differ


def test_early_stopping_matches_the_rule_on_simulates_trajectory():
    """The rule (improvement = L < best (1 - r)), every 10 steps, patience 2, best restored:
    applied here to simulate's recorded L_post, then simulate re-run to the chosen step."""
    budget, r = 1000, 1e-3
    stops, refs = [], []
    cfgs = []
    for alpha in (0.0, 0.5):
        sc = _sim(default_config(), alpha=alpha, post_steps=budget)
        traj = simulate(sc, trajectory_stride=10).trajectory
        L = traj.loc[traj["stage"] == "post", "L_post"].to_numpy()
        best, best_i, bad = L[0], 0, 0
        for i, v in enumerate(L[1:], start=1):
            if v < best * (1 - r):
                best, best_i, bad = v, i, 0
            else:
                bad += 1
                if bad >= 2:
                    break
        stops.append(10 * best_i)
        refs.append(simulate(_sim(sc, post_steps=10 * best_i)))
        cfgs.append(_latent_from_sim(sc, stop="early", eval_every=10, patience=2, rel_tol=r))
    res = run_many(cfgs)
    for r, stop, ref in zip(res, stops, refs):
        assert 0 < stop < budget
        assert r.post_steps == stop and r.post_stopped
        assert r.losses["L_im"] == pytest.approx(ref.losses["L_im"], rel=1e-8, abs=1e-12)
        assert r.losses["L_ret"] == pytest.approx(ref.losses["L_ret"], rel=1e-9)


# --------------------------------------------------------------------------- D_ft knobs
def test_ft_variance_and_rotation_match_numpy_reference():
    """D_ft = R diag(1, v) R^T in the (inc, spec) plane, against hand-built matrices and
    hand-written gradients (random init, depth 2, h = n); rotation/variance really change L_ret."""
    base = LatentConfig(task=SMALL, model=LatentModel(T=1.5, seed=3), pre=LatentPre(mix_fraction=0.5, steps=150, lr=0.02),
                        post=LatentPost(steps=60, stop="budget"), ft=LatentFt(steps=80, lr=0.02))
    cfgs = [base.with_(task={"ft_spec_var": v, "ft_rotation": phi}) for v, phi in ((0.0, 0.0), (0.3, 0.0), (0.3, 0.7))]
    res = run_many(cfgs)
    for c, r in zip(cfgs, res):
        ref = _ref_pipeline(c, init_weights(c))
        for key in ("L_im", "L_ret", "L_ft"):
            assert r.losses[key] == pytest.approx(ref[key], rel=1e-9), key
        np.testing.assert_allclose(build_tasks(c.task).C["ft"], _ref_tasks(c.task)[5], atol=1e-14)
    assert abs(res[1].losses["L_ret"] - res[0].losses["L_ret"]) > 1e-2
    assert abs(res[2].losses["L_ret"] - res[1].losses["L_ret"]) > 1e-2


def test_ft_variance_closed_form_on_a_decoupled_mode():
    """Paper init, identity basis (decoupled): the specialized mode after ft follows the scalar
    recurrence s = a b with a <- a - lr g b, b <- b - lr g a, g = 2 v (a b - 0); with v = 0 it
    does not move at all (Lemma C.16)."""
    cfgs = [LatentConfig(task=dataclasses.replace(SMALL, ft_spec_var=v),
                         model=LatentModel(init="paper", T=6.0), pre=LatentPre(mix_fraction=0.5, steps=800, lr=0.02),
                         post=LatentPost(steps=100, stop="budget"), ft=LatentFt(steps=100, lr=0.01))
            for v in (0.0, 0.4)]
    r0, r1 = run_many(cfgs)
    assert r0.spectra["ft"][3] == r0.spectra["post"][3]
    s = r1.spectra["post"][3]
    a = b = math.sqrt(s)  # balanced (paper init): a = b for every mode
    for _ in range(100):
        g = 2 * 0.4 * (a * b)
        a, b = a - 0.01 * g * b, b - 0.01 * g * a
    assert r1.spectra["ft"][3] == pytest.approx(a * b, rel=1e-9)
    assert r1.spectra["ft"][3] < 0.5 * s


# --------------------------------------------------------------------------- depth, weight decay
def test_depth3_and_weight_decay_match_references():
    """Depth 3 with post wd and ft wd: NumPy hand-gradient reference (random init), and the
    decoupled scalar recurrence of the three factors (paper init, identity basis)."""
    rnd = LatentConfig(task=SMALL, model=LatentModel(depth=3, T=1.0, seed=5),
                       pre=LatentPre(mix_fraction=0.3, steps=150, lr=0.02),
                       post=LatentPost(steps=60, stop="budget", wd=0.05), ft=LatentFt(steps=80, lr=0.02, wd=0.02))
    dec = LatentConfig(task=SMALL, model=LatentModel(depth=3, init="paper", T=1.0),
                       pre=LatentPre(mix_fraction=0.3, steps=150, lr=0.02),
                       post=LatentPost(steps=60, stop="budget", wd=0.05), ft=LatentFt(steps=80, lr=0.02, wd=0.02))
    r_rnd, r_dec = run_many([rnd, dec])
    ref = _ref_pipeline(rnd, init_weights(rnd))
    for key in ("L_im", "L_ret", "L_ft"):
        assert r_rnd.losses[key] == pytest.approx(ref[key], rel=1e-9), key
    # scalar recurrence per mode: factors (x, y, z), s = x y z, stage loss sum_t w_t c_t (s - sigma_t)^2
    A_pre, A_post, A_ft, C_pre, C_post, C_ft = _ref_tasks(SMALL)
    n = SMALL.n
    f = np.full((3, n), math.exp(-1.0))
    for terms, steps, lr, wd in (([(0.7, C_pre, A_pre), (0.3, C_post, A_post)], 150, 0.02, 0.0),
                                 ([(1.0, C_post, A_post)], 60, 0.01, 0.05), ([(1.0, C_ft, A_ft)], 80, 0.02, 0.02)):
        for _ in range(steps):
            s = f.prod(axis=0)
            g = sum(2 * w * np.diag(C) * (s - np.diag(A)) for w, C, A in terms)
            f = f - lr * (np.stack([g * f[1] * f[2], g * f[0] * f[2], g * f[0] * f[1]]) + 2 * wd * f)
    np.testing.assert_allclose(r_dec.spectra["ft"], f.prod(axis=0), rtol=1e-9, atol=1e-12)


def test_weight_decay_converges_to_soft_threshold():
    """Depth 2, balanced init, post wd lam to convergence: each mode at max(sigma - lam, 0)
    (minimiser of (s - sigma)^2 + 2 lam |s|); L_im = sum min(sigma, lam)^2."""
    lam = 0.3
    cfg = LatentConfig(task=SMALL, model=LatentModel(init="paper", T=2.0), pre=LatentPre(steps=0),
                       post=LatentPost(steps=6000, stop="budget", wd=lam), ft=LatentFt(steps=0))
    r = run_many([cfg])[0]
    sig = np.array([3.0, 2.0, 2.0, 2.5])
    np.testing.assert_allclose(r.spectra["post"], np.maximum(sig - lam, 0.0), atol=1e-8)
    assert r.losses["L_im"] == pytest.approx(float(np.sum(np.minimum(sig, lam) ** 2)), rel=1e-7)
    assert r.post_grad_norm < 1e-8


# --------------------------------------------------------------------------- finite samples
def test_finite_samples_least_squares_interpolation_and_limit():
    """Converged post-training on N samples: N > n -> the least-squares solution Y^T X (X^T X)^-1
    (unique, noise included); N < n -> the samples are interpolated; N -> infinity -> exact."""
    post = LatentPost(steps=8000, stop="budget")
    base = LatentConfig(task=SMALL, model=LatentModel(T=2.0, seed=1), pre=LatentPre(mix_fraction=0.0, steps=100, lr=0.02),
                        post=post, ft=LatentFt(steps=0))
    over = base.with_(data={"n_samples": 40, "noise": 0.7, "seed": 2})
    under = base.with_(data={"n_samples": 3, "noise": 0.7, "seed": 2})
    big = base.with_(data={"n_samples": 400000, "noise": 0.0, "seed": 2}, post={"steps": 400})
    exact = base.with_(post={"steps": 400})
    r_over, r_under, r_big, r_exact = run_many([over, under, big, exact])
    X, Y = post_samples(over)
    assert np.std(Y - X @ build_tasks(over.task).A["post"].T) == pytest.approx(0.7, rel=0.15)
    ls = Y.T @ X @ np.linalg.inv(X.T @ X)
    np.testing.assert_allclose(r_over.thetas["post"], ls, atol=1e-6)
    Xu, Yu = post_samples(under)
    assert np.mean((Xu @ r_under.thetas["post"].T - Yu) ** 2) < 1e-5 * np.mean(Yu ** 2)
    assert r_under.losses["L_im"] > 0.1  # interpolating 3 samples does not recover A_post
    for key in ("L_im", "L_ret"):
        assert r_big.losses[key] == pytest.approx(r_exact.losses[key], rel=0.02, abs=2e-3)


# --------------------------------------------------------------------------- ReLU
def test_relu_kernel_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n, h = 4, 3
    W2 = rng.standard_normal((h, n))
    B = rng.standard_normal((n, 3))
    C = B @ B.T  # rank 3 < n
    K = np.asarray(relu_kernel(jax.numpy.asarray(W2), jax.numpy.asarray(C)))
    x = rng.standard_normal((400000, 3)) @ B.T
    z = np.maximum(x @ W2.T, 0.0)
    prod = z[:, :, None] * z[:, None, :]
    mc, se = prod.mean(axis=0), prod.std(axis=0) / math.sqrt(x.shape[0])
    assert np.all(np.abs(K - mc) <= 5 * se + 1e-12)


def test_relu_paired_units_equal_linear_and_gradients_are_finite():
    """W1 relu(W2 x) - W1 relu(-W2 x) = W1 W2 x: the ReLU expected loss of the paired network is
    the linear loss; a unit with zero input variance (W2 row in null(C)) has finite gradients."""
    rng = np.random.default_rng(1)
    n, h = 4, 3
    W1, W2 = rng.standard_normal((n, h)), rng.standard_normal((h, n))
    A = rng.standard_normal((n, n))
    C = np.diag([1.0, 2.0, 0.5, 0.0])
    paired = [np.concatenate([W1, -W1], axis=1), np.concatenate([W2, -W2], axis=0)]
    lin = float(np.trace((W1 @ W2 - A) @ C @ (W1 @ W2 - A).T))
    assert expected_loss(paired, A, C, "relu") == pytest.approx(lin, rel=1e-10)
    assert expected_loss([W1, W2], A, C, "relu") != pytest.approx(lin, rel=1e-3)
    W2z = W2.copy()
    W2z[0] = [0.0, 0.0, 0.0, 1.0]  # only sees the zero-variance direction
    from linear_theory.latent.model import _eval_loss

    g = jax.jit(jax.grad(lambda ws: _eval_loss(ws, jax.numpy.asarray(A), jax.numpy.asarray(C), True)))(
        [jax.numpy.asarray(W1), jax.numpy.asarray(W2z)])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


# --------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("build, field", [
    (lambda: LatentModel(width=0), "model.width"),
    (lambda: LatentModel(depth=1), "model.depth"),
    (lambda: LatentModel(activation="relu", depth=3), "model.depth"),
    (lambda: LatentModel(activation="tanh"), "model.activation"),
    (lambda: LatentTask(ft_spec_var=-0.1), "task.ft_spec_var"),
    (lambda: LatentTask(sigma_inc_post=(1.0,)), "task.sigma_inc_post"),
    (lambda: LatentTask(k=5), "task.k"),
    (lambda: LatentPost(steps=105, stop="early", eval_every=10), "post.steps"),
    (lambda: LatentPost(stop="never"), "post.stop"),
    (lambda: LatentPre(mix_fraction=1.5), "pre.mix_fraction"),
    (lambda: LatentData(n_samples=0), "data.n_samples"),
    (lambda: LatentConfig(model=LatentModel(activation="relu"), data=LatentData(n_samples=10)), "data.n_samples"),
    (lambda: witness_config(post={"lr": float("nan")}), "post.lr"),
])
def test_config_errors_name_the_field(build, field):
    with pytest.raises(ConfigError) as exc:
        build()
    assert exc.value.field == field
    assert isinstance(exc.value, ValueError)


def test_relu_pipeline_with_paired_units_equals_linear_pipeline():
    """Paired ReLU units (W, -W) keep their pairing under GD on the exact Gaussian losses, and
    their dynamics is the linear network's at half the learning rate: a ReLU run (h = 6, lr 2 eta)
    reproduces the linear run (h = 3, lr eta) through pre, post (early stopping) and ft."""
    lin = LatentConfig(task=dataclasses.replace(SMALL, ft_spec_var=0.2), model=LatentModel(width=3, T=1.0, seed=4),
                       pre=LatentPre(mix_fraction=0.4, steps=120, lr=0.01), post=LatentPost(steps=200, lr=0.01),
                       ft=LatentFt(steps=60, lr=0.01))
    relu = lin.with_(model={"width": 6, "activation": "relu"}, pre={"lr": 0.02}, post={"lr": 0.02}, ft={"lr": 0.02})
    W1, W2 = init_weights(lin)
    r_lin, r_relu = run_many([lin, relu], init=[[W1, W2], [np.concatenate([W1, -W1], 1), np.concatenate([W2, -W2], 0)]])
    for key in ("L_pretrain", "L_im", "L_ret", "L_ft", "L_pre"):
        assert r_relu.losses[key] == pytest.approx(r_lin.losses[key], rel=1e-8), key
    assert r_relu.post_steps == r_lin.post_steps
    np.testing.assert_allclose(r_relu.spectra["ft"], r_lin.spectra["ft"], rtol=1e-8, atol=1e-10)
