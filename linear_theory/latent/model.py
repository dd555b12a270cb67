"""Generalised three-stage GD simulator for the latent-benefit study (JAX, float64).

One run: pre -> post -> ft on the tasks of :class:`linear_theory.latent.config.LatentTask`,
full matrices, plain gradient descent ``W <- W - lr grad_W objective`` (gradients by
``jax.grad``). Every stage objective is a weighted sum of *terms*; a term is the quadratic
(C, M, q) with

    linear:  Q(theta) = tr(theta C theta^T) - 2 tr(theta M^T) + q           theta = W_1 ... W_L
    relu:    Q(W_1, W_2) = tr(W_1 K W_1^T) - tr(W_1 W_2 M^T) + q,
             K = E[relu(W_2 x) relu(W_2 x)^T] for x ~ N(0, C) (arc-cosine kernel, exact)

For exact tasks M = A C and q = tr(A C A^T), so Q = tr((theta - A) C (theta - A)^T) (no 1/2,
as in :mod:`linear_theory.simulate`); for finite samples C = X^T X / N, M = Y^T X / N,
q = mean ||y||^2, so Q is the empirical mean squared error. (ReLU: E[relu(W_2 x) x^T] =
W_2 C / 2 by Stein's lemma, which gives the cross term.)

- pre:  (1 - alpha) [D_pre] + alpha [D_post or its samples], ``pre.steps`` steps;
- post: [D_post or its samples] + wd sum_l ||W_l||^2 + reg ||theta - theta_pre||^2, a fixed
        budget or the early-stopping rule of :class:`LatentPost` on the exact L_post;
- ft:   [D_ft] + ft.wd sum_l ||W_l||^2, ``ft.steps`` steps.

Configurations that share shapes and step counts are vmapped together (:func:`run_many`).
Reported losses are exact expectations; spectra are diag(U^T theta V) of the (effective,
for ReLU W_1 W_2 / 2 = E[f(x) x^T]) linear map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial, reduce

import jax
import jax.numpy as jnp
import numpy as np

from linear_theory.latent.config import LatentConfig, LatentTask
from linear_theory.simulate import enable_precision

__all__ = ["LatentTasks", "LatentResult", "build_tasks", "init_weights", "run_many", "run", "post_samples",
           "expected_loss", "relu_kernel", "STAGES"]

STAGES = ("pre", "post", "ft")
_EPS = 1e-30


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class LatentTasks:
    """Full matrices of the three tasks (exact D_pre, D_post, D_ft) and the shared basis."""

    U: np.ndarray
    V: np.ndarray
    A: dict[str, np.ndarray]  # stage -> (n, n) target
    C: dict[str, np.ndarray]  # stage -> (n, n) input covariance
    sigma: dict[str, np.ndarray]  # stage -> (n,) singular values in the (U, V) basis

    def blocks(self, k: int) -> dict[str, slice]:
        n = self.U.shape[0]
        return {"invariant": slice(0, n - 2 * k), "inconsistent": slice(n - 2 * k, n - k),
                "specialized": slice(n - k, n)}


def _haar(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def build_tasks(task: LatentTask) -> LatentTasks:
    """Sigma_t, D_t of Appendix C.1 with the D_ft relaxations (see :class:`LatentTask`)."""
    n, k = task.n, task.k
    inv = np.asarray(task.sigma_inv, dtype=np.float64)
    zk = np.zeros(k)
    sig = {"pre": np.concatenate([inv, task.sigma_inc_pre, zk]),
           "post": np.concatenate([inv, task.sigma_inc_post, np.full(k, task.beta)]),
           "ft": np.concatenate([inv, task.sigma_inc_ft, zk])}
    if task.basis == "identity":
        U, V = np.eye(n), np.eye(n)
    else:
        rng = np.random.default_rng(np.random.SeedSequence([task.seed, 7301]))
        U, V = _haar(n, rng), _haar(n, rng)
    d_shared = np.concatenate([np.ones(n - k), zk])
    d_ft = np.concatenate([np.ones(n - k), np.full(k, task.ft_spec_var)])
    R = np.eye(n)
    c, s = math.cos(task.ft_rotation), math.sin(task.ft_rotation)
    for i in range(k):
        a, b = n - 2 * k + i, n - k + i
        R[a, a], R[a, b], R[b, a], R[b, b] = c, -s, s, c
    Cft = V @ R @ np.diag(d_ft) @ R.T @ V.T
    C = {"pre": (V * d_shared[None, :]) @ V.T, "post": np.eye(n), "ft": 0.5 * (Cft + Cft.T)}
    A = {t: (U * sig[t][None, :]) @ V.T for t in STAGES}
    return LatentTasks(U=U, V=V, A=A, C=C, sigma=sig)


def init_weights(cfg: LatentConfig) -> list[np.ndarray]:
    """W_1 (n, h), middle (h, h), W_L (h, n) for ``cfg.model.init``."""
    n, h, L = cfg.task.n, cfg.width, cfg.model.depth
    scale = math.exp(-cfg.model.T)
    shapes = [(n, h)] + [(h, h)] * (L - 2) + [(h, n)]
    if cfg.model.init == "paper":
        return [scale * np.eye(*s) for s in shapes]
    rng = np.random.default_rng(np.random.SeedSequence([cfg.model.seed, 4242]))
    return [scale * rng.standard_normal(s) / math.sqrt(s[1]) for s in shapes]


def post_samples(cfg: LatentConfig, tk: LatentTasks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The finite D_post of ``cfg.data`` (seeded): X (N, n) ~ N(0, I), Y = X A_post^T + noise."""
    d = cfg.data
    if d.n_samples is None:
        raise ValueError("post_samples: cfg.data.n_samples is None (exact D_post)")
    tk = build_tasks(cfg.task) if tk is None else tk
    rng = np.random.default_rng(np.random.SeedSequence([d.seed, 9001]))
    X = rng.standard_normal((d.n_samples, cfg.task.n))
    Y = X @ tk.A["post"].T + d.noise * rng.standard_normal((d.n_samples, cfg.task.n))
    return X, Y


