"""Closed forms of the latent-benefit study (docs/theory_latent.md, section "Theory").

Slot model of a width-h linear network on the decoupled Appendix C tasks. Each stage ends
(close to) a critical point where h "slots" (hidden directions) each hold one feature i at a
value s_i and every other feature is 0:

1. Pretraining on (1 - alpha) D_pre + alpha D_post converges to the best rank-h fit of its
   objective: feature i has Sigma_xy value sxy_i = (1 - alpha) c^pre_i sigma^pre_i
   + alpha sigma^post_i, input variance lam_i = (1 - alpha) c^pre_i + alpha and fixed point
   sxy_i / lam_i; the objective drops by score_i = sxy_i^2 / lam_i when i is held, so the h
   features of largest score are held (ties: lower index). Features with score 0 (the
   specialized ones without mixing) are not learned: their slots stay free.
2. Post-training keeps the held features (moving each to sigma^post_i) and fills free slots
   with the best unheld features by sigma^post (escape from the init scale). It does *not*
   swap a held feature for an unheld one of larger sigma^post unless it escapes the saddle;
   on that plateau the unheld feature grows like eps^2 exp(4 |gap| t) (linearisation of
   gradient flow at the saddle, rate 2 |gap| per factor), so the swap needs
   t > ln(8 c / eps^2) / (4 |gap|) (:func:`escape_gap`). With an exact tie there is a whole
   manifold of global minima and no swap ever happens.
3. Fine-tuning moves each held feature along the balanced gradient flow of its mode,
   ds/dt = 2 L var s^(2 - 2/L) (sigma^ft - s) (L = depth; var = input variance of D_ft along
   the feature; :func:`mode_flow`); unheld features stay 0.

Then L = sum_i (sigma^post_i - s_i)^2 for L_im (after post) and L_ret (after ft), and at a tie
(sigma^inc_post = beta = c) the mixed-minus-unmixed gaps on the plateau are

    Delta L_im  = m (c^2 - beta^2)                    (0 at the tie)
    Delta L_ret = Delta L_im - sum_{switched i} [(c - s^ft_i)^2 - (beta - s^ft_spec)^2]

where the m "switched" slots hold a specialized feature in the mixed arm and an
inconsistent one in the unmixed arm, s^ft_i is the inconsistent feature after fine-tuning
and s^ft_spec the specialized one (= beta when D_ft has no variance along it, Lemma C.16).
The bracket is the latent benefit: what fine-tuning erases of the inconsistent features the
unmixed arm used in place of the specialized ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from linear_theory.latent.config import LatentConfig

__all__ = ["mode_flow", "pre_scores", "slots", "SlotPrediction", "predict", "predict_pair",
           "escape_gap", "eckart_young"]


def mode_flow(s0: float, target: float, var: float, t: float, depth: int = 2, n_steps: int = 4000) -> float:
    """Balanced gradient flow of one mode, ds/dt = 2 L var s^(2 - 2/L) (target - s), at time t.

    Depth 2 in closed form (logistic; s0 / (1 + 4 var s0 t) for target 0); deeper by RK4.
    """
    if s0 <= 0.0 or var == 0.0 or t == 0.0:
        return float(s0)
    if depth == 2:
        if target == 0.0:
            return s0 / (1.0 + 4.0 * var * s0 * t)
        return target / (1.0 + (target / s0 - 1.0) * math.exp(-4.0 * var * target * t))
    p = 2.0 - 2.0 / depth

    def f(s: float) -> float:
        return 2.0 * depth * var * max(s, 0.0) ** p * (target - s)

    s, h = float(s0), t / n_steps
    for _ in range(n_steps):
        k1 = f(s)
        k2 = f(s + 0.5 * h * k1)
        k3 = f(s + 0.5 * h * k2)
        k4 = f(s + h * k3)
        s += h * (k1 + 2 * k2 + 2 * k3 + k4) / 6.0
    return s


def _features(cfg: LatentConfig) -> dict[str, np.ndarray]:
    t = cfg.task
    n, k = t.n, t.k
    zk = np.zeros(k)
    inv = np.asarray(t.sigma_inv)
    return {"pre": np.concatenate([inv, t.sigma_inc_pre, zk]),
            "post": np.concatenate([inv, t.sigma_inc_post, np.full(k, t.beta)]),
            "ft": np.concatenate([inv, t.sigma_inc_ft, zk]),
            "var_pre": np.concatenate([np.ones(n - k), zk]),
            "var_ft": np.concatenate([np.ones(n - k), np.full(k, t.ft_spec_var)])}


def pre_scores(cfg: LatentConfig) -> tuple[np.ndarray, np.ndarray]:
    """(score_i, fixed point_i) of the pretraining mixture (module docstring, item 1)."""
    f = _features(cfg)
    a = cfg.pre.mix_fraction
    sxy = (1 - a) * f["var_pre"] * f["pre"] + a * f["post"]
    lam = (1 - a) * f["var_pre"] + a
    fixed = np.where(lam > 0, sxy / np.where(lam > 0, lam, 1.0), 0.0)
    score = np.where(lam > 0, sxy ** 2 / np.where(lam > 0, lam, 1.0), 0.0)
    return score, fixed


def _top(values: np.ndarray, m: int, allowed: np.ndarray) -> list[int]:
    idx = [i for i in np.argsort(-values, kind="stable") if allowed[i] and values[i] > 0]
    return sorted(idx[:max(m, 0)])


def slots(cfg: LatentConfig, swap: bool = False) -> dict[str, list[int]]:
    """Features held after pretraining and after post-training (module docstring, 1-2).

    ``swap=True``: post-training has escaped every saddle (Eckart-Young assignment)."""
    n, h = cfg.task.n, cfg.width
    score, _ = pre_scores(cfg)
    everything = np.ones(n, dtype=bool)
    pre = _top(score, h, everything)
    post_sig = _features(cfg)["post"]
    if swap:
        post = _top(post_sig, h, everything)
    else:
        free = np.ones(n, dtype=bool)
        free[pre] = False
        post = sorted(pre + _top(post_sig, h - len(pre), free))
    return {"pre": pre, "post": post}


@dataclass(frozen=True)
class SlotPrediction:
    held_pre: list[int]
    held_post: list[int]
    s_post: np.ndarray
    s_ft: np.ndarray
    L_im: float
    L_ret: float


def predict(cfg: LatentConfig, swap: bool = False) -> SlotPrediction:
    """Slot-model prediction of one arm (post-training converged on its plateau)."""
    f = _features(cfg)
    sl = slots(cfg, swap)
    _, fixed = pre_scores(cfg)
    n, L = cfg.task.n, cfg.model.depth
    wd, reg = cfg.post.wd, cfg.post.reg
    s_post = np.zeros(n)
    for i in sl["post"]:
        s_pre = fixed[i] if i in sl["pre"] else 0.0
        target = (f["post"][i] + reg * s_pre) / (1.0 + reg)
        s_post[i] = max(target - wd, 0.0) if L == 2 else target
    t_ft = cfg.ft.lr * cfg.ft.steps
    s_ft = np.array([mode_flow(s_post[i], f["ft"][i], f["var_ft"][i], t_ft, L) for i in range(n)])
    return SlotPrediction(held_pre=sl["pre"], held_post=sl["post"], s_post=s_post, s_ft=s_ft,
                          L_im=float(np.sum((f["post"] - s_post) ** 2)),
                          L_ret=float(np.sum((f["post"] - s_ft) ** 2)))


def predict_pair(mixed: LatentConfig, unmixed: LatentConfig, swap: bool = False) -> dict[str, float]:
    """Predicted Delta L_im, Delta L_ret (mixed minus unmixed) and the latent benefit
    (Delta L_im - Delta L_ret)."""
    pm, pu = predict(mixed, swap), predict(unmixed, swap)
    d_im, d_ret = pm.L_im - pu.L_im, pm.L_ret - pu.L_ret
    return {"L_im_mixed": pm.L_im, "L_im_unmixed": pu.L_im, "L_ret_mixed": pm.L_ret,
            "L_ret_unmixed": pu.L_ret, "dL_im": d_im, "dL_ret": d_ret, "latent_benefit": d_im - d_ret,
            "switched": len(set(pm.held_post) - set(pu.held_post))}


def escape_gap(eps: float, c: float, t: float) -> float:
    """Smallest |gap| at which the plateau arm swaps within flow time t (item 2):
    ln(8 c / eps^2) / (4 t), with eps the seed (||x|| + ||y||) of the unheld feature."""
    if eps <= 0.0 or t <= 0.0:
        return math.inf
    return math.log(8.0 * c / eps ** 2) / (4.0 * t)


def eckart_young(sigma: np.ndarray, h: int) -> float:
    """Smallest ||theta - A||_F^2 over rank <= h: the sum of the dropped sigma_i^2."""
    s = np.sort(np.asarray(sigma, dtype=np.float64))[::-1]
    return float(np.sum(s[h:] ** 2))
