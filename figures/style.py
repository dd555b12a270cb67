"""One look for every figure (docs/figures.md): the style, the axis labels with their
units, one colour per arm, the uncertainty convention and the file-name pattern.

- Style: :data:`STYLE` (matplotlib rcParams: sizes readable at page width), applied to every
  entry function through :func:`styled` (``matplotlib.style.context``).
- Losses: :func:`loss_label` spells L_pre, L_im, L_ret, L_ft (and Delta) the same way
  everywhere, with a short description and the unit (:data:`UNITS`: nats/token on the LM
  side, the expected squared error on the theory side).
- Colours: :func:`arm_colour` (unmixed black, mixed purple, each intervention's pair; several
  mixed lambdas in shades of the arm's colour), :func:`series_colours` for other series.
- Uncertainty: one convention, :func:`seed_band`: one thin line per seed, their mean thick and
  a 95% Student-t band over seeds (:func:`t_band`, :func:`early_exposure.stats.t_interval`).
- File names: :func:`fig_name` -> ``<source>_<family>_<name>`` (:data:`NAME_RE`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np

from early_exposure import interventions
from early_exposure.stats import t_interval

#: rcParams of every figure: text readable when a figure is shrunk to page width
STYLE: dict[str, Any] = {
    "font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 10,
    "ytick.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 12, "lines.linewidth": 2.0,
    "lines.markersize": 5, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "savefig.dpi": 150, "figure.dpi": 100,
}
#: line widths / opacities of the uncertainty convention
LW_SEED, LW_MAIN, ALPHA_SEED, ALPHA_BAND, LEVEL = 0.8, 2.2, 0.45, 0.2, 0.95

#: the unit of a loss, by side (LM: mean token cross-entropy, natural log)
UNITS = {"lm": "nats/token", "theory": "squared error"}
#: a loss axis label carries one of these (tests/test_figures_style.py)
UNIT_RE = re.compile(r"\((" + "|".join(re.escape(u) for u in UNITS.values()) + r")\)")
#: an axis label that names a loss (it must then carry a unit: :func:`missing_units`)
LOSS_RE = re.compile(r"loss|L_\{|L_[a-z]|\\Delta|Delta", re.IGNORECASE)
#: symbol and short description of each loss (the paper's names: L_pre on D_pre, L_im on D_post
#: right after post-training, L_ret on D_post and L_pre on D_pre after fine-tuning, L_ft on D_ft)
LOSSES = {"L_pre": ("L_{pre}", "retained pretraining loss"),
          "L_im": ("L_{im}", "immediate post-training loss"),
          "L_ret": ("L_{ret}", "retained post-training loss"),
          "L_ft": ("L_{ft}", "fine-tuning loss"),
          "Delta": ("\\Delta = L_{ret} - L_{im}", "forgetting")}


def unit_note(side: str) -> str:
    """The caption sentence naming the loss unit of ``side``."""
    if str(side).startswith("theory"):
        return "Losses are the linear model's expected squared error."
    return "Losses in nats/token (mean token cross-entropy, natural log)."


def unit(side: str) -> str:
    """The loss unit of ``side`` ("lm" or "theory"; anything else is read as LM)."""
    return UNITS["theory" if str(side).startswith("theory") else "lm"]


def loss_label(name: str, side: str, short: bool = False) -> str:
    """``$L_{ret}$ post-training loss after fine-tuning (nats/token)``; ``short`` leaves out
    the description."""
    sym, desc = LOSSES[name]
    return f"${sym}$ ({unit(side)})" if short else f"${sym}$ {desc} ({unit(side)})"


def missing_units(fig: plt.Figure) -> list[str]:
    """The axis labels of ``fig`` (colour bars included) that name a loss without a unit."""
    labels = [lab for ax in fig.axes for lab in (ax.get_xlabel(), ax.get_ylabel())]
    return [lab for lab in labels if lab and LOSS_RE.search(lab) and not UNIT_RE.search(lab)]


LAMBDA = "mixing fraction $\\lambda$"

#: method -> colour: unmixed black, mixed purple as in the paper, then each intervention's pair
COLOURS = interventions.colours()


def arm_colour(method: str, lam: float | None = None, lams: Sequence[float] = ()) -> Any:
    """The colour of an arm; a mixed arm pretrained at several lambdas (``lams``) gets a
    shade of its method's colour, darker for a larger lambda."""
    base = COLOURS.get(method, "tab:gray")
    others = sorted({float(x) for x in lams if x})
    if lam is None or len(others) < 2 or not lam:
        return base
    rgb = np.asarray(mcolors.to_rgb(base))
    t = 0.45 + 0.55 * others.index(float(lam)) / (len(others) - 1) if float(lam) in others else 1.0
    return tuple(1 - t * (1 - rgb)) if rgb.sum() > 0 else tuple(np.full(3, 0.55 * (1 - t)))


def series_colours(n: int) -> list[Any]:
    """``n`` distinct colours for series that are not arms (fine-tuning learning rates)."""
    cmap = plt.get_cmap("viridis")
    return [cmap(x) for x in (np.linspace(0.05, 0.8, n) if n > 1 else [0.35])]


F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Run a figure function under :data:`STYLE`."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with plt.style.context(STYLE):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def t_band(ys: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``ys`` (rows = seeds): mean and the two-sided Student-t interval over
    the seeds with a finite value (NaN where fewer than two)."""
    ivs = [t_interval(col, level=level) for col in np.asarray(ys, dtype=np.float64).T]
    return tuple(np.array([getattr(iv, k) for iv in ivs]) for k in ("point", "lo", "hi"))  # type: ignore[return-value]


def seed_band(ax: plt.Axes, x: np.ndarray, ys: np.ndarray, colour: Any, label: str, ls: str = "-",
              marker: str | None = "o", thin: bool = True) -> None:
    """The uncertainty convention: one thin line per seed (rows of ``ys``; ``thin`` False when
    the caller drew them on their own x), the mean over seeds thick (labelled) and the 95%
    Student-t band over seeds shaded."""
    ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    for y in ys if thin else ():
        ax.plot(x, y, color=colour, lw=LW_SEED, alpha=ALPHA_SEED, ls=ls)
    m, lo, hi = t_band(ys)
    ax.plot(x, m, color=colour, lw=LW_MAIN, ls=ls, marker=marker, ms=4, label=label)
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, color=colour, alpha=ALPHA_BAND, lw=0)


def band_note(n_seeds: Sequence[int] | int) -> str:
    """The caption sentence of the convention, with the number of seeds."""
    ns = sorted({int(n_seeds)} if isinstance(n_seeds, (int, np.integer)) else {int(v) for v in n_seeds})
    n = ", ".join(map(str, ns)) or "?"
    return (f"Thin lines: one seed each; thick line: mean over the {n} seeds; shaded band: 95% Student-t "
            f"interval of the mean over seeds (n = {n}).")


#: the one file-name pattern: <source>_<family>_<name>.<ext>, lowercase, fields joined by "_"
#: and hyphens inside a field (source: "theory" or "lm-<preset>")
NAME_RE = re.compile(r"^(theory|lm-[a-z0-9-]+)_[a-z0-9-]+_[a-z0-9-]+\.(png|pdf)$")


def slug(s: str) -> str:
    """Lowercase, every run of other characters one hyphen (``general>flan_post`` ->
    ``general-flan-post``)."""
    return re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-") or "x"


def fig_name(source: str, family: str, name: str) -> str:
    """``<source>_<family>_<name>`` with each field slugged (:data:`NAME_RE` without the
    extension)."""
    return "_".join(slug(p) for p in (source, family, name))