def _post_data(cfg: LatentConfig, tk: LatentTasks) -> tuple[np.ndarray, np.ndarray, float]:
    """(C, M, q) of the post-training data term: exact D_post, or N seeded samples."""
    A = tk.A["post"]
    if cfg.data.n_samples is None:
        C = tk.C["post"]
        return C, A @ C, float(np.trace(A @ C @ A.T))
    X, Y = post_samples(cfg, tk)
    N = X.shape[0]
    return X.T @ X / N, Y.T @ X / N, float(np.sum(Y * Y) / N)


def _terms(cfg: LatentConfig, tk: LatentTasks) -> dict[str, tuple[np.ndarray, ...]]:
    """stage -> (w (m,), C (m, n, n), M (m, n, n), q (m,))."""
    def exact(t: str) -> tuple[np.ndarray, np.ndarray, float]:
        A, C = tk.A[t], tk.C[t]
        return C, A @ C, float(np.trace(A @ C @ A.T))

    a = cfg.pre.mix_fraction
    post_data = _post_data(cfg, tk)
    pre = [exact("pre"), post_data]  # mixing uses the same (finite or exact) D_post
    post = [post_data]
    ft = [exact("ft")]
    out = {}
    for name, ts, w in (("pre", pre, [1 - a, a]), ("post", post, [1.0]), ("ft", ft, [1.0])):
        out[name] = (np.asarray(w, dtype=np.float64), np.stack([t[0] for t in ts]),
                     np.stack([t[1] for t in ts]), np.asarray([t[2] for t in ts]))
    return out


# --------------------------------------------------------------------------- losses (JAX)
@jax.custom_jvp
def _arc_j(rho: jax.Array) -> jax.Array:
    """J(rho) = sqrt(1 - rho^2) + (pi - arccos rho) rho; 2 pi E[relu(a) relu(b)] for unit
    Gaussians with correlation rho. dJ/drho = pi - arccos rho is bounded, so define it."""
    return jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0)) + (jnp.pi - jnp.arccos(rho)) * rho


@_arc_j.defjvp
def _arc_j_jvp(primals, tangents):
    (rho,), (t,) = primals, tangents
    return _arc_j(rho), (jnp.pi - jnp.arccos(rho)) * t


