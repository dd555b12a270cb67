"""The frontier table shared by the theory and LM halves, and its vocabulary.

One row per (upstream checkpoint x fine-tuning setting). Both halves write it with
:func:`write_frontier`, which validates columns and types, so figures and checks can
treat ``side=theory`` and ``side=lm`` alike.

The protocol's words, used by both halves in configs, tables and figures:

- stages ``pre`` (pretraining on D_pre, a fraction ``mix_fraction`` of D_post mixed in:
  the paper's lambda in Sec. 4 and alpha in Appendix C), ``post`` (post-training on D_post),
  ``ft`` (fine-tuning on D_ft);
- the four losses of the table (:data:`LOSS_COLUMNS`): ``L_im`` = L(theta_post; D_post),
  ``L_ret`` = L(theta_ft; D_post), ``L_ft`` = L(theta_ft; D_ft), ``L_pre`` = L(theta_ft; D_pre);
- the two views of the frontier (:data:`VIEWS`) and the arm of a method (:func:`select_arm`);
- method names: ``unmixed`` / ``mixed`` (:data:`BASE_METHODS`) with the suffixes of the stage-2
  interventions (:mod:`early_exposure.interventions`), :func:`method_name`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure import interventions
from early_exposure.interventions import BASE_METHODS
from early_exposure.io import atomic_write_bytes

FRONTIER_COLUMNS: tuple[str, ...] = (
    "side", "pipeline", "method", "mix_fraction", "compute_matched", "upstream_id",
    "post_hparams", "ft_lr", "ft_budget", "seed", "L_im", "L_ret", "L_ft", "L_pre",
    "diverged", "run_id",
)
#: the protocol's three stages, in order (theory configs ``stages.pre`` ..., LM sections ``pre`` ...)
STAGES: tuple[str, ...] = ("pre", "post", "ft")
#: the paper's four losses, the loss columns of the frontier table
LOSS_COLUMNS: tuple[str, ...] = ("L_im", "L_ret", "L_ft", "L_pre")
SIDES = ("theory", "lm")
#: view name -> (x column, y column) of a frontier plot or check; both minimised
VIEWS: dict[str, tuple[str, str]] = {"ret_ft": ("L_ft", "L_ret"), "pre_ret": ("L_ret", "L_pre")}


def check_method(method: str) -> None:
    """``unmixed`` or ``mixed`` followed by any of the registered stage-2 interventions'
    suffixes (:mod:`early_exposure.interventions`: ``+replay``, ``+dropout``, ``+lora``)."""
    base, *rest = method.split("+")
    if base not in BASE_METHODS or any(f"+{r}" not in interventions.suffixes() for r in rest):
        raise ValueError(
            f"method {method!r} must be 'unmixed' or 'mixed' with optional suffixes {interventions.suffixes()}"
        )


def method_name(mixed: bool, **on: bool) -> str:
    """``mixed`` / ``unmixed`` followed by the suffixes of the interventions set true in ``on``
    (names of :data:`early_exposure.interventions.INTERVENTIONS`), in canonical order."""
    for name in on:
        interventions.by_name(name)  # an unknown name is a bug: KeyError naming the registry
    return ("mixed" if mixed else "unmixed") + interventions.method_suffix({k for k, v in on.items() if v})


def make_row(**kw: Any) -> dict[str, Any]:
    """A frontier row with every column present; ``post_hparams`` dicts become JSON."""
    missing = [c for c in FRONTIER_COLUMNS if c not in kw]
    extra = [k for k in kw if k not in FRONTIER_COLUMNS]
    if missing or extra:
        raise ValueError(f"frontier row: missing {missing}, unexpected {extra}")
    row = dict(kw)
    if not isinstance(row["post_hparams"], str):
        row["post_hparams"] = json.dumps(row["post_hparams"], sort_keys=True)
    if row["diverged"]:
        for c in LOSS_COLUMNS:
            v = row[c]
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                row[c] = float("nan")
    return row


def validate_frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Check schema and types; return ``df`` with columns in canonical order."""
    missing = [c for c in FRONTIER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"frontier table lacks columns {missing}")
    bad_side = set(df["side"]) - set(SIDES)
    if bad_side:
        raise ValueError(f"frontier side must be one of {SIDES}, got {sorted(bad_side)}")
    for m in set(df["method"]):
        check_method(m)
    out = df.loc[:, list(FRONTIER_COLUMNS)].copy()
    for c in (*LOSS_COLUMNS, "mix_fraction", "ft_lr", "ft_budget"):
        out[c] = out[c].astype(float)
    out["compute_matched"] = out["compute_matched"].astype(bool)
    out["diverged"] = out["diverged"].astype(bool)
    out["seed"] = out["seed"].astype(int)
    finite = out.loc[~out["diverged"], list(LOSS_COLUMNS)].map(math.isfinite)
    if not finite.all().all():
        raise ValueError("frontier rows with non-finite losses must have diverged=true")
    return out


def write_frontier(df_or_rows: pd.DataFrame | list[dict[str, Any]], path: str | Path) -> Path:
    """Validate and atomically write a frontier CSV."""
    df = df_or_rows if isinstance(df_or_rows, pd.DataFrame) else pd.DataFrame(df_or_rows, columns=list(FRONTIER_COLUMNS))
    df = validate_frontier(df)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def select_arm(df: pd.DataFrame, method: str) -> tuple[pd.DataFrame, float | None]:
    """Non-compute-matched rows of ``method``; for mixed methods, the one mixing fraction
    with the most rows (ties: the largest), so an arm is one upstream recipe, not a union."""
    rows = df.loc[(df["method"] == method) & ~df["compute_matched"].astype(bool)]
    if rows.empty:
        return rows, None
    if method.startswith("unmixed"):
        return rows, float(rows["mix_fraction"].iloc[0])
    counts = rows.groupby("mix_fraction").size()
    lam = float(max(counts.index, key=lambda v: (counts[v], v)))
    return rows.loc[rows["mix_fraction"] == lam], lam


def read_frontier(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"upstream_id": str, "run_id": str, "post_hparams": str})
    return validate_frontier(df)
