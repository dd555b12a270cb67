"""Strict mapping between config files (YAML/JSON) and frozen dataclasses.

Rules: unknown keys and wrong types are errors naming the field; numbers must be
finite; files and ``--set section.field=value`` overrides are read with YAML 1.2 number
rules (``1e-3`` is a float, as YAML 1.2 and JSON mean, not the string PyYAML's YAML 1.1
would make of it). Range checks live in each dataclass's ``__post_init__`` and name the
field *relative to the section* (``check_int("steps", ...)``); :func:`from_dict` prefixes
the section's path, so the same section reads ``stages.pre.steps`` in one config and
``pre.steps`` in another, and no dataclass hard-codes where it is mounted.

Example::

    @dataclass(frozen=True)
    class Stage:
        steps: int = 100
        lr: float = 0.1

        def __post_init__(self) -> None:
            check_int("steps", self.steps, 1)

    from_dict(Stage, {"steps": 0}, path="stages.pre")   # ConfigError "stages.pre.steps: ..."
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import re

import yaml

from early_exposure.errors import ConfigError

T = TypeVar("T")


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule (``1e-3``, ``2E5`` are numbers)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats; every config of the project is read by it."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file into a dict (``ConfigError`` if missing or malformed)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("--config", f"{p} is a directory; give a YAML or JSON file (e.g. one of configs/)")
    if not p.is_file():
        raise ConfigError("--config", f"file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("--config", f"{p} is not a UTF-8 text file (binary or another encoding); "
                          "give a YAML or JSON config") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("--config", f"cannot parse {p}: {exc}".splitlines()[0]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{p} must hold a mapping at top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"stages.post.lr=1e-3"`` -> (["stages", "post", "lr"], 0.001)."""
    if "=" not in item:
        raise ConfigError("--set", f"expected KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError("--set", f"empty key in {item!r}")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a deep copy of ``data`` with each ``KEY=VALUE`` override applied."""
    out = json.loads(json.dumps(data))
    for item in overrides or []:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(keys), f"cannot set a field inside non-mapping {k!r}")
            node = nxt
        node[keys[-1]] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type hint ``tp`` (with the few safe coercions); ``path`` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, path)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(path, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping (section), got {type(value).__name__}")
        return from_dict(tp, value, path=path)
    if origin in (tuple, list):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(path, f"expected {len(args)} values, got {len(value)}")
            return tuple(coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        return tuple(coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                raise ConfigError(path, f"expected an integer, got {value!r}")
            value = int(value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(path, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(path or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = path or "config"
        raise ConfigError(
            f"{path + '.' if path else ''}{unknown[0]}",
            f"unknown key in {where}; allowed keys: {', '.join(sorted(fields))}",
        )
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        if isinstance(value, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
            # a partial section takes its other values from the enclosing section's default
            # (e.g. pretraining's own optimizer defaults), not from the section class's
            value = {**to_dict(default), **value}
        kwargs[name] = coerce(hints[name], value, f"{path + '.' if path else ''}{name}")
    missing = [f.name for f in fields.values()
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        where = f"{path + '.' if path else ''}{missing[0]}"
        raise ConfigError(where, f"required {'section' if dataclasses.is_dataclass(hints[missing[0]]) else 'field'}"
                          f" is missing; add {missing[0]}: ... {'in ' + path if path else 'at top level'}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a __post_init__ check names the field relative to this section
        raise ConfigError(join_path(path, exc.field), exc.message) from None


def join_path(prefix: str, field: str) -> str:
    """``join_path("stages.pre", "lr") == "stages.pre.lr"``; index paths (``[2]``) attach directly."""
    if not prefix:
        return field
    if not field:
        return prefix
    return prefix + field if field.startswith("[") else f"{prefix}.{field}"


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (tuples become lists), the inverse of :func:`from_dict`."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check_range(path: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ConfigError unless lo <(=) value <(=) hi; message names the allowed range."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ConfigError(path, f"must be in {rng}, got {value!r}")


def check_int(path: str, value: int, lo: int, hi: int | None = None) -> None:
    """Raise ConfigError unless ``value`` is an integer in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(path, f"must be an integer {rng}, got {value!r}")


def check_list(path: str, values: tuple[Any, ...], lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False, distinct: bool = True) -> None:
    """A non-empty list (of distinct values unless ``distinct=False``), each in the range."""
    if len(values) == 0:
        raise ConfigError(path, "must list at least one value")
    if distinct and len(set(values)) != len(values):
        raise ConfigError(path, f"values must be distinct, got {list(values)}")
    if lo is None and hi is None:
        return
    for i, v in enumerate(values):
        check_range(f"{path}[{i}]", v, lo, hi, lo_open=lo_open, hi_open=hi_open)


def check_output_dir(flag: str, path: str | Path) -> Path:
    """``path`` can hold (or become) an output directory: raise ConfigError naming ``flag`` otherwise.

    Run by every command line on its output locations before any work, so a path under a
    regular file or in a read-only place fails in one line up front instead of after the
    computation. Nothing is created here.
    """
    p = Path(path)
    if str(path).strip() == "":
        raise ConfigError(flag, "empty path; give a directory")
    if p.exists():
        if not p.is_dir():
            raise ConfigError(flag, f"{p} exists and is not a directory; give a directory path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(flag, f"{p} is not writable; give a directory you can write to")
        return p
    for anc in p.absolute().parents:
        if os.path.lexists(anc):
            if not anc.is_dir():
                raise ConfigError(flag, f"cannot create {p}: {anc} is a file, not a directory; "
                                  f"give a {flag} path outside it")
            if not os.access(anc, os.W_OK | os.X_OK):
                raise ConfigError(flag, f"cannot create {p}: {anc} is not writable; "
                                  "give a directory you can write to")
            break
    return p


def check_output_file(flag: str, path: str | Path) -> Path:
    """``path`` can be written as a file (its folder is a valid output directory)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(flag, f"{p} is a directory; give a file path")
    parent = p.absolute().parent
    if os.path.lexists(parent) and not parent.is_dir():
        raise ConfigError(flag, f"cannot write {p}: {parent} is a file, not a directory; give a {flag} path outside it")
    check_output_dir(flag, parent)
    return p


def check_input_dir(flag: str, path: str | Path) -> Path:
    """``path`` is an existing, readable directory (ConfigError naming ``flag`` otherwise)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(flag, f"directory not found: {p}")
    if not p.is_dir():
        raise ConfigError(flag, f"{p} is a file, not a directory; give the directory that holds the results")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ConfigError(flag, f"{p} is not readable")
    return p
