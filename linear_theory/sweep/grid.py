"""Grid axes of a theory sweep: ``--grid FIELD=SPEC`` parsing and field resolution.

SPEC is ``a:b:n`` (n linearly spaced values from a to b), ``log:a:b:n`` (log-spaced, a > 0) or
a comma list ``v1,v2,...``. FIELD is a dotted path of :class:`linear_theory.config.SimConfig`
(``stages.post.steps``), a suffix of one (``post.steps``) or a unique leaf name (``mix_fraction``,
``beta``, ``T``). Tuple fields (``task.sigma_inc_post``) take a scalar that is broadcast to all
their entries. Every value is validated against the config's own range checks, so a bad axis
fails before any compute with the field's own message (and its full path). A renamed field
(:data:`linear_theory.config.RENAMED`: ``alpha``, ``pre.alpha``, ``stages.pre.alpha``) is
refused naming the new one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from early_exposure.configs import join_path, parse_override
from early_exposure.errors import ConfigError
from linear_theory.config import RENAMED, SimConfig

__all__ = ["Axis", "parse_grid", "scalar_fields", "resolve_field", "apply_values", "MAX_POINTS"]

#: refuse grids beyond this many points (a typo like 1e9 should not start a week-long job)
MAX_POINTS = 10_000_000


@dataclass(frozen=True)
class Axis:
    """One grid axis: canonical dotted ``path``, its ``values`` and how they were spaced."""

    path: str
    values: tuple[Any, ...]
    spacing: str  # "linear", "log" or "list"

    @property
    def short(self) -> str:
        """Column-friendly short name: the leaf (``beta``), or ``stage.leaf`` when ambiguous."""
        return self.path.split(".")[-1] if self.path.count(".") < 2 else ".".join(self.path.split(".")[-2:])


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_leaves(v, p + "."))
        else:
            out[p] = v
    return out


def scalar_fields(cfg: SimConfig) -> dict[str, Any]:
    """Every sweepable leaf of ``cfg`` (dotted path -> current value)."""
    return _leaves(cfg.to_dict())


def resolve_field(name: str, cfg: SimConfig) -> str:
    """``mix_fraction`` -> ``stages.pre.mix_fraction``; ``post.steps`` -> ``stages.post.steps``; exact paths pass."""
    fields = scalar_fields(cfg)
    if name in fields:
        return name
    hits = [p for p in fields if p.endswith("." + name)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ConfigError(f"--grid {name}", f"ambiguous field; use one of {', '.join(sorted(hits))}")
    for old, new in RENAMED.items():
        if old == name or old.endswith("." + name):
            raise ConfigError(f"--grid {name}", f"renamed to {new.split('.')[-1]} ({new})")
    raise ConfigError(f"--grid {name}", f"unknown config field; sweepable fields: {', '.join(sorted(fields))}")


def _num(field: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"--grid {field}", f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"--grid {field}", f"must be finite, got {text!r}")
    return v


def _count(field: str, text: str) -> int:
    try:
        c = int(text)
    except ValueError:
        raise ConfigError(f"--grid {field}", f"number of points must be an integer, got {text!r}") from None
    if c < 1:
        raise ConfigError(f"--grid {field}", f"empty range: number of points must be >= 1, got {c}")
    return c


def _spaced(field: str, spec: str) -> tuple[list[float], str]:
    parts = spec.split(":")
    log = parts[0] == "log"
    if log:
        parts = parts[1:]
    if len(parts) != 3:
        raise ConfigError(f"--grid {field}", f"range must be a:b:n or log:a:b:n, got {spec!r}")
    a, b, c = _num(field, parts[0]), _num(field, parts[1]), _count(field, parts[2])
    if b < a:
        raise ConfigError(f"--grid {field}", f"reversed range {spec!r}: need a <= b (list values for a custom order)")
    if c > 1 and a == b:
        raise ConfigError(f"--grid {field}", f"empty range {spec!r}: a == b with {c} points")
    if log:
        if a <= 0:
            raise ConfigError(f"--grid {field}", f"log range needs a > 0, got {a:g}")
        return list(np.geomspace(a, b, c)), "log"
    return list(np.linspace(a, b, c)), "linear"


def _cast(field: str, path: str, v: Any, current: Any, spaced: bool) -> Any:
    """Cast a parsed value to the type of the field it replaces (ints stay ints).

    Spaced ranges over integer fields are rounded; a listed non-integer for one is refused.
    """
    if isinstance(current, bool):
        raise ConfigError(f"--grid {field}", "boolean fields cannot be swept")
    if isinstance(current, int) or (current is None and path.endswith(("width", "ideal_rank"))):
        if isinstance(v, (str, bool)) or v is None:
            raise ConfigError(f"--grid {field}", f"expected an integer, got {v!r}")
        f = float(v)
        if not spaced and f != int(f):
            raise ConfigError(f"--grid {field}", f"expected an integer, got {v!r}")
        return int(round(f))
    if isinstance(current, (float, list)):
        if isinstance(v, (str, bool)) or v is None:
            raise ConfigError(f"--grid {field}", f"expected a number, got {v!r}")
        return float(v)
    if isinstance(current, str):
        return str(v)
    return v


def parse_axis(item: str, cfg: SimConfig) -> Axis:
    """One ``FIELD=SPEC`` -> :class:`Axis` (values validated against the config)."""
    if "=" not in item:
        raise ConfigError("--grid", f"expected FIELD=SPEC, got {item!r}")
    field, spec = (s.strip() for s in item.split("=", 1))
    if not field or not spec:
        raise ConfigError("--grid", f"expected FIELD=SPEC with both parts non-empty, got {item!r}")
    path = resolve_field(field, cfg)
    if path in ("task.n", "task.k"):
        raise ConfigError(f"--grid {field}", "n and k change the lengths of the sigma_* lists; "
                          "sweep them with one config file per (n, k) (width can be swept)")
    current = scalar_fields(cfg)[path]
    numeric = (isinstance(current, (int, float, list)) and not isinstance(current, bool)) or (
        current is None and path.endswith(("width", "ideal_rank")))
    if ":" in spec and not spec.startswith("[") and numeric:
        raw, spacing = _spaced(field, spec)
    else:
        items = [s.strip() for s in spec.strip("[]").split(",") if s.strip()]
        if not items:
            raise ConfigError(f"--grid {field}", "empty value list")
        raw = [parse_override(f"x={s}")[1] for s in items]
        spacing = "list"
    values = [_cast(field, path, v, current, spacing != "list") for v in raw]
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid {field}", f"values must be distinct (after rounding to the field's type), got {values}")
    for v in values:  # each value must be valid on its own (the field's own range check)
        apply_values(cfg, {path: v})
    return Axis(path=path, values=tuple(values), spacing=spacing)


def parse_grid(items: list[str], cfg: SimConfig) -> list[Axis]:
    """All ``--grid`` items -> axes (distinct fields, at most :data:`MAX_POINTS` points)."""
    if not items:
        raise ConfigError("--grid", "give at least one axis, e.g. --grid mix_fraction=0:1:64")
    axes = [parse_axis(it, cfg) for it in items]
    paths = [a.path for a in axes]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    if dup:
        raise ConfigError(f"--grid {dup[0]}", "field given twice; merge the values into one axis")
    total = math.prod(len(a.values) for a in axes)
    if total > MAX_POINTS:
        raise ConfigError("--grid", f"{total} grid points exceed the limit {MAX_POINTS}; split with --shard or coarsen")
    return axes


def apply_values(cfg: SimConfig, values: dict[str, Any]) -> SimConfig:
    """``cfg`` with dotted-path ``values`` set (tuple fields broadcast a scalar), validated.

    Uses ``dataclasses.replace`` along the path, so every touched dataclass re-runs its own
    ``__post_init__`` validation (and SimConfig its cross-field checks); a failing check names
    the field's full path (``stages.pre.mix_fraction``), as a config file would.
    """
    for path, v in values.items():
        v = v.item() if isinstance(v, np.generic) else v
        cfg = _replace_path(cfg, path.split("."), v)
    return dataclasses.replace(cfg)  # re-validate the whole config once more


def _replace_path(obj: Any, keys: list[str], v: Any, prefix: str = "") -> Any:
    cur = getattr(obj, keys[0])
    if len(keys) > 1:
        new = _replace_path(cur, keys[1:], v, join_path(prefix, keys[0]))
    elif isinstance(cur, tuple):
        new = tuple(float(v) for _ in cur)
    else:
        new = v
    try:
        return dataclasses.replace(obj, **{keys[0]: new})
    except ConfigError as exc:  # the section's check names the field relative to the section
        raise ConfigError(join_path(prefix, exc.field), exc.message) from None
