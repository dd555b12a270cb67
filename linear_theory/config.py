"""Frozen, validated configuration of one theory simulation (Appendix C of arXiv 2605.12705).

The YAML/JSON file maps 1:1 onto :class:`SimConfig`::

    task:   {n, k, sigma_inv, sigma_inc_pre, sigma_inc_post, sigma_inc_ft, beta, basis, seed}
    model:  {width, init, T, ideal_values, ideal_rank}
    stages: {pre: {mix_fraction, steps, lr}, post: {steps, lr, reg, replay, dropout}, ft: {steps, lr}}
    precision: float64 | float32

``stages.pre.mix_fraction`` is the fraction of D_post mixed into pretraining: the paper's alpha
of Appendix C (lambda in Sec. 4). The math code (:mod:`linear_theory.tasks`,
:mod:`linear_theory.simulate`) keeps the paper's symbol ``alpha`` for it. Keys renamed since
earlier versions (:data:`RENAMED`, e.g. ``stages.pre.alpha``) are refused with a
:class:`~early_exposure.errors.ConfigError` naming the new key.

Files and ``--set`` overrides are read by :mod:`early_exposure.configs` (YAML 1.2 numbers:
``1e-2`` is a float). Every dataclass validates itself on construction and raises
:class:`early_exposure.errors.ConfigError` naming the field *relative to its section*
(``mix_fraction``); :func:`early_exposure.configs.from_dict` prefixes the path where the section
is mounted (``stages.pre.mix_fraction``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from early_exposure.configs import (
    apply_overrides, check_int, check_range, from_dict, load_mapping, to_dict,
)
from early_exposure.errors import ConfigError

_S = TypeVar("_S")

__all__ = [
    "TaskConfig", "ModelConfig", "PreConfig", "PostConfig", "FtConfig", "StagesConfig",
    "SimConfig", "load_config", "default_config", "config_from_dict", "DEFAULT_CONFIG_PATH",
    "RENAMED", "reject_renamed", "load_study_config", "study_base_config",
]

#: configs/theory/default.yaml (the documented default task; identical to :func:`default_config`).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "theory" / "default.yaml"

_MAX_N = 4096
_MAX_STEPS = 10_000_000

#: renamed SimConfig keys: old dotted path -> new dotted path (an old key is an error naming the new one)
RENAMED: dict[str, str] = {"stages.pre.alpha": "stages.pre.mix_fraction"}


def reject_renamed(data: dict[str, Any], renamed: dict[str, str]) -> None:
    """Raise ConfigError ``OLD: renamed to NEW`` if ``data`` sets any old dotted key of ``renamed``."""
    for old, new in renamed.items():
        node: Any = data
        *parents, leaf = old.split(".")
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            raise ConfigError(old, f"renamed to {new}")


def _check_finite(path: str, value: float, lo: float | None = None, hi: float | None = None, **kw: bool) -> None:
    """A finite number in the range (``check_range`` alone lets NaN through)."""
    if not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value!r}")
    check_range(path, value, lo, hi, **kw)


def _check_values(path: str, values: tuple[float, ...], expected: int, what: str) -> None:
    """``expected`` non-negative finite singular values (an empty block is allowed)."""
    if len(values) != expected:
        raise ConfigError(path, f"expected {expected} values ({what}), got {len(values)}")
    for i, v in enumerate(values):
        _check_finite(f"{path}[{i}]", v, 0.0, None)


@dataclass(frozen=True)
class TaskConfig:
    """The three regression tasks A^t = U Sigma_t V^T of Appendix C.1 (Assumption C.1).

    Feature blocks (0-based indices): invariant [0, n-2k), inconsistent [n-2k, n-k),
    specialized [n-k, n).  Sigma_pre = diag(sigma_inv, sigma_inc_pre, 0_k),
    Sigma_post = diag(sigma_inv, sigma_inc_post, beta 1_k), Sigma_ft = diag(sigma_inv, sigma_inc_ft, 0_k).
    Singular values are non-negative (they are singular values).
    """

    n: int
    k: int
    sigma_inv: tuple[float, ...]  # (n-2k,)
    sigma_inc_pre: tuple[float, ...]  # (k,)
    sigma_inc_post: tuple[float, ...]  # (k,)
    sigma_inc_ft: tuple[float, ...]  # (k,)
    beta: float  # value of every specialized feature in Sigma_post (Definition C.4)
    basis: Literal["identity", "random"] = "identity"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("n", self.n, 1, _MAX_N)
        check_int("k", self.k, 0)
        if 2 * self.k > self.n:
            raise ConfigError("k", f"must satisfy 0 <= k <= n/2 = {self.n / 2:g}, got {self.k}")
        for name in ("sigma_inv", "sigma_inc_pre", "sigma_inc_post", "sigma_inc_ft"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        _check_values("sigma_inv", self.sigma_inv, self.n - 2 * self.k, "n-2k invariant features")
        for name in ("sigma_inc_pre", "sigma_inc_post", "sigma_inc_ft"):
            _check_values(name, getattr(self, name), self.k, "k inconsistent features")
        _check_finite("beta", self.beta, 0.0, None)
        if self.basis not in ("identity", "random"):
            raise ConfigError("basis", f"must be 'identity' or 'random', got {self.basis!r}")
        check_int("seed", self.seed, 0, 2**63 - 1)

    @property
    def n_inv(self) -> int:
        """d_invariant = n - 2k."""
        return self.n - 2 * self.k


@dataclass(frozen=True)
class ModelConfig:
    """Two-layer linear network theta = W1 W2, W1: (n, h), W2: (h, n).

    init:
      - ``paper``: Assumption C.8, W1 = W2 = exp(-T) I (rectangular identity if h < n).
      - ``aligned``: W1 = exp(-T) U, W2 = exp(-T) V^T, i.e. the paper init rotated with the
        task basis (identical to ``paper`` for basis=identity); the decoupled case.
      - ``random``: i.i.d. N(0, 1/n) entries times exp(-T), seeded from task.seed.
      - ``ideal``: the idealized pretrained initialisation of Section C.3,
        W1 = U Sigma^{1/2}, W2 = Sigma^{1/2} V^T, with Sigma from
        :func:`linear_theory.tasks.ideal_sigma` (``ideal_values``, ``ideal_rank``); the
        pretraining stage is then skipped (theta_pre = the ideal product).
    """

    width: int | None = None  # None -> n
    init: Literal["paper", "aligned", "random", "ideal"] = "paper"
    T: float = 6.0  # init scale exp(-T)
    ideal_values: Literal["fixed_point", "printed"] = "fixed_point"
    ideal_rank: int | None = None  # None -> n - k (the truncation used in Theorem C.10)

    def __post_init__(self) -> None:
        if self.width is not None:
            check_int("width", self.width, 1, _MAX_N)
        if self.init not in ("paper", "aligned", "random", "ideal"):
            raise ConfigError("init", f"must be one of paper, aligned, random, ideal; got {self.init!r}")
        _check_finite("T", self.T, -5.0, 50.0)
        if self.ideal_values not in ("fixed_point", "printed"):
            raise ConfigError("ideal_values", f"must be 'fixed_point' or 'printed', got {self.ideal_values!r}")
        if self.ideal_rank is not None:
            check_int("ideal_rank", self.ideal_rank, 0, _MAX_N)


def _check_stage(steps: int, lr: float) -> None:
    check_int("steps", steps, 0, _MAX_STEPS)
    _check_finite("lr", lr, 0.0, None)


@dataclass(frozen=True)
class PreConfig:
    """Stage 1: GD on (1 - mix_fraction) L_pre + mix_fraction L_post (mixed pretraining, Section C.1).

    ``mix_fraction`` is the paper's alpha of Appendix C (lambda in Sec. 4).
    """

    mix_fraction: float = 0.0
    steps: int = 1000
    lr: float = 0.01

    def __post_init__(self) -> None:
        _check_finite("mix_fraction", self.mix_fraction, 0.0, 1.0)
        _check_stage(self.steps, self.lr)


@dataclass(frozen=True)
class PostConfig:
    """Stage 2: GD on (1-r) L_post + r L_pre + reg ||theta - theta_0||_F^2 (+ dropout penalty).

    reg is lambda of Section C.3; replay is r; dropout is the inverted-Bernoulli rate p on the
    hidden units, whose expectation adds p/(1-p) sum_j ||W1[:, j]||^2 W2[j, :] Sigma_x W2[j, :]^T.
    """

    steps: int = 1000
    lr: float = 0.01
    reg: float = 0.0
    replay: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_stage(self.steps, self.lr)
        _check_finite("reg", self.reg, 0.0, None)
        _check_finite("replay", self.replay, 0.0, 1.0)
        _check_finite("dropout", self.dropout, 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class FtConfig:
    """Stage 3: unregularised GD on L_ft (Section C.4)."""

    steps: int = 1000
    lr: float = 0.01

    def __post_init__(self) -> None:
        _check_stage(self.steps, self.lr)


@dataclass(frozen=True)
class StagesConfig:
    pre: PreConfig = field(default_factory=PreConfig)
    post: PostConfig = field(default_factory=PostConfig)
    ft: FtConfig = field(default_factory=FtConfig)


@dataclass(frozen=True)
class SimConfig:
    """One simulation: task, model and the three stages (checks name paths from the config root)."""

    task: TaskConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    precision: Literal["float64", "float32"] = "float64"

    def __post_init__(self) -> None:
        if self.precision not in ("float64", "float32"):
            raise ConfigError("precision", f"must be 'float64' or 'float32', got {self.precision!r}")
        h = self.width
        if self.model.init in ("ideal", "aligned") and h != self.task.n:
            raise ConfigError("model.width", f"init={self.model.init} needs width = n = {self.task.n} (or null), got {h}")
        if self.model.ideal_rank is not None and self.model.ideal_rank > self.task.n:
            raise ConfigError("model.ideal_rank", f"must be in [0, n={self.task.n}], got {self.model.ideal_rank}")

    @property
    def width(self) -> int:
        """Hidden width h (model.width, or n when null)."""
        return self.task.n if self.model.width is None else self.model.width

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def replace(self, overrides: list[str]) -> "SimConfig":
        """A copy with ``a.b=value`` overrides applied (validated)."""
        return config_from_dict(apply_overrides(self.to_dict(), overrides))


def config_from_dict(data: dict[str, Any]) -> SimConfig:
    """Strict dict -> :class:`SimConfig` (unknown keys, renamed keys, wrong types -> ConfigError)."""
    reject_renamed(data, RENAMED)
    if "task" not in data:
        raise ConfigError("task", "missing section 'task' (n, k, sigma_inv, sigma_inc_pre, sigma_inc_post, sigma_inc_ft, beta)")
    return from_dict(SimConfig, data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> SimConfig:
    """Load a YAML/JSON config (``None`` -> the default task), apply ``--set`` overrides, validate."""
    data = default_config().to_dict() if path is None else load_mapping(path)
    return config_from_dict(apply_overrides(data, overrides))


def default_config() -> SimConfig:
    """The documented default task (same numbers as configs/theory/default.yaml).

    n = 8, k = 2: four strong invariant features (6, 5.5, 5, 4.5); two inconsistent features that
    move from 1.0/0.8 (pre) to 2.0/1.8 (post) to 0.2/0.0 (ft); two specialized features of value
    beta = 4 that only D_post activates. With mix_fraction alpha = 0.5 the specialized modes have
    Sigma_xy singular value alpha*beta = 2 > 1.5 / 1.3 of the inconsistent ones (Assumption C.6 holds).
    Init scale exp(-2T) = 2e-9 (T = 10). Pretraining (lr*steps = 6) is long enough for the
    unmixed run to learn the inconsistent features at their D_pre values; post-training
    (lr*steps = 0.5) is too short to grow a feature from the init scale, so the unmixed model
    never acquires the specialized features and loses more of D_post after fine-tuning.
    """
    return SimConfig(
        task=TaskConfig(
            n=8, k=2,
            sigma_inv=(6.0, 5.5, 5.0, 4.5),
            sigma_inc_pre=(1.0, 0.8),
            sigma_inc_post=(2.0, 1.8),
            sigma_inc_ft=(0.2, 0.0),
            beta=4.0,
            basis="identity",
            seed=0,
        ),
        model=ModelConfig(width=None, init="paper", T=10.0),
        stages=StagesConfig(
            pre=PreConfig(mix_fraction=0.5, steps=600, lr=0.01),
            post=PostConfig(steps=50, lr=0.01, reg=0.0, replay=0.0, dropout=0.0),
            ft=FtConfig(steps=200, lr=0.01),
        ),
        precision="float64",
    )


def load_study_config(cls: type[_S], path: str | Path | None, overrides: list[str] | None = None) -> _S:
    """Load a study config (frontier, compute-matched) with a ``base`` SimConfig path.

    Keys in the class's ``RENAMED`` mapping (old dotted path -> new) are refused naming the new
    key. A relative ``base`` is resolved against the study file's folder when it exists there.
    """
    data = apply_overrides({} if path is None else load_mapping(path), overrides)
    reject_renamed(data, getattr(cls, "RENAMED", {}))
    cfg = from_dict(cls, data)
    base = getattr(cfg, "base")
    if base is not None and path is not None and not Path(base).is_absolute():
        candidate = Path(path).parent / base
        if candidate.is_file():
            cfg = from_dict(cls, dict(to_dict(cfg), base=str(candidate)))
    return cfg


def study_base_config(base: str | None, overrides: tuple[str, ...] | list[str]) -> SimConfig:
    """The SimConfig a study starts from: ``base`` file (or the default task) + its ``set`` list."""
    return load_config(base, list(overrides)) if base is not None else default_config().replace(list(overrides))
