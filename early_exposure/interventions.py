"""The registry of stage-2 interventions: what post-training can add on top of (or instead of)
early exposure, and everything each one means to the rest of the tool.

One :class:`Intervention` entry gives an intervention its sweep axis (the field of the LM's
``PostSetting``: type, default, range, label; "on" when its value is non-zero / true), its
method suffix in the frontier table (``mixed+replay``), its place in the canonical suffix
order (the registry's order), its colours in the figures, and the paper claims that read it
(``checks``: claim kind -> the paper's section; the claim texts are built in
``paper_checks``). The LM's post axes (:mod:`lm_experiments.config.post_axes`), the frontier
vocabulary (:mod:`early_exposure.frontier`), the figures and the checks all derive from
:data:`INTERVENTIONS`; adding an intervention is one entry here plus its wiring in the LM
stage function (``lm_experiments.protocol.stages.run_post``).

Claim kinds (``paper_checks.checks_frontier``):

- ``on_top``: ``mixed+X`` improves the frontier over ``mixed`` (Sec. 4.4);
- ``alone``: ``unmixed+X`` shifts the frontier of ``unmixed`` (App. B.2: X alone helps);
- ``alone_less``: ``unmixed+X`` improves the frontier less than ``mixed`` (App. B.2);
- ``mixing_within``: mixing improves the frontier among ``X`` runs, ``unmixed+X`` vs ``mixed+X`` (App. B.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the two pretraining arms every method name starts with
BASE_METHODS: tuple[str, ...] = ("unmixed", "mixed")


@dataclass(frozen=True)
class Intervention:
    """One stage-2 intervention (see the module docstring)."""

    name: str                       # the sweep axis and the suffix's word: "replay"
    title: str                      # in claim texts and legends: "replay", "LoRA"
    axis_type: type                 # float | bool | int: the axis value type
    default: Any                    # the value that means "off"
    label: str                      # run label format, e.g. "r={:g}"
    colours: tuple[str, str]        # (unmixed+X, mixed+X) in the figures
    checks: dict[str, str] = field(default_factory=dict)  # claim kind -> the paper's section
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    @property
    def suffix(self) -> str:
        return f"+{self.name}"


#: every stage-2 intervention, in the canonical order of method suffixes
INTERVENTIONS: tuple[Intervention, ...] = (
    Intervention("replay", "replay", float, 0.0, "r={:g}", ("tab:olive", "tab:green"),
                 {"on_top": "Section 4.4, Figures 4-5", "alone": "Appendix B.2, Figure 6",
                  "alone_less": "Appendix B.2, Figure 6"},
                 lo=0.0, hi=1.0, hi_open=True),
    Intervention("dropout", "dropout", float, 0.0, "p={:g}", ("tab:brown", "tab:orange"),
                 {"on_top": "Section 4.4, Figures 4-5", "alone": "Appendix B.2, Figure 6",
                  "alone_less": "Appendix B.2, Figure 6"},
                 lo=0.0, hi=1.0, hi_open=True),
    Intervention("lora", "LoRA", bool, False, "lora={}", ("dimgray", "mediumpurple"),
                 {"mixing_within": "Appendix B.3, Figure 7"}),
)


def registry() -> tuple[Intervention, ...]:
    """The registry as it is now (tests may extend :data:`INTERVENTIONS`)."""
    return INTERVENTIONS


def suffixes() -> tuple[str, ...]:
    """Method suffixes in canonical order (``+replay``, ``+dropout``, ``+lora``)."""
    return tuple(i.suffix for i in registry())


def by_name(name: str) -> Intervention:
    for i in registry():
        if i.name == name:
            return i
    raise KeyError(f"no stage-2 intervention {name!r}; registered: {[i.name for i in registry()]}")


def method_suffix(on: set[str] | frozenset[str]) -> str:
    """The suffix of a run whose interventions ``on`` (names) are active, in canonical order."""
    return "".join(i.suffix for i in registry() if i.name in on)


def colours() -> dict[str, str]:
    """Method -> colour: ``unmixed`` black and ``mixed`` purple as in the paper, then each
    intervention's pair."""
    out = {"unmixed": "black", "mixed": "tab:purple"}
    for i in registry():
        out[f"unmixed{i.suffix}"], out[f"mixed{i.suffix}"] = i.colours
    return out


__all__ = ["BASE_METHODS", "Intervention", "INTERVENTIONS", "registry", "suffixes", "by_name", "method_suffix",
           "colours"]