def relu_kernel(W2: jax.Array, C: jax.Array) -> jax.Array:
    """K = E[relu(W2 x) relu(W2 x)^T], x ~ N(0, C) (Cho and Saul 2009, degree 1), (h, h)."""
    G = W2 @ C @ W2.T
    q = jnp.diagonal(G)
    nq = jnp.sqrt(q + _EPS)
    outer = nq[:, None] * nq[None, :]
    rho = jnp.clip(G / outer, -1.0, 1.0)
    K = outer * _arc_j(rho) / (2.0 * jnp.pi)
    eye = jnp.eye(G.shape[0], dtype=bool)
    return jnp.where(eye, 0.5 * G, K)


def _prod(ws) -> jax.Array:
    return reduce(jnp.matmul, ws)


def _term_value(ws, C, M, q, relu: bool) -> jax.Array:
    if relu:
        W1, W2 = ws
        return jnp.sum((W1 @ relu_kernel(W2, C)) * W1) - jnp.sum((W1 @ W2) * M) + q
    th = _prod(ws)
    return jnp.sum((th @ C) * th) - 2.0 * jnp.sum(th * M) + q


def _eval_loss(ws, A, C, relu: bool) -> jax.Array:
    """Exact expected loss on one task (for linear in the cancellation-free form)."""
    if relu:
        W1, W2 = ws
        return (jnp.sum((W1 @ relu_kernel(W2, C)) * W1) - jnp.sum((W1 @ W2) * (A @ C))
                + jnp.sum((A @ C) * A))
    d = _prod(ws) - A
    return jnp.sum((d @ C) * d)


def expected_loss(ws: list, A: np.ndarray, C: np.ndarray, activation: str = "linear") -> float:
    """Exact E_x ||f(x) - A x||^2, x ~ N(0, C), of the network ``ws`` (float64)."""
    enable_precision("float64")
    ws = [jnp.asarray(w, dtype=jnp.float64) for w in ws]
    return float(_eval_loss_jit(ws, jnp.asarray(A, dtype=jnp.float64), jnp.asarray(C, dtype=jnp.float64),
                                activation == "relu"))


_eval_loss_jit = jax.jit(_eval_loss, static_argnums=3)


def _objective(ws, w, C, M, q, wd, reg, th0, relu: bool) -> jax.Array:
    val = sum(w[i] * _term_value(ws, C[i], M[i], q[i], relu) for i in range(w.shape[0]))
    val = val + wd * sum(jnp.sum(x * x) for x in ws)
    if not relu:
        d = _prod(ws) - th0
        val = val + reg * jnp.sum(d * d)
    return val


# --------------------------------------------------------------------------- stage loops
def _gd_steps(ws, steps: int, lr, obj):
    grad = jax.grad(obj)

    def step(_, carry):
        ws, bad = carry
        g = grad(ws)
        new = [x - lr * gx for x, gx in zip(ws, g)]
        ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) & (jnp.max(jnp.abs(x)) < 1e6) for x in new]))
        keep = bad | ~ok
        return [jnp.where(keep, x, y) for x, y in zip(ws, new)], keep

    return jax.lax.fori_loop(0, steps, step, (ws, jnp.asarray(False)))


