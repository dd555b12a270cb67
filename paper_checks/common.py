"""Settings and small helpers shared by the frontier, lambda and matched checks.

The thresholds below are fixed in code before any confirmatory run (never tuned on results);
each states its reason. LM losses are in nats; the theory side's squared losses have no
natural unit, so there a threshold is the same 1% read relative to the loss scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.errors import ConfigError
from early_exposure.stats import Interval

#: A meaningful LM effect, in nats: 1% of a 4-nat loss. 4 nats is the D_post / D_ft loss
#: scale of the project's LM testbeds after post-training (the paper's own 135M losses are
#: ~2.2 nats, where 0.04 is ~2%, so the bar is if anything strict). Used as the minimum gap
#: of the frontier claims, the minimum L_ret / L_im change of the lambda studies and the
#: minimum retention benefit at matched L_im. Absolute, so it cannot shrink with a
#: near-zero baseline.
MEANINGFUL_NATS = 0.04
#: (b) "L_im nearly flat": equivalence margin of the TOST on the L_im change over the lambda
#: range, in nats; the same 1%-of-4-nats bar: a change smaller than a meaningful effect is flat.
FLAT_MARGIN_NATS = 0.04
#: (b) needs at least this many mixing fractions (a line through two points has no check on
#: its shape; the paper uses five).
MIN_LAMBDAS_FLAT = 3
#: (c) precondition: the compute-matched lambda = 0 run (one pass over D_post in stage 2) must
#: reach this share of the L_im gain early-stopped post-training reaches from the same
#: theta_pre, i.e. be within 10% of converged. Below it, lambda = 0 loses for lack of
#: stage-2 steps, not for its allocation, and the testbed cannot pose (c).
PRECONDITION_SHARE = 0.9
#: The most a normalised hypervolume difference can be: the box is [0, 1]^2 and the
#: reference point (1.1, 1.1), so each area lies in [0, 1.21].
HV_RANGE = 1.21
#: Fronts that do not overlap in the first loss have no gap at matched loss; there the claim
#: is judged on the normalised area difference, which must then be at least this (about 4% of
#: the largest possible area, a fixed bar that does not scale with the baseline's area).
MIN_HV_GAIN = 0.05


@dataclass(frozen=True)
class CheckOptions:
    """Statistical settings of every check (recorded in the report)."""

    min_seeds: int = 5          # fewer independent seeds -> INCONCLUSIVE on noisy data (issue 22: >= 5 per arm)
    n_boot: int = 1000          # bootstrap replicates (seed x document bootstrap)
    level: float = 0.95         # two-sided interval level; tests at alpha = 1 - level
    min_effect: float = 0.01    # theory side (no units): meaningful = this fraction of the loss scale
    flat_frac: float = 0.5      # unused since (b) became a TOST; kept for old settings files
    seed: int = 0               # bootstrap RNG seed
    meaningful_nats: float = MEANINGFUL_NATS
    flat_margin_nats: float = FLAT_MARGIN_NATS
    precondition_share: float = PRECONDITION_SHARE

    def __post_init__(self) -> None:
        if self.min_seeds < 1:
            raise ConfigError("--min-seeds", f"must be >= 1, got {self.min_seeds}")
        if self.n_boot < 20:
            raise ConfigError("--n-boot", f"must be >= 20, got {self.n_boot}")
        if not 0.5 < self.level < 1:
            raise ConfigError("--level", f"must be in (0.5, 1), got {self.level}")

    @property
    def alpha(self) -> float:
        return 1 - self.level


def fmt(iv: Interval, digits: int = 3) -> str:
    if not np.isfinite(iv.point):
        return "undefined"
    if iv.n_boot == 0 and iv.n_valid == 0:  # an exact value or a point estimate alone
        return f"{iv.point:.{digits}g}"
    return f"{iv.point:.{digits}g} [{iv.lo:.{digits}g}, {iv.hi:.{digits}g}]"


def usable(df: pd.DataFrame) -> pd.DataFrame:
    return df.loc[~df["diverged"].astype(bool)]


def meaningful(side: str, scale: float, opts: CheckOptions) -> float:
    """The minimum meaningful effect: ``opts.meaningful_nats`` on the LM side; on the theory
    side (unitless squared losses) ``opts.min_effect`` times the loss scale."""
    return opts.meaningful_nats if side == "lm" else opts.min_effect * abs(scale)


def p_fields(p: float, sign_flip: float) -> dict[str, Any]:
    """The p values every judged check records: ``p`` (the test its PASS rests on, adjusted
    later within the run set's family) and the exact sign-flip p beside it."""
    return {"p": None if not np.isfinite(p) else float(p),
            "sign_flip_p": None if not np.isfinite(sign_flip) else float(sign_flip)}
