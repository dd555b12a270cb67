"""The tables of a plan, read back from the run tree in plan order: the frontier table (one
row per finished fine-tuning run, the shared schema of :mod:`early_exposure.frontier`) and the
matched-L_im table (one row per fine-tuned stage-2 checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure import integrity
from early_exposure.frontier import make_row, write_frontier
from early_exposure.io import atomic_write_bytes
from early_exposure.runs import RunTree, read_run
from lm_experiments.protocol.plan import Plan


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


def frontier_rows(out: Path, plan: Plan) -> list[dict[str, Any]]:
    """One frontier row per finished fine-tuning run of ``plan``, in plan order."""
    rows = []
    for r in plan.ft:
        res, _ = read_run(RunTree(out).ft(r.run_id))  # None: not finished, or damaged (redone by the next run)
        if res is None:
            continue
        L = res["losses"]
        rows.append(make_row(
            side="lm", pipeline=res["pipeline"], method=res["method"], mix_fraction=res["mix_fraction"],
            compute_matched=res["compute_matched"], upstream_id=res["upstream_id"],
            post_hparams=res["post_hparams"], ft_lr=res["ft_lr"], ft_budget=res["ft_budget"],
            seed=res["seed"], L_im=_nan_if_none(L.get("L_im")), L_ret=_nan_if_none(L.get("L_ret")),
            L_ft=_nan_if_none(L.get("L_ft")), L_pre=_nan_if_none(L.get("L_pre")),
            diverged=res["diverged"], run_id=res["run_id"]))
    return rows


#: one row per fine-tuned stage-2 checkpoint (the matched table both halves write)
MATCHED_TABLE_COLUMNS = ("side", "pipeline", "method", "mix_fraction", "seed", "upstream_id", "checkpoint",
                         "post_step", "ft_lr", "L_im", "L_ret", "L_ft", "L_pre", "diverged", "run_id")


def matched_rows(out: Path, plan: Plan) -> list[dict[str, Any]]:
    """One row per fine-tuned stage-2 checkpoint of the matched-L_im study (the shared
    matched-table schema, ``early_exposure.matched``), in plan order."""
    rows = []
    for r in plan.traj:
        res, _ = read_run(RunTree(out).traj(r.traj_id))
        if res is None:
            continue
        for row in res["rows"]:
            rows.append({"side": "lm", "pipeline": res["pipeline"], "method": res["method"],
                         "mix_fraction": res["mix_fraction"], "seed": res["seed"], "upstream_id": res["upstream_id"],
                         "checkpoint": row["checkpoint"], "post_step": row["post_step"], "ft_lr": res["ft_lr"],
                         "L_im": _nan_if_none(row["L_im"]), "L_ret": _nan_if_none(row["L_ret"]),
                         "L_ft": _nan_if_none(row["L_ft"]), "L_pre": _nan_if_none(row["L_pre"]),
                         "diverged": bool(row["diverged"]), "run_id": f"{res['traj_id']}:{row['post_step']}"})
    return rows


def write_tables(out: Path, plan: Plan, name: str) -> None:
    """``name`` (frontier.csv or frontier.partial.csv) and, beside a complete frontier of a
    plan with the matched-L_im study, ``matched.csv`` (columns :data:`MATCHED_TABLE_COLUMNS`)."""
    tree = RunTree(out)
    write_frontier(frontier_rows(out, plan), tree.out / name)
    integrity.seal(tree.out / name)  # size + SHA-256: readers tell a damaged table from a short one
    if plan.traj and name == tree.frontier.name:
        df = pd.DataFrame(matched_rows(out, plan), columns=list(MATCHED_TABLE_COLUMNS))
        atomic_write_bytes(tree.matched, df.to_csv(index=False).encode())
        integrity.seal(tree.matched)