def _run_single(arr: dict, *, depth: int, relu: bool, pre_steps: int, post_steps: int, early: bool,
                eval_every: int, patience: int, ft_steps: int) -> dict:
    ws = [arr[f"W{i}"] for i in range(depth)]
    A3, C3 = arr["A3"], arr["C3"]
    zero = jnp.zeros_like(A3[0])

    def stage_obj(name, wd, reg, th0):
        return partial(lambda ws, w, C, M, q: _objective(ws, w, C, M, q, wd, reg, th0, relu),
                       w=arr[f"{name}_w"], C=arr[f"{name}_C"], M=arr[f"{name}_M"], q=arr[f"{name}_q"])

    init = ws
    ws, bad_pre = _gd_steps(ws, pre_steps, arr["lr_pre"], stage_obj("pre", 0.0, 0.0, zero))
    pre = ws
    th0 = zero if relu else _prod(ws)
    post_obj = stage_obj("post", arr["wd_post"], arr["reg_post"], th0)
    lpost = lambda ws: _eval_loss(ws, A3[1], C3[1], relu)  # noqa: E731
    if not early:
        ws, bad_post = _gd_steps(ws, post_steps, arr["lr_post"], post_obj)
        best_it, stopped = jnp.asarray(post_steps, dtype=jnp.int32), jnp.asarray(False)
    else:
        n_evals = post_steps // eval_every

        def cond(c):
            return (c["it"] < n_evals) & ~c["stop"]

        def body(c):
            ws, bad = _gd_steps(c["ws"], eval_every, arr["lr_post"], post_obj)
            L = lpost(ws)
            imp = L < c["best_L"] * (1.0 - arr["rel_tol"])
            it = c["it"] + 1
            nbad = jnp.where(imp, 0, c["bad"] + 1)
            return {"ws": ws, "best": [jnp.where(imp, x, y) for x, y in zip(ws, c["best"])],
                    "best_L": jnp.where(imp, L, c["best_L"]), "bad": nbad,
                    "best_it": jnp.where(imp, it, c["best_it"]), "it": it,
                    "stop": nbad >= patience, "div": c["div"] | bad}

        c0 = {"ws": ws, "best": ws, "best_L": lpost(ws), "bad": jnp.asarray(0, jnp.int32),
              "best_it": jnp.asarray(0, jnp.int32), "it": jnp.asarray(0, jnp.int32),
              "stop": jnp.asarray(False), "div": jnp.asarray(False)}
        c = jax.lax.while_loop(cond, body, c0)
        ws, bad_post = c["best"], c["div"]
        best_it, stopped = c["best_it"] * eval_every, c["stop"]
    post = ws
    g = jax.grad(post_obj)(post)
    gnorm = jnp.sqrt(sum(jnp.sum(x * x) for x in g))
    ws, bad_ft = _gd_steps(ws, ft_steps, arr["lr_ft"], stage_obj("ft", arr["wd_ft"], 0.0, zero))
    out = {"init": init, "pre": pre, "post": post, "ft": ws}
    losses = {st: jnp.stack([_eval_loss(out[st], A3[i], C3[i], relu) for i in range(3)]) for st in out}
    return {"weights": out, "losses": losses, "post_steps": best_it, "post_stopped": stopped,
            "post_grad_norm": gnorm, "diverged": jnp.stack([bad_pre, bad_post, bad_ft])}


_STATIC = ("depth", "relu", "pre_steps", "post_steps", "early", "eval_every", "patience", "ft_steps")


@partial(jax.jit, static_argnames=_STATIC)
def _run_batch(arr, **static):
    return jax.vmap(partial(_run_single, **static))(arr)


# --------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class LatentResult:
    """One run. ``losses[stage]`` = exact {L_pre, L_post, L_ft} of theta after that stage;
    summary losses as in :mod:`linear_theory.simulate`: L_im = L_post(post), L_ret = L_post(ft)."""

    config: LatentConfig
    losses: dict[str, float]  # L_pretrain, L_im, L_ret, L_ft, L_pre
    stage_losses: dict[str, dict[str, float]]  # init/pre/post/ft -> {pre, post, ft}
    spectra: dict[str, np.ndarray]  # init/pre/post/ft -> diag(U^T theta V), (n,)
    offdiag: dict[str, float]
    post_steps: int  # steps of the returned post-training weights (best evaluation)
    post_stopped: bool  # True: stopped by patience (converged by the rule); False: budget
    post_grad_norm: float  # ||grad of the post objective|| at the returned weights
    diverged: bool
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def thetas(self) -> dict[str, np.ndarray]:
        scale = 0.5 if self.config.model.activation == "relu" else 1.0
        return {k: scale * reduce(np.matmul, w) for k, w in self.weights.items()}


def _static(cfg: LatentConfig) -> tuple:
    early = cfg.post.stop == "early"
    return (cfg.task.n, cfg.width, cfg.model.depth, cfg.model.activation == "relu", cfg.pre.steps,
            cfg.post.steps, early, cfg.post.eval_every if early else 1, cfg.post.patience if early else 1,
            cfg.ft.steps)


