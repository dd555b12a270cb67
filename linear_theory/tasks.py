"""The regression tasks of Appendix C.1 as exact covariance data (no sampling).

Feature blocks (0-based): invariant [0, n-2k), inconsistent [n-2k, n-k), specialized [n-k, n).

- Targets (Assumption C.1): A^t = U Sigma_t V^T with
  Sigma_pre = diag(sigma_inv, sigma_inc_pre, 0_k), Sigma_post = diag(sigma_inv, sigma_inc_post, beta 1_k),
  Sigma_ft = diag(sigma_inv, sigma_inc_ft, 0_k).
- Input covariances: D_pre, D_ft: V diag(1_{n-k}, 0_k) V^T (the specialized directions
  V[:, n-k:] have zero variance, Definition C.4); D_post: I_n.

Everything is diagonal in the (U, V) basis, so each task is also described by two length-n
vectors: the singular values ``sigma`` and the input variances ``cov`` along the columns of V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from early_exposure.seeding import stream
from linear_theory.config import TaskConfig

__all__ = [
    "Task", "TaskMatrices", "build_task", "random_orthogonal", "blocks",
    "mixture_modes", "ideal_sigma", "printed_sigma_mixed", "printed_sigma_unmixed",
    "ideal_weights", "expected_loss_np", "task_stream", "STREAMS",
]

#: the random streams of a task's root seed (``task.seed``), as integer tags of
#: :func:`early_exposure.seeding.stream`: tag i is child i of ``SeedSequence(seed).spawn``
STREAMS: dict[str, int] = {"U": 0, "V": 1, "init": 2, "sampling": 3}


@dataclass(frozen=True)
class Task:
    """One task t in the (U, V) basis: A^t = U diag(sigma) V^T, Cov(x) = V diag(cov) V^T."""

    sigma: np.ndarray  # (n,) singular values of A^t
    cov: np.ndarray  # (n,) input variances along the columns of V


@dataclass(frozen=True)
class TaskMatrices:
    """The three tasks, as per-mode vectors and as full matrices."""

    U: np.ndarray  # (n, n) left singular vectors
    V: np.ndarray  # (n, n) right singular vectors
    pre: Task
    post: Task
    ft: Task

    def A(self, t: str) -> np.ndarray:
        """A^t = U Sigma_t V^T, shape (n, n)."""
        task: Task = getattr(self, t)
        return (self.U * task.sigma[None, :]) @ self.V.T

    def C(self, t: str) -> np.ndarray:
        """Input covariance V diag(cov_t) V^T, shape (n, n)."""
        task: Task = getattr(self, t)
        return (self.V * task.cov[None, :]) @ self.V.T


def blocks(n: int, k: int) -> dict[str, slice]:
    """Index slices of the invariant, inconsistent and specialized features."""
    return {"invariant": slice(0, n - 2 * k), "inconsistent": slice(n - 2 * k, n - k),
            "specialized": slice(n - k, n)}


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-distributed orthogonal (n, n) matrix (QR of a Gaussian with the sign fix)."""
    g = rng.standard_normal((n, n))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))[None, :]


def task_stream(seed: int, name: str) -> np.random.Generator:
    """The Generator of stream ``name`` (:data:`STREAMS`: U, V, init, sampling) under root ``seed``."""
    return stream(seed, STREAMS[name])


def build_task(task: TaskConfig) -> TaskMatrices:
    """Assumption C.1 / Definitions C.2-C.4 and the input distributions of Section C.1."""
    n, k = task.n, task.k
    inv = np.asarray(task.sigma_inv, dtype=np.float64)
    zk = np.zeros(k)
    s_pre = np.concatenate([inv, np.asarray(task.sigma_inc_pre), zk])
    s_post = np.concatenate([inv, np.asarray(task.sigma_inc_post), np.full(k, task.beta)])
    s_ft = np.concatenate([inv, np.asarray(task.sigma_inc_ft), zk])
    c_shared = np.concatenate([np.ones(n - k), zk])
    c_post = np.ones(n)
    if task.basis == "identity":
        U = np.eye(n)
        V = np.eye(n)
    else:
        U = random_orthogonal(n, task_stream(task.seed, "U"))
        V = random_orthogonal(n, task_stream(task.seed, "V"))
    return TaskMatrices(U=U, V=V, pre=Task(s_pre, c_shared), post=Task(s_post, c_post),
                        ft=Task(s_ft, c_shared.copy()))


