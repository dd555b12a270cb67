"""Synthetic results directories with known answers (for tests and for trying the tools).

Every generator builds data whose verdict is known by construction: a frontier where the
candidate method's points are shifted down by ``shift`` (so its dominated area is larger
exactly when ``shift > 0``), lambda studies with a chosen slope or an interior minimum,
and theory files in the formats of ``docs/INTERFACES.md``. Nothing here is used to judge
real results.

``python -m paper_checks.synthetic OUT`` writes a complete fixture results directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.frontier import FRONTIER_COLUMNS, write_frontier
from early_exposure.io import atomic_write_bytes, atomic_write_json, atomic_write_text, stable_hash


def _row(side: str, pipeline: str, method: str, lam: float, cm: bool, up: str, seed: int, ft_lr: float,
         l_im: float, l_ret: float, l_ft: float, l_pre: float, diverged: bool = False) -> dict[str, Any]:
    r = {"side": side, "pipeline": pipeline, "method": method, "mix_fraction": lam, "compute_matched": cm,
         "upstream_id": up, "post_hparams": "{}", "ft_lr": ft_lr, "ft_budget": 1000.0, "seed": seed,
         "L_im": l_im, "L_ret": l_ret, "L_ft": l_ft, "L_pre": l_pre, "diverged": diverged}
    r["run_id"] = stable_hash({k: v for k, v in r.items() if not k.startswith("L_")})
    return r


def frontier_rows(side: str, pipeline: str, shifts: dict[str, float], seeds: list[int], *,
                  n_upstream: int = 2, ft_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3),
                  noise: float = 0.02, mix_fraction: float = 0.5, rng_seed: int = 0) -> pd.DataFrame:
    """Rows for each method in ``shifts``: a linear trade-off L_ret = 3 + 2u - shift,
    L_ft = 4 - 2u (u in [0, 1] grows with the fine-tuning lr), L_pre = 4 + u - shift,
    plus seed-level and point-level Gaussian noise of scale ``noise``."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for method, shift in shifts.items():
        lam = 0.0 if method.startswith("unmixed") else mix_fraction
        for seed in seeds:
            seed_off = rng.normal(0, noise)
            for h in range(n_upstream):
                up = stable_hash([pipeline, method, seed, h])
                l_im = 2.5 - 0.1 * shift + seed_off + rng.normal(0, noise / 4)
                for j, lr in enumerate(ft_lrs):
                    u = (j + 0.5 * h / max(n_upstream, 1)) / len(ft_lrs)
                    e = rng.normal(0, noise, size=3)
                    rows.append(_row(side, pipeline, method, lam, False, up, seed, lr, l_im,
                                     3 + 2 * u - shift + seed_off + e[0], 4 - 2 * u + e[1],
                                     4 + u - shift + seed_off + e[2]))
    return pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))