def _arrays(cfg: LatentConfig, tk: LatentTasks, ws: list[np.ndarray]) -> dict[str, np.ndarray]:
    terms = _terms(cfg, tk)
    arr: dict[str, np.ndarray] = {f"W{i}": np.asarray(w, dtype=np.float64) for i, w in enumerate(ws)}
    for name, (w, C, M, q) in terms.items():
        arr.update({f"{name}_w": w, f"{name}_C": C, f"{name}_M": M, f"{name}_q": q})
    arr["A3"] = np.stack([tk.A[t] for t in STAGES])
    arr["C3"] = np.stack([tk.C[t] for t in STAGES])
    for key, v in (("lr_pre", cfg.pre.lr), ("lr_post", cfg.post.lr), ("lr_ft", cfg.ft.lr),
                   ("wd_post", cfg.post.wd), ("reg_post", cfg.post.reg), ("wd_ft", cfg.ft.wd),
                   ("rel_tol", cfg.post.rel_tol)):
        arr[key] = np.asarray(v, dtype=np.float64)
    return arr


def run_many(cfgs: list[LatentConfig], init: list[list[np.ndarray]] | None = None) -> list[LatentResult]:
    """Run every configuration (vmapped in groups of equal shapes/steps); order preserved.

    ``init`` optionally gives explicit initial weights per configuration (overrides model.init).
    """
    enable_precision("float64")
    tks = [build_tasks(c.task) for c in cfgs]
    wss = [init_weights(c) if init is None or init[i] is None else [np.asarray(w, dtype=np.float64) for w in init[i]]
           for i, c in enumerate(cfgs)]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(_static(c), []).append(i)
    out: list[LatentResult | None] = [None] * len(cfgs)
    for key, idx in groups.items():
        _, _, depth, relu, pre_s, post_s, early, ev, pat, ft_s = key
        arrs = [_arrays(cfgs[i], tks[i], wss[i]) for i in idx]
        batch = {name: jnp.asarray(np.stack([a[name] for a in arrs])) for name in arrs[0]}
        res = _run_batch(batch, depth=depth, relu=relu, pre_steps=pre_s, post_steps=post_s, early=early,
                         eval_every=ev, patience=pat, ft_steps=ft_s)
        res = jax.tree_util.tree_map(np.asarray, res)
        for j, i in enumerate(idx):
            out[i] = _result(cfgs[i], tks[i], res, j)
    return out  # type: ignore[return-value]


def run(cfg: LatentConfig, init: list[np.ndarray] | None = None) -> LatentResult:
    """One configuration (see :func:`run_many`)."""
    return run_many([cfg], None if init is None else [init])[0]


def _result(cfg: LatentConfig, tk: LatentTasks, res: dict, j: int) -> LatentResult:
    weights = {st: [np.asarray(w[j], dtype=np.float64) for w in res["weights"][st]] for st in res["weights"]}
    stage_losses = {st: dict(zip(STAGES, map(float, res["losses"][st][j]))) for st in res["losses"]}
    scale = 0.5 if cfg.model.activation == "relu" else 1.0
    spectra, offdiag = {}, {}
    for st, ws in weights.items():
        m = tk.U.T @ (scale * reduce(np.matmul, ws)) @ tk.V
        spectra[st] = np.diag(m).copy()
        offdiag[st] = float(np.linalg.norm(m - np.diag(np.diag(m))))
    a = cfg.pre.mix_fraction
    lp = stage_losses["pre"]
    losses = {"L_pretrain": (1 - a) * lp["pre"] + a * lp["post"], "L_im": stage_losses["post"]["post"],
              "L_ret": stage_losses["ft"]["post"], "L_ft": stage_losses["ft"]["ft"],
              "L_pre": stage_losses["ft"]["pre"]}
    return LatentResult(config=cfg, losses=losses, stage_losses=stage_losses, spectra=spectra, offdiag=offdiag,
                        post_steps=int(res["post_steps"][j]), post_stopped=bool(res["post_stopped"][j]),
                        post_grad_norm=float(res["post_grad_norm"][j]), diverged=bool(np.any(res["diverged"][j])),
                        weights=weights)