def mixture_modes(tm: TaskMatrices, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode (sigma_xy, lambda_x) of D_mixed = (1-alpha) D_pre + alpha D_post (Section C.1).

    sigma_xy_i = (1-alpha) cov_pre_i sigma_pre_i + alpha sigma_post_i is the i-th singular value of
    Sigma_xy (Assumption C.7); lambda_i = (1-alpha) cov_pre_i + alpha is the input variance.
    The fixed point of gradient descent on this mode is sigma_xy_i / lambda_i.
    """
    sxy = (1 - alpha) * tm.pre.cov * tm.pre.sigma + alpha * tm.post.sigma
    lam = (1 - alpha) * tm.pre.cov + alpha * tm.post.cov
    return sxy, lam


def ideal_sigma(tm: TaskMatrices, alpha: float, *, rank: int | None = None, k: int | None = None) -> np.ndarray:
    """Sigma of the idealized pretrained initialisation that pretraining with ``alpha`` reaches.

    Theorem C.9 (Gidel et al. 2019): modes are learned in decreasing order of the Sigma_xy
    singular value sigma_xy_i; at the intermediate time t_r the product is the rank-r truncation.
    Each learned mode sits at its gradient-descent fixed point sigma_xy_i / lambda_i (which is
    beta, not alpha*beta, for the specialized modes: see the C.10 erratum). Modes outside the
    top ``rank`` (default n - k, as in Theorem C.10) are 0. Returns shape (n,).
    """
    sxy, lam = mixture_modes(tm, alpha)
    n = sxy.shape[0]
    if rank is None:
        rank = n - (k if k is not None else 0)
    fixed = np.where(lam > 0, sxy / np.where(lam > 0, lam, 1.0), 0.0)
    order = np.argsort(-sxy, kind="stable")  # ties broken by feature index
    out = np.zeros(n)
    top = order[:rank]
    out[top] = fixed[top]
    return out


def printed_sigma_mixed(task: TaskConfig, alpha: float) -> np.ndarray:
    """Sigma_mixed as printed in Theorem C.10: diag(sigma_inv, 0_k, alpha*beta 1_k)."""
    return np.concatenate([np.asarray(task.sigma_inv), np.zeros(task.k), np.full(task.k, alpha * task.beta)])


def printed_sigma_unmixed(task: TaskConfig) -> np.ndarray:
    """Sigma_unmixed as printed in Theorem C.10: diag(sigma_inv, sigma^post_inc, 0_k)."""
    return np.concatenate([np.asarray(task.sigma_inv), np.asarray(task.sigma_inc_post), np.zeros(task.k)])


def ideal_weights(U: np.ndarray, V: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Idealized pretrained initialisation of Section C.3: W1 = U Sigma^{1/2}, W2 = Sigma^{1/2} V^T.

    ``sigma`` (n,) must be non-negative; returns W1 (n, n), W2 (n, n).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if np.any(sigma < 0):
        raise ValueError("ideal_weights: Sigma must be non-negative (it holds singular values)")
    r = np.sqrt(sigma)
    return U * r[None, :], r[:, None] * V.T


def expected_loss_np(theta: np.ndarray, A: np.ndarray, cov: np.ndarray) -> float:
    """E_x ||theta x - A x||^2 = tr((theta - A) cov (theta - A)^T) (no 1/2), in NumPy."""
    d = theta - A
    return float(np.einsum("ij,jk,ik->", d, cov, d))