def lambda_rows(side: str, pipeline: str, seeds: list[int], *, compute_matched: bool,
                im: tuple[float, float] = (2.5, 0.0), ret: tuple[float, float, float] = (3.5, -0.5, 0.0),
                lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), ft_lrs: tuple[float, ...] = (5e-5, 1e-4),
                noise: float = 0.01, rng_seed: int = 1, stage1: float | None = 4.0,
                im_offset0: float = 0.0) -> pd.DataFrame:
    """Lambda study rows: L_im = im[0] + im[1] * lambda; L_ret = ret[0] + ret[1] * lambda
    + ret[2] * (lambda - 0.5)^2 (ret[2] > 0 puts the minimum inside), each plus noise.
    ``stage1``: theta_pre's D_post loss, written to the lambda = 0 rows' ``post_hparams``
    (``L_post_stage1``, read by (c)'s precondition); ``im_offset0`` is added to L_im at
    lambda = 0 (an under-trained single pass when positive)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        for lam in lambdas:
            method = "unmixed" if lam == 0 else "mixed"
            up = stable_hash([pipeline, compute_matched, lam, seed])
            l_im = im[0] + im[1] * lam + rng.normal(0, noise) + (im_offset0 if lam == 0 else 0.0)
            for j, lr in enumerate(ft_lrs):
                l_ret = ret[0] + ret[1] * lam + ret[2] * (lam - 0.5) ** 2 + 0.3 * j + rng.normal(0, noise)
                rows.append(_row(side, pipeline, method, lam, compute_matched, up, seed, lr, l_im, l_ret,
                                 2.0 - 0.3 * j, 4.0 + rng.normal(0, noise)))
                if stage1 is not None and lam == 0:
                    rows[-1]["post_hparams"] = json.dumps({"L_post_stage1": stage1})
    return pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))


def theorems_json(passed: bool = True, erratum_on: str | None = "C.10") -> dict[str, Any]:
    ids = ["saxe_closed_form", "C.9", "C.10", "C.14", "C.15", "C.16", "C.17", "basis_invariance"]
    errata = []
    if erratum_on:
        errata.append({"id": f"{erratum_on}-value", "location": f"Theorem {erratum_on}",
                       "printed": "specialized modes reach sigma", "observed": "they reach sigma/alpha",
                       "corrected": "specialized modes reach sigma/alpha", "evidence": {"max_err": 1e-9}})
    return {"checks": [{"id": i, "claim": f"claim {i}", "passed": passed, "evidence": {"err": 1e-9},
                        "compared_against": "closed form"} for i in ids],
            "errata": errata, "provenance": {}}


def assumptions_json(feasible: bool = False) -> dict[str, Any]:
    return {"assumptions": [{"id": i, "holds": i != "C.6", "numbers": {}, "explanation": ""}
                            for i in ("C.1", "C.5", "C.6", "C.8", "C.11", "C.12", "C.13")],
            "feasibility": {"jointly_feasible": feasible,
                            "infeasible_subsets": [] if feasible else [{"ids": ["C.5", "C.6"], "chain": "a < b < a"}],
                            "minimal_relaxation": {} if feasible else {"C.6": "alpha >= 0.1 instead of 0.5"}},
            "errata": [], "config": {}}


def trajectory_csv(mixed: bool, n: int = 6, k: int = 2, steps: int = 40) -> str:
    """Staircase spectra: invariant modes learned in pretraining, specialized ones only when
    mixed, inconsistent ones moved by post- and fine-tuning."""
    lines = ["stage,step," + ",".join(f"s_{i}" for i in range(n))]
    s = np.full(n, 1e-3)
    for stage, targets in (("pre", [3.0] * (n - 2 * k) + [1.0] * k + [1.0 if mixed else 1e-3] * k),
                           ("post", [3.0] * (n - 2 * k) + [1.0 if mixed else 2.0] * k + [2.0] * k),
                           ("ft", [3.0] * (n - 2 * k) + [0.5] * k + [2.0 if mixed else 1.0] * k)):
        for step in range(steps):
            s = s + 0.2 * (np.asarray(targets) - s)
            lines.append(f"{stage},{step}," + ",".join(f"{v:.6g}" for v in s))
    return "\n".join(lines) + "\n"


def sweep_frame(n: int = 12) -> pd.DataFrame:
    a, b = np.meshgrid(np.linspace(0, 1, n), np.linspace(0.1, 2, n), indexing="ij")
    l_im = 1.0 + 0 * a
    l_ret = 1.5 - 0.5 * a * b
    return pd.DataFrame({"mix_fraction": a.ravel(), "beta": b.ravel(), "L_im": l_im.ravel(), "L_ret": l_ret.ravel(),
                         "Delta": (l_ret - l_im).ravel(), "assumptions_hold": (a.ravel() > 0.3),
                         "diverged": np.zeros(a.size, bool)})


LAMBDA_PIPELINE = "general>music>flan"
#: the compute-matched L_ret of the fixture: good: falls with lambda, minimum inside (lambda
#: 0.75: 3.9, 3.475, 3.25, 3.225, 3.4); bad: rises with lambda, minimum at lambda = 0
C_RET = {True: (3.5, -0.5, 1.6), False: (3.5, 0.5, -1.6)}


def regime_rows(frontier: pd.DataFrame, *, inside: bool = True) -> pd.DataFrame:
    """A ``regime.csv`` (``paper_checks.lm_regime`` columns the envelope reads) for the runs
    of ``frontier``: every figure well inside the envelope, or (``inside=False``) a model
    back at uniform after post-training (kept_post 0.1)."""
    f = frontier
    return pd.DataFrame({
        "run_id": f["run_id"], "upstream_id": f["upstream_id"], "pipeline": f["pipeline"], "method": f["method"],
        "mix_fraction": f["mix_fraction"], "compute_matched": f["compute_matched"], "seed": f["seed"],
        "ft_lr": f["ft_lr"], "tokens_per_param": 20.0, "L_pre_pre_over_lnV": 0.45,
        "margin_pre": 0.5, "margin_post": 0.5, "margin_ft": 0.5,  # nats better than the bigram
        "kept_post": 0.8 if inside else 0.1, "kept_ft": 0.6, "stopped_early": ~f["compute_matched"].astype(bool),
        "forgetting": 0.4, "ret_minus_im": 0.5, "L_im": f["L_im"], "diverged": f["diverged"]})


def write_fixture(out: str | Path, *, good: bool = True, seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
                  pipeline: str = "general>music>chem", in_regime: bool = True) -> Path:
    """A complete results directory. ``good``: every claim built to hold; else to be violated.
    ``in_regime``: the LM run sets' regime table inside the paper's envelope (else outside)."""
    out = Path(out)
    sgn = 1.0 if good else -1.0
    seeds_l = list(seeds)
    methods = {"unmixed": 0.0, "mixed": 0.4 * sgn, "mixed+replay": 0.7 * sgn, "mixed+dropout": 0.7 * sgn,
               "unmixed+replay": 0.15 * sgn, "unmixed+dropout": 0.15 * sgn,
               "unmixed+lora": -0.2, "mixed+lora": -0.2 + 0.4 * sgn}
    for side, sub in (("lm", "lm/cpu-quick"), ("theory", "theory/frontier")):
        df = frontier_rows(side, pipeline, methods, seeds_l if side == "lm" else [0])
        if side == "lm":  # the lambda studies live in a second pipeline of the same preset
            df = pd.concat([df,
                            lambda_rows(side, LAMBDA_PIPELINE, seeds_l, compute_matched=False,
                                        im=(2.5, 0.0 if good else 0.8), ret=(3.5, -0.5 if good else 0.3, 0.0)),
                            lambda_rows(side, LAMBDA_PIPELINE, seeds_l, compute_matched=True,
                                        im=(2.5, 0.4 if good else -0.4), ret=C_RET[good])])
        write_frontier(df, out / sub / "frontier.csv")
        if side == "lm":
            atomic_write_bytes(out / sub / "regime.csv",
                               regime_rows(df, inside=in_regime).to_csv(index=False).encode())
    cm = pd.concat([lambda_rows("theory", "theory", seeds_l, compute_matched=False,
                                im=(2.5, 0.0 if good else 0.8), ret=(3.5, -0.5 if good else 0.3, 0.0)),
                    lambda_rows("theory", "theory", seeds_l, compute_matched=True,
                                im=(2.5, 0.4 if good else -0.4), ret=C_RET[good])])
    write_frontier(cm, out / "theory/compute_matched/frontier.csv")
    atomic_write_json(out / "theory/verify/theorems.json", theorems_json(passed=good))
    atomic_write_json(out / "theory/verify/assumptions.json", assumptions_json(feasible=good))
    for name, mixed in (("unmixed", False), ("mixed", True)):
        atomic_write_text(out / f"theory/trajectories/{name}/trajectory.csv", trajectory_csv(mixed))
        atomic_write_json(out / f"theory/trajectories/{name}/result.json",
                          {"config": {"task": {"n": 6, "k": 2}, "stages": {"pre": {"mix_fraction": 0.5 if mixed else 0.0}}}})
    import io as _io

    buf = _io.BytesIO()
    sweep_frame().to_parquet(buf, index=False)
    atomic_write_bytes(out / "theory/sweep/sweep.parquet", buf.getvalue())
    return out


if __name__ == "__main__":
    print(write_fixture(sys.argv[1] if len(sys.argv) > 1 else "results-synthetic"))
