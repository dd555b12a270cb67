"""Closed forms for the decoupled (spectral) dynamics, used as independent references.

Per mode, with input variance lam and Sigma_xy singular value s_xy, balanced gradient flow on
E||theta x - A x||^2 (no 1/2; time t = lr * steps) gives for the product u = a*b

    du/dt = 4 u (s_xy - lam u)                                   (Saxe, McClelland, Ganguli 2014)

whose solution is the logistic curve

    u(t) = K e^{4 s_xy t} / (e^{4 s_xy t} - 1 + K/u0),    K = s_xy / lam.

(Saxe et al. write tau du/dt = 2u(s - u); with our loss scaling tau = 1/2.)  The time to reach
a fraction f of K is ln((K/u0 - 1)/(1/f - 1)) / (4 s_xy), i.e. ~ ln(K/u0)/(4 s_xy): modes are
learned in decreasing order of s_xy (Theorem C.9, Gidel et al. 2019).
"""

from __future__ import annotations

import numpy as np

__all__ = ["saxe_closed_form", "learning_time", "rank_truncation", "regularized_fixed_point",
           "printed_eq2_step", "true_eq2_step"]


def saxe_closed_form(t: np.ndarray | float, s_xy: float, u0: float, lam: float = 1.0) -> np.ndarray:
    """u(t) of the balanced per-mode gradient flow du/dt = 4u(s_xy - lam u), u(0) = u0 > 0."""
    t = np.asarray(t, dtype=np.float64)
    if s_xy == 0.0:  # du/dt = -4 lam u^2
        return u0 / (1.0 + 4.0 * lam * u0 * t)
    K = s_xy / lam
    e = np.exp(4.0 * s_xy * t)
    return K * e / (e - 1.0 + K / u0)


def learning_time(s_xy: float, u0: float, lam: float = 1.0, frac: float = 0.5) -> float:
    """Gradient-flow time at which u(t) = frac * s_xy/lam (closed form of :func:`saxe_closed_form`)."""
    K = s_xy / lam
    return float(np.log((K / u0 - 1.0) / (1.0 / frac - 1.0)) / (4.0 * s_xy))


def rank_truncation(sigma: np.ndarray, i: int) -> np.ndarray:
    """Sigma_{:i} of Theorem C.9: keep the i largest entries of ``sigma`` (n,), zero the rest."""
    sigma = np.asarray(sigma, dtype=np.float64)
    out = np.zeros_like(sigma)
    top = np.argsort(-sigma, kind="stable")[:i]
    out[top] = sigma[top]
    return out


def regularized_fixed_point(sigma_post: np.ndarray, s0: np.ndarray, reg: float) -> np.ndarray:
    """Minimiser of (s - sigma_post)^2 + reg (s - s0)^2 per mode: (sigma_post + reg s0)/(1 + reg).

    The stationary point of the regularised post-training loss of Section C.3 on a mode that is
    non-zero at initialisation; it differs from Sigma_post whenever reg > 0 and s0 != sigma_post.
    """
    return (np.asarray(sigma_post) + reg * np.asarray(s0)) / (1.0 + reg)


def printed_eq2_step(sig: np.ndarray, sig0: np.ndarray, target: np.ndarray, lr: float, reg: float) -> np.ndarray:
    """One step of eq. (2) exactly as printed in Section C.3:
    sigma(t+1) = sigma - 2 eta sigma (sigma^2 - sigma_spec^2) + 2 eta lambda (sigma^2 - sigma(0)^2)."""
    return sig - 2 * lr * sig * (sig ** 2 - target ** 2) + 2 * lr * reg * (sig ** 2 - sig0 ** 2)


def true_eq2_step(w: np.ndarray, w0: np.ndarray, target: np.ndarray, lr: float, reg: float) -> np.ndarray:
    """One gradient step of the balanced factor w (theta_ii = w^2) on (w^2 - target)^2 + reg (w^2 - w0^2)^2:
    w(t+1) = w - 2 eta w (w^2 - target) - 2 eta lambda w (w^2 - w0^2).

    (Derived from d/dw of the per-mode regularised loss; it equals the balanced case of the
    spectral recurrence in :mod:`linear_theory.simulate` with a = b = w.)
    """
    return w - 2 * lr * w * (w ** 2 - target) - 2 * lr * reg * w * (w ** 2 - w0 ** 2)
