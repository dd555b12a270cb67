"""Frozen, validated configuration of the latent-benefit study's simulator.

Self-contained (does not reuse :mod:`linear_theory.config`): the study needs knobs the
Appendix C schema does not have. One run is a :class:`LatentConfig`::

    task:  {n, k, sigma_inv, sigma_inc_pre, sigma_inc_post, sigma_inc_ft, beta,
            ft_spec_var, ft_rotation, basis, seed}
    model: {width, depth, activation, init, T, seed}
    data:  {n_samples, noise, seed}                    # finite D_post in post-training
    pre:   {mix_fraction (the paper's alpha), steps, lr}
    post:  {steps, lr, wd, reg, stop, eval_every, patience, rel_tol}
    ft:    {steps, lr, wd}

With the knobs off (``ft_spec_var = ft_rotation = 0``, ``depth = 2``, ``activation = linear``,
``n_samples = None``, ``wd = 0``, ``stop = budget``) the model is exactly the Appendix C model of
:mod:`linear_theory.simulate`, reg included (tests/test_theory_latent.py checks this).

Every dataclass validates itself and raises :class:`early_exposure.errors.ConfigError`
(a ``ValueError``) naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from early_exposure.errors import ConfigError

__all__ = ["LatentTask", "LatentModel", "LatentData", "LatentPre", "LatentPost", "LatentFt",
           "LatentConfig", "witness_config"]


def _num(path: str, v: Any, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(path, f"must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(path, f"must be finite, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ConfigError(path, f"must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ConfigError(path, f"must be {'<' if hi_open else '<='} {hi:g}, got {v:g}")
    return v


def _int(path: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(path, f"must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(path, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def _vals(path: str, values: Any, expected: int) -> tuple[float, ...]:
    try:
        vals = tuple(values)
    except TypeError as exc:
        raise ConfigError(path, f"must be a list of {expected} numbers, got {values!r}") from exc
    if len(vals) != expected:
        raise ConfigError(path, f"expected {expected} values, got {len(vals)}")
    return tuple(_num(f"{path}[{i}]", v, 0.0) for i, v in enumerate(vals))


@dataclass(frozen=True)
class LatentTask:
    """Appendix C tasks A^t = U Sigma_t V^T plus two relaxations of the fine-tuning stage.

    Feature blocks (0-based): invariant [0, n-2k), inconsistent [n-2k, n-k), specialized
    [n-k, n). Sigma_pre = diag(inv, inc_pre, 0), Sigma_post = diag(inv, inc_post, beta),
    Sigma_ft = diag(inv, inc_ft, 0). D_pre: V diag(1_{n-k}, 0_k) V^T; D_post: I_n.
    D_ft (Definition C.4 / Assumption C.1 relaxed): V R diag(1_{n-k}, v 1_k) R^T V^T with
    v = ``ft_spec_var`` (variance along the specialized directions) and R the rotation by
    ``ft_rotation`` radians in each plane (v_inc_i, v_spec_i); the target A_ft is not rotated.
    """

    n: int = 8
    k: int = 2
    sigma_inv: tuple[float, ...] = (6.0, 5.5, 5.0, 4.5)
    sigma_inc_pre: tuple[float, ...] = (1.0, 0.8)
    sigma_inc_post: tuple[float, ...] = (3.0, 3.0)
    sigma_inc_ft: tuple[float, ...] = (0.2, 0.0)
    beta: float = 3.0
    ft_spec_var: float = 0.0
    ft_rotation: float = 0.0
    basis: str = "identity"  # identity | random (seeded Haar U, V)
    seed: int = 0

    def __post_init__(self) -> None:
        _int("task.n", self.n, 1, 256)
        _int("task.k", self.k, 0)
        if 2 * self.k > self.n:
            raise ConfigError("task.k", f"must satisfy 2k <= n = {self.n}, got k = {self.k}")
        object.__setattr__(self, "sigma_inv", _vals("task.sigma_inv", self.sigma_inv, self.n - 2 * self.k))
        for name in ("sigma_inc_pre", "sigma_inc_post", "sigma_inc_ft"):
            object.__setattr__(self, name, _vals(f"task.{name}", getattr(self, name), self.k))
        _num("task.beta", self.beta, 0.0)
        _num("task.ft_spec_var", self.ft_spec_var, 0.0, 1e3)
        _num("task.ft_rotation", self.ft_rotation, -math.pi, math.pi)
        if self.basis not in ("identity", "random"):
            raise ConfigError("task.basis", f"must be 'identity' or 'random', got {self.basis!r}")
        _int("task.seed", self.seed, 0)

    @property
    def n_inv(self) -> int:
        return self.n - 2 * self.k


@dataclass(frozen=True)
class LatentModel:
    """theta = W_1 W_2 ... W_L (W_1: n x h, middle h x h, W_L: h x n); or, for
    ``activation = relu`` (depth 2 only), f(x) = W_1 relu(W_2 x) with x ~ N(0, C) and the
    exact Gaussian expectation of the loss (arc-cosine kernel).

    init: ``random``: i.i.d. N(0, 1/fan_in) entries times exp(-T) per layer (seeded by
    ``seed``); ``paper``: exp(-T) times rectangular identities (Assumption C.8).
    """

    width: int | None = None  # None -> n
    depth: int = 2
    activation: str = "linear"  # linear | relu
    init: str = "random"  # random | paper
    T: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width is not None:
            _int("model.width", self.width, 1, 1024)
        _int("model.depth", self.depth, 2, 6)
        if self.activation not in ("linear", "relu"):
            raise ConfigError("model.activation", f"must be 'linear' or 'relu', got {self.activation!r}")
        if self.activation == "relu" and self.depth != 2:
            raise ConfigError("model.depth", f"activation=relu needs depth 2, got {self.depth}")
        if self.init not in ("random", "paper"):
            raise ConfigError("model.init", f"must be 'random' or 'paper', got {self.init!r}")
        _num("model.T", self.T, -3.0, 40.0)
        _int("model.seed", self.seed, 0)


@dataclass(frozen=True)
class LatentData:
    """Finite D_post: ``n_samples`` draws x ~ N(0, I_n), y = A_post x + eps, eps ~ N(0, noise^2 I_n);
    post-training is full-batch GD on their empirical loss and mixed pretraining mixes the same
    samples. ``None`` = exact expectation. Validation (early stopping) and every reported loss
    stay exact expectations (an infinite validation set)."""

    n_samples: int | None = None
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples is not None:
            _int("data.n_samples", self.n_samples, 1, 10**6)
        _num("data.noise", self.noise, 0.0, 100.0)
        _int("data.seed", self.seed, 0)


@dataclass(frozen=True)
class LatentPre:
    """Stage 1: GD on (1 - alpha) L_pre + alpha L_post."""

    mix_fraction: float = 0.0  # the paper's alpha
    steps: int = 4000
    lr: float = 0.01

    def __post_init__(self) -> None:
        _num("pre.mix_fraction", self.mix_fraction, 0.0, 1.0)
        _int("pre.steps", self.steps, 0, 10**7)
        _num("pre.lr", self.lr, 0.0, 10.0)


@dataclass(frozen=True)
class LatentPost:
    """Stage 2: GD on L_post (or its finite-sample version) + wd sum_l ||W_l||_F^2
    + reg ||theta - theta_pre||_F^2.

    stop: ``budget`` runs exactly ``steps`` steps; ``early`` evaluates the exact L_post every
    ``eval_every`` steps, counts an evaluation as an improvement when L < best (1 - rel_tol),
    stops after ``patience`` evaluations without one and restores the best evaluated weights
    (the LM side's rule; ``rel_tol = 0`` is its strict ``val < best_val``); ``steps`` is then
    the budget (a multiple of ``eval_every``).
    """

    steps: int = 20000
    lr: float = 0.01
    wd: float = 0.0
    reg: float = 0.0
    stop: str = "early"
    eval_every: int = 10
    patience: int = 2
    rel_tol: float = 0.0

    def __post_init__(self) -> None:
        _int("post.steps", self.steps, 0, 10**7)
        _num("post.lr", self.lr, 0.0, 10.0)
        _num("post.wd", self.wd, 0.0, 100.0)
        _num("post.reg", self.reg, 0.0, 1e4)
        if self.stop not in ("budget", "early"):
            raise ConfigError("post.stop", f"must be 'budget' or 'early', got {self.stop!r}")
        _int("post.eval_every", self.eval_every, 1, 10**6)
        _int("post.patience", self.patience, 1, 10**6)
        _num("post.rel_tol", self.rel_tol, 0.0, 1.0, hi_open=True)
        if self.stop == "early" and self.steps % self.eval_every:
            raise ConfigError("post.steps", f"must be a multiple of post.eval_every = {self.eval_every} "
                              f"with stop=early, got {self.steps}")


@dataclass(frozen=True)
class LatentFt:
    """Stage 3: GD on L_ft + wd sum_l ||W_l||_F^2 (fixed number of steps)."""

    steps: int = 200
    lr: float = 0.01
    wd: float = 0.0

    def __post_init__(self) -> None:
        _int("ft.steps", self.steps, 0, 10**7)
        _num("ft.lr", self.lr, 0.0, 10.0)
        _num("ft.wd", self.wd, 0.0, 100.0)


@dataclass(frozen=True)
class LatentConfig:
    task: LatentTask = field(default_factory=LatentTask)
    model: LatentModel = field(default_factory=LatentModel)
    data: LatentData = field(default_factory=LatentData)
    pre: LatentPre = field(default_factory=LatentPre)
    post: LatentPost = field(default_factory=LatentPost)
    ft: LatentFt = field(default_factory=LatentFt)

    def __post_init__(self) -> None:
        for name, cls in (("task", LatentTask), ("model", LatentModel), ("data", LatentData),
                          ("pre", LatentPre), ("post", LatentPost), ("ft", LatentFt)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, f"must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.model.activation == "relu":
            if self.data.n_samples is not None:
                raise ConfigError("data.n_samples", "finite samples are implemented for activation=linear only")
            if self.post.reg > 0:
                raise ConfigError("post.reg", "the theta_pre regulariser is implemented for activation=linear only")

    @property
    def width(self) -> int:
        return self.task.n if self.model.width is None else self.model.width

    def with_(self, **sections: dict[str, Any]) -> "LatentConfig":
        """A copy with fields of sections replaced, e.g. ``cfg.with_(task={"beta": 3.1})``."""
        new = {name: replace(getattr(self, name), **vals) for name, vals in sections.items()}
        return replace(self, **new)


def witness_config(width: int = 6, gap: float = 0.0, alpha: float = 0.0, **sections: dict[str, Any]) -> LatentConfig:
    """The study's witness: default task with sigma_inc_post = (3, 3), beta = 3 + gap, width h,
    random init exp(-10), pre 4000 steps at lr 0.02, post strict early stopping (budget 20000), ft 200 steps."""
    base = LatentConfig()
    cfg = base.with_(task={"beta": 3.0 + gap}, model={"width": width}, pre={"mix_fraction": alpha, "lr": 0.02})
    return cfg.with_(**sections) if sections else cfg
