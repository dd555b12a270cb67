"""Descriptive analyses of the LM runs beyond the frontier claims.

- Sample-wise forgetting (Harmon et al. 2025, :mod:`early_exposure.forgetting`): from the
  per-token top-1 correctness on the D_post evaluation tokens saved after stage 2 (theta_post)
  and after stage 3 (theta_ft), the 1->0 forgetting and 0->1 backward transfer of every
  fine-tuning run, averaged per (pipeline, method, fine-tuning lr): mixed vs unmixed.
- Where fine-tuning acts: the relative Frobenius change per layer group
  (``group/<g>`` keys written by ``lm_experiments.engine.evaluate.layerwise_change``) averaged per
  method, with the group that changed most.

Both read only saved files; a run without the arrays is skipped and counted; a damaged run
(unreadable ``result.json``, a file that differs from its integrity record, an array file that
does not open: :mod:`early_exposure.runs`) is skipped and listed (``skipped_damaged`` and
the note).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.forgetting import forgetting_metrics
from early_exposure.integrity import structural_check
from early_exposure.runs import RECORD, RunReader, RunTree

_BEFORE = re.compile(r"(post|stage_?2|before|im)", re.I)
_AFTER = re.compile(r"(ft|stage_?3|after|ret)", re.I)


def _correct_pair(npz_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(before, after) correctness arrays from one npz, by key names: a key containing
    ``correct`` and ``post``/``stage2``/``before``/``im`` for theta_post, and one containing
    ``correct`` and ``ft``/``stage3``/``after``/``ret`` for theta_ft."""
    with np.load(npz_path) as z:
        if {"post_correct_stage2", "post_correct_stage3"} <= set(z.files):  # lm_experiments' names
            return (np.asarray(z["post_correct_stage2"]).reshape(-1),
                    np.asarray(z["post_correct_stage3"]).reshape(-1))
        keys = [k for k in z.files if "correct" in k.lower()]
        before = [k for k in keys if _BEFORE.search(k.replace("correct", "")) and not _AFTER.search(k.replace("correct", ""))]
        after = [k for k in keys if _AFTER.search(k.replace("correct", ""))]
        if len(before) != 1 or len(after) != 1:
            return None
        return np.asarray(z[before[0]]).reshape(-1), np.asarray(z[after[0]]).reshape(-1)


def _label(row: Any) -> str:
    """Method name, with lambda for mixed runs and a compute-matched tag, so different
    upstream recipes are never averaged together."""
    lam = "" if str(row.method).startswith("unmixed") else f" lambda={float(row.mix_fraction):g}"
    return f"{row.method}{lam}" + (" compute-matched" if bool(row.compute_matched) else "")


