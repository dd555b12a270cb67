"""False-PASS rate and power of the decision rules at the noise level measured in the LM runs.

``python -m paper_checks.calibration [REPS]`` prints, for each rule, the share of PASS
verdicts on synthetic tables (``paper_checks.synthetic``) built to violate the claim (at the
rule's null boundary where it has one) and on tables with a paper-sized effect, at
``NOISE`` nats and ``SEEDS`` seeds. ``tests/test_checks_calibration.py`` runs the same with
fewer repetitions and pins the bounds.

Noise model: per-seed spread of an arm's loss ~0.13 nats (the spread measured across seeds
in the project's LM runs); the frontier tables get an arm x seed offset AND a point offset of
that size each (so an arm's point varies by ~0.18 across seeds: conservative), the lambda
studies a (lambda, seed) offset of that size (each lambda is its own pretraining run), the
matched-L_im tables an arm x seed offset and a checkpoint offset of 0.13 / 4 each (one
trajectory's checkpoints share their run).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pandas as pd

from paper_checks.checks_frontier import compare_frontiers
from paper_checks.checks_lambda import check_sec41, check_sec42_parts
from paper_checks.checks_matched import judge_matched
from paper_checks.common import FLAT_MARGIN_NATS, MEANINGFUL_NATS, CheckOptions
from paper_checks.synthetic import frontier_rows, lambda_rows

NOISE = 0.13   # nats: per-seed spread measured in the LM runs
SEEDS = 5      # the main job's seeds per arm
OPTS = CheckOptions()


def _frontier(shift: float, r: int, noise: float, seeds: int) -> pd.DataFrame:
    return frontier_rows("lm", "p", {"unmixed": 0.0, "mixed": shift}, list(range(seeds)), n_upstream=1,
                         ft_lrs=(1e-4, 3e-4, 1e-3), noise=noise, rng_seed=50_000 + r)


def _lambda(im_slope: float, ret: tuple[float, float, float], r: int, noise: float, seeds: int,
            cm: bool) -> pd.DataFrame:
    df = lambda_rows("lm", "p", list(range(seeds)), compute_matched=cm, im=(2.5, im_slope), ret=ret,
                     noise=noise, rng_seed=60_000 + r)
    if cm:  # (c) needs the early-stopped lambda = 0 run for its precondition (reached: share 1)
        es = lambda_rows("lm", "p", list(range(seeds)), compute_matched=False, im=(2.5 + 0.0, 0.0),
                         ret=(3.5, 0.0, 0.0), noise=0.0, rng_seed=1)
        df = pd.concat([df, es], ignore_index=True)
        df.loc[df["compute_matched"].astype(bool) & (df["mix_fraction"] == 0), "L_im"] = 2.5
    return df


def _matched(benefit: float, r: int, noise: float, seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(70_000 + r)
    rows = []
    for s in range(seeds):
        for m, lam, im, b in (("unmixed", 0.0, np.linspace(3.6, 2.9, 8), 0.0),
                              ("mixed", 1.0, np.linspace(3.3, 2.6, 8), benefit)):
            off = rng.normal(0, noise)
            for i, x in enumerate(im):
                rows.append({"side": "lm", "pipeline": "p", "method": m, "mix_fraction": lam, "seed": s,
                             "upstream_id": f"{m}{s}", "checkpoint": i, "post_step": 10 * (i + 1), "ft_lr": 1e-4,
                             "L_im": float(x), "L_ret": float(1 + 0.8 * x + off - b + rng.normal(0, noise / 4)),
                             "L_ft": 2.0, "L_pre": 4.0, "diverged": False, "run_id": f"{m}{s}:{i}"})
    return pd.DataFrame(rows)


def rules(noise: float = NOISE, seeds: int = SEEDS) -> dict[str, tuple[Callable[[int], str], Callable[[int], str]]]:
    """rule -> (verdict on a violating table r, verdict on a paper-sized-effect table r)."""
    fr = lambda shift: (lambda r: compare_frontiers(_frontier(shift, r, noise, seeds), "unmixed", "mixed",  # noqa: E731
                                                    "ret_ft", "lm", OPTS)[0])
    b = lambda im, ret_slope: (lambda r: check_sec41(_lambda(im, (3.5, ret_slope, 0.0), r, noise, seeds, False),  # noqa: E731
                                                     "lm", OPTS)[0])
    c = lambda part, im, ret: (lambda r: check_sec42_parts(_lambda(im, ret, r, noise, seeds, True), "lm", OPTS,  # noqa: E731
                                                           {s: 4.0 for s in range(seeds)})[part][0])
    mt = lambda ben: (lambda r: judge_matched(_matched(ben, r, noise, seeds), "lm", OPTS)[0])  # noqa: E731
    return {
        # (a): null = no difference; at the bar = a true gap of exactly MEANINGFUL_NATS; effect 0.2 / 0.4 nats
        "a (gap at matched L_ft), null": (fr(0.0), fr(0.2)),
        "a, true gap at the 0.04 bar": (fr(MEANINGFUL_NATS), fr(0.4)),
        # (b): L_im change at the TOST margin (not flat), L_ret falling 0.3; effect: L_im flat, L_ret -0.3
        "b (TOST flat + L_ret falls), L_im at the margin": (b(FLAT_MARGIN_NATS, -0.3), b(0.0, -0.3)),
        # (c1): L_im flat; effect +0.4 over the range
        "c1 (L_im worsens)": (c("c1", 0.0, (3.5, -0.5, 1.6)), c("c1", 0.4, (3.5, -0.5, 1.6))),
        # (c3): L_ret linear in lambda (optimum at an end); effect: curvature 1.6 (interior optimum)
        "c3 (interior optimum)": (c("c3", 0.4, (3.5, -0.5, 0.0)), c("c3", 0.4, (3.5, -0.5, 1.6))),
        # matched L_im: no benefit; effect 0.2 nats
        "matched L_im": (mt(0.0), mt(0.2)),
    }


def measured_noise(frontier: pd.DataFrame) -> tuple[float, int]:
    """(pooled per-seed spread of L_ret, groups used) of an LM frontier table: the standard
    deviation over seeds of L_ret within each (pipeline, method, lambda, compute-matched,
    ft_lr) cell with >= 2 seeds (one checkpoint per seed: the lowest L_im), pooled as the
    root mean square; the figure the calibration's ``NOISE`` stands for."""
    f = frontier.loc[~frontier["diverged"].astype(bool)]
    best = f.sort_values("L_im", kind="stable").drop_duplicates(
        ["pipeline", "method", "mix_fraction", "compute_matched", "seed", "ft_lr"])
    sds = [g["L_ret"].std(ddof=1) for _, g in best.groupby(["pipeline", "method", "mix_fraction", "compute_matched",
                                                             "ft_lr"]) if g["seed"].nunique() >= 2]
    sds = [v for v in sds if np.isfinite(v)]
    return (float(np.sqrt(np.mean(np.square(sds)))) if sds else float("nan")), len(sds)


def measure(reps_null: int, reps_power: int, noise: float = NOISE, seeds: int = SEEDS) -> dict[str, dict[str, float]]:
    out = {}
    for name, (null, effect) in rules(noise, seeds).items():
        out[name] = {"false_pass": float(np.mean([null(r) == "PASS" for r in range(reps_null)])),
                     "power": float(np.mean([effect(r) == "PASS" for r in range(reps_power)])),
                     "reps_null": reps_null, "reps_power": reps_power, "noise": noise, "seeds": seeds}
    return out


if __name__ == "__main__":
    # python -m paper_checks.calibration [REPS] [FRONTIER_CSV]: with a table, at its measured noise
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    noise = NOISE
    if len(sys.argv) > 2:
        from early_exposure.frontier import read_frontier

        noise, groups = measured_noise(read_frontier(sys.argv[2]))
        print(f"measured per-seed spread of L_ret: {noise:.4g} nats ({groups} cells)")
    for k, v in measure(reps, reps, noise=noise).items():
        print(f"{k}: false PASS {v['false_pass']:.3f}, power {v['power']:.3f} "
              f"({v['reps_null']} reps each, noise {v['noise']}, {v['seeds']} seeds)")
