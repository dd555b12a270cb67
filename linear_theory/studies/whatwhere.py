"""What is forgotten and where, in Appendix C's two-layer linear network (beyond the paper).

    python -m linear_theory.studies.whatwhere --out DIR [--config FILE] [--set KEY=VALUE ...] [--tol 0.1]

The LM side counts items that flip between checkpoints and rolls layers back
(:mod:`lm_experiments.analysis.whatwhere`); here the same questions have exact answers. For every arm
(``unmixed``: mix_fraction 0; ``mixed``: the config's mix_fraction, 0.5 by default; each
also ``+replay`` (post.replay 0.1) and ``+dropout`` (post.dropout 0.1)) one full-matrix run
of :func:`linear_theory.simulate` gives W1, W2 after every stage, and:

- **modes as items** (``modes.csv``): feature (mode) i "holds D_post" at a checkpoint when its
  spectrum value s_i = (U^T theta V)_ii is within ``tol`` (relative) of the D_post target,
  ``|s_i - sigma_post_i| <= tol * sigma_post_i``; transitions pre->post and post->ft counted
  per feature block (invariant, inconsistent, specialized; :func:`linear_theory.tasks.blocks`)
  with :func:`early_exposure.forgetting.forgetting_metrics` (the counts and rates the LM items use);
- **overlap of an update with a subspace** (``overlap.csv``): for the fine-tuning update
  D = theta_ft - theta_post (and stage 2's, theta_post - theta_pre) and each block S, the
  input-side share ||D V_S||_F^2 / ||D||_F^2 and the output-side share ||U_S^T D||_F^2 / ||D||_F^2.
  Lemma C.16: D_ft has zero input covariance on the specialized directions, so fine-tuning
  cannot move theta along them: the input-side share of the specialized block is 0 (to
  machine precision, ``|share| <= 1e-12``), the inconsistent block's is not;
- **rollback of one factor** (``rollback.csv``): theta_ft with W1 (or W2) set back to theta_post's,
  W1_post W2_ft (W1_ft W2_post): share of the L_ret increase undone
  (L_ret - L_post(theta_rb)) / (L_ret - L_im) and the cost in L_ft, L_ft(theta_rb) - L_ft;
- ``whatwhere.json``: the tables, the verdict rows (``checks``, shaped like
  ``paper_checks.report.make_check``, source "beyond the paper (docs/whatwhere.md)") and provenance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.io import atomic_write_bytes, atomic_write_json

__all__ = ["ARMS", "run_arms", "mode_rows", "overlap_rows", "rollback_rows", "subspace_share", "whatwhere_study"]

SOURCE = "beyond the paper (docs/whatwhere.md)"
ARMS: dict[str, list[str]] = {
    "unmixed": ["stages.pre.mix_fraction=0.0"],
    "mixed": [],
    "unmixed+replay": ["stages.pre.mix_fraction=0.0", "stages.post.replay=0.1"],
    "mixed+replay": ["stages.post.replay=0.1"],
    "unmixed+dropout": ["stages.pre.mix_fraction=0.0", "stages.post.dropout=0.1"],
    "mixed+dropout": ["stages.post.dropout=0.1"],
}
C16_TOL = 1e-12


def run_arms(cfg, arms: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """arm -> :class:`linear_theory.simulate.SimResult` (full-matrix path: W1, W2 recorded)."""
    from linear_theory.simulate import simulate

    out = {}
    for arm, ov in (ARMS if arms is None else arms).items():
        c = cfg.replace(ov) if ov else cfg
        if arm.startswith("mixed") and c.stages.pre.mix_fraction == 0:
            c = c.replace(["stages.pre.mix_fraction=0.5"])
        out[arm] = simulate(c, method="full")
    return out


def _holds(spectrum: np.ndarray, target: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(spectrum - target) <= tol * np.abs(target)


def mode_rows(results: dict[str, Any], tol: float = 0.1) -> list[dict[str, Any]]:
    from early_exposure.forgetting import forgetting_metrics, transition_counts
    from linear_theory.tasks import blocks, build_task

    def item_metrics(b: np.ndarray, a: np.ndarray) -> dict[str, float]:  # as lm_experiments.analysis.items.item_metrics
        return {**{f"n_{t}": float(v) for t, v in transition_counts(b, a).items()}, **forgetting_metrics(b, a)}

    rows = []
    for arm, r in results.items():
        tm = build_task(r.config.task)
        target = tm.post.sigma
        held = {st: _holds(np.asarray(r.spectra[st]), target, tol) for st in ("pre", "post", "ft")}
        for pair, b, a in (("pre->post", "pre", "post"), ("post->ft", "post", "ft")):
            for blk, sl in blocks(r.config.task.n, r.config.task.k).items():
                m = item_metrics(held[b][sl], held[a][sl])
                rows.append({"arm": arm, "mix_fraction": r.config.stages.pre.mix_fraction, "pair": pair, "block": blk,
                             "modes_before": "".join("1" if x else "0" for x in held[b][sl]),
                             "modes_after": "".join("1" if x else "0" for x in held[a][sl]), **m})
    return rows


def subspace_share(D: np.ndarray, basis: np.ndarray, side: str) -> float:
    """||D Q||_F^2 / ||D||_F^2 (``side="input"``, Q = the basis columns) or ||Q^T D||_F^2 /
    ||D||_F^2 (``"output"``); NaN for D = 0."""
    tot = float(np.sum(D ** 2))
    if tot == 0:
        return float("nan")
    part = D @ basis if side == "input" else basis.T @ D
    return float(np.sum(part ** 2)) / tot


def overlap_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    from linear_theory.tasks import blocks, build_task

    rows = []
    for arm, r in results.items():
        tm = build_task(r.config.task)
        th = r.thetas()
        for stage, D in (("post", th["post"] - th["pre"]), ("ft", th["ft"] - th["post"])):
            for blk, sl in blocks(r.config.task.n, r.config.task.k).items():
                rows.append({"arm": arm, "mix_fraction": r.config.stages.pre.mix_fraction, "update": stage,
                             "block": blk, "norm": float(np.linalg.norm(D)),
                             "input_share": subspace_share(D, tm.V[:, sl], "input"),
                             "output_share": subspace_share(D, tm.U[:, sl], "output")})
    return rows


def rollback_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    from linear_theory.simulate import task_losses
    from linear_theory.tasks import build_task

    rows = []
    for arm, r in results.items():
        tm = build_task(r.config.task)
        (w1p, w2p), (w1f, w2f) = r.weights["post"], r.weights["ft"]
        l_im, l_ret, l_ft = r.losses["L_im"], r.losses["L_ret"], r.losses["L_ft"]
        for what, theta in (("none", w1f @ w2f), ("W1", w1p @ w2f), ("W2", w1f @ w2p), ("both", w1p @ w2p)):
            L = task_losses(theta, tm)
            rows.append({"arm": arm, "mix_fraction": r.config.stages.pre.mix_fraction, "rolled_back": what,
                         "L_ret_rb": L["post"], "L_ft_rb": L["ft"], "L_pre_rb": L["pre"],
                         "share_ret_undone": (l_ret - L["post"]) / (l_ret - l_im) if l_ret != l_im else float("nan"),
                         "cost_ft": L["ft"] - l_ft})
    return rows


def _check(id: str, claim: str, status: str, evidence: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "claim": claim, "source": SOURCE, "side": "theory", "status": status, "evidence": evidence,
            "data": data, "pipeline": None, "analogue": None}


def checks(modes: pd.DataFrame, overlap: pd.DataFrame, rollback: pd.DataFrame) -> list[dict[str, Any]]:
    """Verdict rows ``theory.whatwhere.*`` (docs/whatwhere.md)."""
    out = []
    ft = overlap[(overlap["update"] == "ft") & (overlap["block"] == "specialized")]
    worst = float(ft["input_share"].abs().max())
    inc = overlap[(overlap["update"] == "ft") & (overlap["block"] == "inconsistent")]
    out.append(_check(
        "theory.whatwhere.c16_overlap",
        "the fine-tuning update has zero overlap with the specialized input subspace (Lemma C.16), a nonzero one "
        "with the inconsistent subspace",
        "PASS" if worst <= C16_TOL and float(inc["input_share"].min()) > 1e-6 else "FAIL",
        f"max over {len(ft)} arms of ||D V_spec||^2/||D||^2 = {worst:.2e} (tolerance {C16_TOL:g}); inconsistent "
        f"share {float(inc['input_share'].min()):.3g}-{float(inc['input_share'].max()):.3g}",
        {"specialized_max": worst, "inconsistent_min": float(inc["input_share"].min()), "n_arms": int(len(ft))}))
    pf = modes[modes["pair"] == "post->ft"]
    forgotten = pf.groupby("block")["n_1->0"].sum().to_dict()
    spec_kept = pf[(pf["block"] == "specialized") & pf["arm"].str.startswith("mixed")]
    spec_ok = bool((spec_kept["n_1->1"] == spec_kept["n"]).all()) if len(spec_kept) else False
    only_inc = all(v == 0 for b, v in forgotten.items() if b != "inconsistent")
    out.append(_check(
        "theory.whatwhere.modes",
        "what fine-tuning forgets: only inconsistent features flip 1->0; every mixed arm keeps its specialized "
        "features (1->1), which no unmixed arm holds",
        "PASS" if only_inc and spec_ok else "FAIL",
        "post->ft 1->0 modes by block: " + ", ".join(f"{b} {int(v)}" for b, v in sorted(forgotten.items()))
        + f"; mixed arms keeping every specialized feature: {int((spec_kept['n_1->1'] == spec_kept['n']).sum())}/"
        f"{len(spec_kept)}", {"forgotten_by_block": {b: int(v) for b, v in forgotten.items()}}))
    rb = rollback[rollback["rolled_back"].isin(["W1", "W2"])]
    piv = rb.pivot_table(index="arm", columns="rolled_back", values="share_ret_undone")
    both_partial = bool(((piv > 0.0) & (piv < 1.0)).all().all()) if not piv.empty else False
    out.append(_check(
        "theory.whatwhere.rollback",
        "where: restoring W1 or W2 alone to theta_post undoes part, not all, of the L_ret increase (forgetting is "
        "spread over both layers)",
        "PASS" if both_partial else "FAIL",
        "; ".join(f"{a}: W1 {row.get('W1', float('nan')):.3f}, W2 {row.get('W2', float('nan')):.3f}"
                  for a, row in piv.iterrows()),
        {"share_ret_undone": {a: {k: float(v) for k, v in row.items()} for a, row in piv.iterrows()}}))
    return out


def whatwhere_study(cfg=None, *, tol: float = 0.1, out: Path | None = None) -> dict[str, Any]:
    from early_exposure.provenance import provenance
    from linear_theory.config import default_config

    t0 = time.perf_counter()
    cfg = default_config() if cfg is None else cfg
    res = run_arms(cfg)
    modes, overlap, rollback = (pd.DataFrame(f(res, tol) if f is mode_rows else f(res))
                                for f in (mode_rows, overlap_rows, rollback_rows))
    body = {"checks": checks(modes, overlap, rollback), "tol": tol, "modes": modes.to_dict("records"),
            "overlap": overlap.to_dict("records"), "rollback": rollback.to_dict("records"),
            "config": cfg.to_dict(), "seconds": round(time.perf_counter() - t0, 2), "provenance": provenance()}
    if out is not None:
        out = Path(out)
        for name, df in (("modes", modes), ("overlap", overlap), ("rollback", rollback)):
            atomic_write_bytes(out / f"{name}.csv", df.to_csv(index=False).encode())
        atomic_write_json(out / "whatwhere.json", body)
    return body


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    ap = argparse.ArgumentParser(prog="python -m linear_theory.studies.whatwhere",
                                 description="Per-feature transitions, update overlap and factor rollback (theory).")
    ap.add_argument("--out", required=True, help="output directory (whatwhere.json, modes.csv, overlap.csv, rollback.csv)")
    ap.add_argument("--config", default=None, help="theory config (default: the default task)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set stages.pre.mix_fraction=0.25 (repeatable)")
    ap.add_argument("--tol", type=float, default=0.1, help="relative tolerance of 'holds the D_post value'")
    return ap


def main(argv: list[str] | None = None) -> int:
    from early_exposure.errors import ConfigError
    from linear_theory.config import load_config

    a = build_parser().parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not 0 < a.tol < 1:
        print("error: --tol: must be in (0, 1)", file=sys.stderr)
        return 2
    body = whatwhere_study(cfg, tol=a.tol, out=Path(a.out))
    for c in body["checks"]:
        print(f"{c['status']:5s} {c['id']}: {c['evidence']}")
    print(f"wrote {Path(a.out) / 'whatwhere.json'} ({body['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