def _find_run_files(run_dir: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` directly in ``run_dir`` (``result.json`` first)."""
    files = sorted(p for p in run_dir.glob(pattern) if p.is_file())
    return sorted(files, key=lambda p: p.name != RECORD)


def forgetting_analysis(frontier: pd.DataFrame | None, lm_dir: Path, k: int | None = None) -> dict[str, Any]:
    """Per (pipeline, method, ft_lr): mean 1->0 forgetting and 0->1 transfer from theta_post
    to theta_ft on the D_post evaluation tokens, over the runs that saved both arrays."""
    if frontier is None or frontier.empty:
        return {"note": "no data: no LM frontier table", "table": []}
    recs = []
    skipped = 0
    reader = RunReader()
    for row in frontier.itertuples(index=False):
        run_dir = RunTree(lm_dir).ft(str(row.run_id))
        pair = None
        intact = not RunTree.record(run_dir).exists() or reader.run(run_dir) is not None
        for p in _find_run_files(run_dir, "*.npz") if run_dir.is_dir() and intact else []:
            why = structural_check(p)
            if why is not None:
                reader.damaged(run_dir, why)
                break
            pair = _correct_pair(p)
            if pair is not None:
                break
        if pair is None or pair[0].shape != pair[1].shape:
            skipped += 1
            continue
        m = forgetting_metrics(pair[0], pair[1], k=k)
        recs.append({"pipeline": row.pipeline, "method": _label(row), "ft_lr": float(row.ft_lr), **m})
    damaged = _damaged_note(reader)
    if not recs:
        return {"note": f"no data: no run directory holds before/after correctness arrays ({skipped} runs looked at)"
                        + damaged, "table": [], "skipped_damaged": reader.skipped}
    df = pd.DataFrame(recs)
    cols = ["acc_before", "acc_after", "forgetting", "forgetting_relative", "backward_transfer"]
    agg = df.groupby(["pipeline", "method", "ft_lr"])[cols].mean().reset_index()
    agg["runs"] = df.groupby(["pipeline", "method", "ft_lr"]).size().to_numpy()
    table = agg.to_dict(orient="records")
    return {"note": (f"theta_post -> theta_ft on D_post eval tokens (top-1 next-token correctness); "
                     f"{len(recs)} runs, {skipped} without arrays" + damaged), "table": table,
            "skipped_damaged": reader.skipped}


def _damaged_note(reader: RunReader) -> str:
    """``"; skipped N damaged run(s): <dir>: <what is wrong>; ..."`` (empty when none)."""
    if not reader.skipped:
        return ""
    return f"; skipped {len(reader.skipped)} damaged run(s): " + "; ".join(reader.skipped)


def _find_groups(obj: Any) -> dict[str, float] | None:
    """The first mapping (depth-first) holding ``group/<g>`` keys."""
    if isinstance(obj, dict):
        groups = {k[len("group/"):]: float(v) for k, v in obj.items()
                  if isinstance(k, str) and k.startswith("group/") and isinstance(v, (int, float))}
        if groups:
            return groups
        for v in obj.values():
            g = _find_groups(v)
            if g:
                return g
    return None


def layerwise_analysis(frontier: pd.DataFrame | None, lm_dir: Path) -> dict[str, Any]:
    """Mean relative change per layer group and method; the group that moved most."""
    if frontier is None or frontier.empty:
        return {"note": "no data: no LM frontier table", "table": []}
    recs = []
    reader = RunReader()
    for row in frontier.drop_duplicates("run_id").itertuples(index=False):
        run_dir = RunTree(lm_dir).ft(str(row.run_id))
        groups = None
        intact = not RunTree.record(run_dir).exists() or reader.run(run_dir) is not None
        for p in _find_run_files(run_dir, "*.json") if run_dir.is_dir() and intact else []:
            try:
                groups = _find_groups(json.loads(p.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, UnicodeDecodeError):
                groups = None
            if groups:
                break
        if groups:
            recs += [{"method": _label(row), "group": g, "change": v} for g, v in groups.items()]
    damaged = _damaged_note(reader)
    if not recs:
        return {"note": "no data: no run holds layerwise changes (group/<g> keys)" + damaged, "table": [],
                "skipped_damaged": reader.skipped}
    df = pd.DataFrame(recs)
    df["kind"] = df["group"].str.replace(r"layers\.\d+\.", "", regex=True)
    agg = df.groupby(["method", "kind"])["change"].mean().reset_index()
    table = []
    for method, g in agg.groupby("method"):
        top = g.sort_values("change", ascending=False)
        per_layer = df.loc[(df["method"] == method) & df["group"].str.startswith("layers.")]
        layer_idx = per_layer["group"].str.extract(r"layers\.(\d+)\.")[0].astype(int)
        by_layer = per_layer.assign(layer=layer_idx).groupby("layer")["change"].mean()
        table.append({"method": method, "most_changed": str(top["kind"].iloc[0]),
                      "change_most": float(top["change"].iloc[0]),
                      "most_changed_layer": int(by_layer.idxmax()) if len(by_layer) else -1,
                      **{f"mean_{k}": float(v) for k, v in zip(top["kind"], top["change"])}})
    return {"note": "relative Frobenius change ||dW||/||W|| per layer-group kind, mean over runs" + damaged,
            "table": table, "skipped_damaged": reader.skipped}
