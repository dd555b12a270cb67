"""The post-training sweep axes: one definition, :class:`PostSetting`, whose fields ARE the axes.

The grid and extras of ``post`` (:class:`lm_experiments.config.PostSection`), the run keys
(:mod:`lm_experiments.protocol.plan`), the frontier's ``post_hparams``, the run labels and the method
names all read the axes from here. An axis that is a stage-2 intervention (replay, dropout,
LoRA) comes from its entry in :mod:`early_exposure.interventions`; the others are listed in
:data:`_BASE_AXES` (default, range, label in :func:`_axis`). An optimizer axis (``optim=True``: it
overrides the ``post.optim`` field of the same name) defaults to ``None``, "not swept": the run
uses ``post.optim``'s value, which the run key holds through the section, and the setting's
identity (:meth:`PostSetting.as_dict`) leaves the axis out, so a new axis keeps the ids of the
runs that do not sweep it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any

from early_exposure import interventions
from early_exposure.configs import coerce as coerce_value
from early_exposure.configs import check_range, join_path
from early_exposure.errors import ConfigError


def _axis(default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, label: str, suffix: str | None = None, optim: bool = False) -> Any:
    """A post-training sweep axis: its default, allowed range, label format, method suffix
    (added to the method name when the value is non-zero / true) and whether it overrides
    the optimizer field of the same name."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
                                            "label": label, "suffix": suffix, "optim": optim})


#: the axes that are not stage-2 interventions: (name, type, field)
_BASE_AXES: tuple[tuple[str, Any, Any], ...] = (
    ("lr", float | None, _axis(None, lo=0.0, lo_open=True, label="lr={:g}", optim=True)),
    ("batch_size", int, _axis(16, lo=1, hi=2**20, label="b={}")),  # hi: as every batch size (config.MAX_BATCH)
    ("weight_decay", float | None, _axis(None, lo=0.0, label="wd={:g}", optim=True)),
)
#: the order of the axes that existed before the registry (it fixes the sweep grid's order, hence
#: plan order); axes added later (new interventions) follow in registry order
_AXIS_ORDER = ("lr", "dropout", "batch_size", "replay", "lora", "weight_decay")


def _axes() -> list[tuple[str, Any, Any]]:
    axes = list(_BASE_AXES) + [
        (i.name, i.axis_type, _axis(i.default, lo=i.lo, hi=i.hi, lo_open=i.lo_open, hi_open=i.hi_open,
                                    label=i.label, suffix=i.suffix)) for i in interventions.registry()]
    rank = {n: k for k, n in enumerate(_AXIS_ORDER)}
    return sorted(axes, key=lambda a: rank.get(a[0], len(rank)))  # stable: new axes in registry order


class _PostSettingMethods:
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            m = f.metadata
            if getattr(self, f.name) is not None and (m["lo"] is not None or m["hi"] is not None):
                check_range(f.name, getattr(self, f.name), m["lo"], m["hi"], lo_open=m["lo_open"],
                            hi_open=m["hi_open"])

    def as_dict(self) -> dict[str, Any]:
        """``{axis: value}`` of the axes that are set (the frontier's ``post_hparams``)."""
        return {a: getattr(self, a) for a in POST_AXES if getattr(self, a) is not None}

    def optim_overrides(self) -> dict[str, Any]:
        """The axes that override ``post.optim`` fields, ``{field: value}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["optim"] and getattr(self, f.name) is not None}

    def label(self) -> str:
        """Short label, e.g. ``lr=0.002 p=0 b=16 r=0.01 lora`` (a false boolean axis is left out)."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, bool):
                if v:
                    parts.append(f.name)
            else:
                parts.append(f.metadata["label"].format(v))
        return " ".join(parts)

    def active(self, name: str) -> bool:
        """Whether stage-2 intervention ``name`` is on in this setting (non-zero / true)."""
        return bool(getattr(self, name))

    def method_suffix(self) -> str:
        """The suffixes of the active interventions in the registry's canonical order
        (``+replay``, ``+dropout``, ``+lora``)."""
        return interventions.method_suffix({i.name for i in interventions.registry() if self.active(i.name)})


#: One point of the post-training sweep. Its fields ARE the sweep axes: ``lr``, ``batch_size``
#: and ``weight_decay`` (``lr``/``weight_decay`` override ``post.optim``; ``None``: not swept,
#: ``post.optim``'s value) and one axis per stage-2 intervention of the registry
#: (:mod:`early_exposure.interventions`): ``dropout`` is real dropout in the network (LoRA runs:
#: the LoRA dropout, paper Table 9), ``replay`` the fraction of D_pre blocks mixed into
#: post-training (paper: 1%), ``lora`` low-rank adapters.
PostSetting = dataclasses.make_dataclass("PostSetting", _axes(), bases=(_PostSettingMethods,), frozen=True)
PostSetting.__module__ = __name__  # pickled by reference (run records travel to Ray workers)
PostSetting.__doc__ = "One point of the post-training sweep; its fields are the sweep axes (module docstring)."


#: the post-training sweep axes, in order (the fields of :class:`PostSetting`)
POST_AXES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PostSetting))
#: axis -> its value type (``float | None`` -> ``float``: a listed value is never null)
_AXIS_TYPES: dict[str, Any] = {a: next(t for t in typing.get_args(tp) if t is not type(None)) if typing.get_args(tp)
                               else tp for a, tp in typing.get_type_hints(PostSetting).items()}


def axis_values(path: str, mapping: dict[str, Any], *, lists: bool) -> dict[str, Any]:
    """Check a ``{axis: value(s)}`` mapping against :data:`POST_AXES` and coerce its types."""
    out = {}
    for name, value in mapping.items():
        if name not in POST_AXES:
            raise ConfigError(join_path(path, name), f"unknown post-training axis; axes: {', '.join(POST_AXES)}")
        tp = tuple[_AXIS_TYPES[name], ...] if lists else _AXIS_TYPES[name]
        out[name] = coerce_value(tp, value, join_path(path, name))
    return out


__all__ = ["PostSetting", "POST_AXES", "axis_values"]
