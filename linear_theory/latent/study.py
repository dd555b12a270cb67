"""The latent-benefit study: one grid per candidate knob, mixed (alpha) vs unmixed (alpha = 0).

Every cell runs the same configuration twice, pretraining with alpha = ``ALPHA`` and with
alpha = 0, and compares them after post-training has converged by the LM side's rule
(strict improvement of the exact L_post, checked every 10 steps, patience 2, best weights
restored, budget 20000 steps; ``stop_*`` says whether the rule or the budget ended it).

A cell shows the **latent benefit** when

    same L_im:    |Delta L_im| <= TOL_IM * max(L_im mixed, L_im unmixed) + 1e-9, and
    better L_ret: Delta L_ret <= -MIN_RET * L_ret unmixed,

with Delta = mixed minus unmixed, TOL_IM = MIN_RET = 1% (paper_checks' minimum effect).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from linear_theory.latent.config import LatentConfig, witness_config
from linear_theory.latent.model import LatentResult, build_tasks, run_many
from linear_theory.latent.theory import eckart_young, escape_gap, predict_pair, slots

__all__ = ["ALPHA", "TOL_IM", "MIN_RET", "compare", "run_pairs", "bottleneck_grid", "ft_grid", "finite_grid", "finite_summary",
           "depth_grid", "relu_grid", "decay_grid", "random_search", "smallest_instance", "spectra_cases", "GAPS", "WIDTHS"]

ALPHA = 0.5
TOL_IM = 0.01
MIN_RET = 0.01
WIDTHS = (4, 5, 6, 7, 8)
#: post-training run to convergence of its own (training) objective: a fixed 20000-step budget
POST_CONVERGED = {"stop": "budget", "steps": 20000}
GAPS = (-0.3, -0.1, -0.05, -0.03, -0.02, -0.01, -0.003, 0.0, 0.003, 0.01, 0.02, 0.03, 0.05, 0.1, 0.3)


def compare(u: LatentResult, m: LatentResult) -> dict[str, Any]:
    """Delta losses (mixed minus unmixed) and the latent-benefit verdict of one cell."""
    lu, lm = u.losses, m.losses
    d_im, d_ret = lm["L_im"] - lu["L_im"], lm["L_ret"] - lu["L_ret"]
    same = abs(d_im) <= TOL_IM * max(lu["L_im"], lm["L_im"]) + 1e-9
    better = d_ret <= -MIN_RET * lu["L_ret"]
    return {"L_im_u": lu["L_im"], "L_im_m": lm["L_im"], "L_ret_u": lu["L_ret"], "L_ret_m": lm["L_ret"],
            "L_ft_u": lu["L_ft"], "L_ft_m": lm["L_ft"], "dL_im": d_im, "dL_ret": d_ret,
            "latent_benefit": d_im - d_ret, "same_im": bool(same), "better_ret": bool(better),
            "latent": bool(same and better),
            "stop_u": "rule" if u.post_stopped else "budget", "stop_m": "rule" if m.post_stopped else "budget",
            "steps_u": u.post_steps, "steps_m": m.post_steps, "gnorm_u": u.post_grad_norm,
            "gnorm_m": m.post_grad_norm, "diverged": bool(u.diverged or m.diverged)}


def run_pairs(points: Iterable[tuple[dict[str, Any], LatentConfig]], alpha: float = ALPHA,
              predict: bool = True) -> tuple[pd.DataFrame, list[tuple[LatentResult, LatentResult]]]:
    """Run (unmixed, mixed) for every (labels, unmixed config); one row per point."""
    points = list(points)
    cfgs: list[LatentConfig] = []
    for _, cu in points:
        cfgs += [cu, cu.with_(pre={"mix_fraction": alpha})]
    res = run_many(cfgs)
    rows, pairs = [], []
    for j, (labels, cu) in enumerate(points):
        u, m = res[2 * j], res[2 * j + 1]
        row = {**labels, **compare(u, m)}
        ey = eckart_young(build_tasks(cu.task).sigma["post"], cu.width)
        row["EY_gap_u"], row["EY_gap_m"] = u.losses["L_im"] - ey, m.losses["L_im"] - ey
        if predict:
            row.update(_pred_cols(predict_pair(cfgs[2 * j + 1], cu)))
        rows.append(row)
        pairs.append((u, m))
    return pd.DataFrame(rows), pairs


def _pred_cols(p: dict[str, float]) -> dict[str, Any]:
    same = abs(p["dL_im"]) <= TOL_IM * max(p["L_im_mixed"], p["L_im_unmixed"]) + 1e-9
    better = p["dL_ret"] <= -MIN_RET * p["L_ret_unmixed"]
    return {"pred_dL_im": p["dL_im"], "pred_dL_ret": p["dL_ret"], "pred_latent_benefit": p["latent_benefit"],
            "pred_switched": p["switched"], "pred_latent": bool(same and better)}


def _seed(r: LatentResult, features: list[int]) -> float:
    """||U_F^T W_1|| + ||W_L V_F|| after pretraining: the seed of the unheld features F."""
    if not features:
        return 0.0
    tk = build_tasks(r.config.task)
    w = r.weights["pre"]
    return float(np.linalg.norm(tk.U[:, features].T @ w[0]) + np.linalg.norm(w[-1] @ tk.V[:, features]))


def bottleneck_grid(widths: tuple[int, ...] = WIDTHS, gaps: tuple[float, ...] = GAPS,
                    **sections: dict[str, Any]) -> pd.DataFrame:
    """Candidate 1: width h x tie gap (beta - sigma_inc_post) on the witness task."""
    pts = [({"width": h, "gap": g}, witness_config(width=h, gap=g, **sections)) for h in widths for g in gaps]
    df, pairs = run_pairs(pts, predict=False)
    n, k = pts[0][1].task.n, pts[0][1].task.k
    inc, spec = set(range(n - 2 * k, n - k)), set(range(n - k, n))
    extra: list[dict[str, Any]] = []
    for (labels, cu), (u, m) in zip(pts, pairs):
        cm = m.config
        # the arm on the plateau: unmixed (holds inc) for gap > 0, mixed (holds spec) for gap < 0;
        # its seed is that of the better features it does not hold after pretraining
        eps_u = _seed(u, sorted(spec - set(slots(cu)["pre"])))
        eps_m = _seed(m, sorted(inc - set(slots(cm)["pre"])))
        g = labels["gap"]
        # time the stopping rule let the plateau arm run (best step restored)
        t_post = cu.post.lr * (u.post_steps if g > 0 else m.post_steps)
        esc = escape_gap(eps_u if g > 0 else eps_m, cu.task.sigma_inc_post[0], t_post) if g != 0 else math.inf
        if predict_pair(cm, cu)["switched"] == 0:  # no slot differs: nothing to escape from
            esc = math.nan
        swap = bool(abs(g) >= esc)
        extra.append({"seed_spec_u": eps_u, "seed_inc_m": eps_m, "pred_escape_gap": esc, "pred_swapped": swap,
                      **_pred_cols(predict_pair(cm, cu, swap=swap))})
    return pd.concat([df, pd.DataFrame(extra)], axis=1)


def ft_grid(widths: tuple[int, ...] = (6, 8), spec_vars: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0),
            rotations: tuple[float, ...] = (0.0, math.pi / 16, math.pi / 8, math.pi / 4, 3 * math.pi / 8, math.pi / 2)
            ) -> pd.DataFrame:
    """Candidate 2: D_ft variance along V_spec x rotation of D_ft's basis, at the tie (gap 0)."""
    pts = [({"width": h, "ft_spec_var": v, "ft_rotation": phi},
            witness_config(width=h, task={"ft_spec_var": v, "ft_rotation": phi}))
           for h in widths for v in spec_vars for phi in rotations]
    df, _ = run_pairs(pts)
    df.loc[df["ft_rotation"] != 0.0, ["pred_dL_ret", "pred_latent_benefit"]] = np.nan  # slot model: phi = 0 only
    return df


def finite_grid(widths: tuple[int, ...] = (8, 6), sizes: tuple[int, ...] = (4, 8, 16, 64, 1024, 16384),
                noises: tuple[float, ...] = (0.0, 0.5, 1.0), seeds: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    """Candidate 3: |D_post| = N x label noise (seeded samples shared by both arms, also the
    ones mixed into pretraining), gap 0, two protocols: ``converged`` (post-training to
    convergence of the empirical loss, POST_CONVERGED) and ``early`` (the strict early-stopping
    rule on the exact L_post, i.e. an infinite validation set)."""
    pts = []
    for proto, post in (("converged", POST_CONVERGED), ("early", {})):
        pts += [({"protocol": proto, "width": h, "N": N, "noise": s, "seed": sd},
                 witness_config(width=h, data={"n_samples": N, "noise": s, "seed": sd}, post=post))
                for h in widths for N in sizes for s in noises for sd in seeds]
    df, _ = run_pairs(pts, predict=False)
    return df


def finite_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Seed means per (protocol, width, N, noise) and the verdict of the mean losses."""
    keys = ["protocol", "width", "N", "noise"]
    agg = df.groupby(keys, as_index=False).agg(
        L_im_u=("L_im_u", "mean"), L_im_m=("L_im_m", "mean"), L_ret_u=("L_ret_u", "mean"),
        L_ret_m=("L_ret_m", "mean"), dL_im=("dL_im", "mean"), dL_ret=("dL_ret", "mean"),
        dL_ret_sd=("dL_ret", "std"), latent_seeds=("latent", "sum"), seeds=("seed", "count"),
        gnorm_max=("gnorm_u", "max"))
    agg["latent_benefit"] = agg["dL_im"] - agg["dL_ret"]
    same = agg["dL_im"].abs() <= TOL_IM * np.maximum(agg["L_im_u"], agg["L_im_m"]) + 1e-9
    agg["latent"] = same & (agg["dL_ret"] <= -MIN_RET * agg["L_ret_u"])
    return agg


def depth_grid(widths: tuple[int, ...] = (5, 6, 7, 8), gaps: tuple[float, ...] = (-0.1, -0.03, -0.01, 0.0, 0.01, 0.03, 0.1),
               T: float = 3.0) -> pd.DataFrame:
    """Candidate 4a: depth-3 linear network (init exp(-T) per layer), width x gap."""
    pts = [({"width": h, "gap": g, "depth": 3}, witness_config(width=h, gap=g, model={"depth": 3, "T": T}))
           for h in widths for g in gaps]
    df, _ = run_pairs(pts)
    return df


def relu_grid(widths: tuple[int, ...] = (8, 12, 16, 24), gaps: tuple[float, ...] = (0.0, 1.0), T: float = 4.0) -> pd.DataFrame:
    """Candidate 4b: two-layer ReLU network (exact Gaussian losses), width x gap."""
    pts = [({"width": h, "gap": g, "activation": "relu"},
            witness_config(width=h, gap=g, model={"activation": "relu", "T": T})) for h in widths for g in gaps]
    df, _ = run_pairs(pts, predict=False)
    return df


def decay_grid(widths: tuple[int, ...] = (5, 6, 7, 8), values: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0)) -> pd.DataFrame:
    """Candidate 5: post-training weight decay / the theta_pre regulariser, width x strength, gap 0;
    post-training runs to convergence of the regularised objective (POST_CONVERGED)."""
    pts = [({"width": h, "knob": knob, "value": v}, witness_config(width=h, post={**POST_CONVERGED, knob: v}))
           for knob in ("wd", "reg") for h in widths for v in values]
    df, _ = run_pairs(pts)
    return df


def random_search(n_cfg: int = 24, seed: int = 0) -> pd.DataFrame:
    """No bottleneck (h >= n) on random tasks, depths 2-3, random D_ft knobs and basis: the
    exhaustive check of the uniqueness argument (docs/theory_latent.md, Proposition 2)."""
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n_cfg):
        n = int(rng.choice([4, 8]))
        depth = int(rng.choice([2, 3]))
        k = int(rng.integers(1, n // 2 + 1))
        h = n + int(rng.choice([0, 2]))
        base = witness_config(width=h)
        task = {"n": n, "k": k, "sigma_inv": tuple(np.round(rng.uniform(3.0, 6.0, n - 2 * k), 2)),
                "sigma_inc_pre": tuple(np.round(rng.uniform(0.2, 1.5, k), 2)),
                "sigma_inc_post": tuple(np.round(rng.uniform(1.0, 3.0, k), 2)),
                "sigma_inc_ft": tuple(np.round(rng.uniform(0.0, 0.5, k), 2)),
                "beta": float(np.round(rng.uniform(1.5, 4.0), 2)),
                "ft_spec_var": float(np.round(rng.choice([0.0, rng.uniform(0, 1)]), 3)),
                "ft_rotation": float(np.round(rng.choice([0.0, rng.uniform(0, math.pi / 2)]), 3)),
                "basis": "random", "seed": i}
        model = {"depth": depth, "T": 6.0 if depth == 2 else 2.5, "seed": i}
        cfg = base.with_(task=task, model=model)
        pts.append(({"case": i, "n": n, "k": k, "width": h, "depth": depth, "alpha": float(np.round(rng.uniform(0.2, 0.9), 2)),
                     "ft_spec_var": task["ft_spec_var"], "ft_rotation": task["ft_rotation"]}, cfg))
    cfgs = []  # each case has its own alpha
    for labels, cu in pts:
        cfgs += [cu, cu.with_(pre={"mix_fraction": labels["alpha"]})]
    res = run_many(cfgs)
    return pd.DataFrame([{**labels, **compare(res[2 * j], res[2 * j + 1])} for j, (labels, _) in enumerate(pts)])


def smallest_instance() -> pd.DataFrame:
    """The smallest model with the effect: n = 2 (one inconsistent, one specialized feature,
    no invariant ones), k = 1, tie sigma_inc_post = beta = 3, width h = 1; control h = 2."""
    task = {"n": 2, "k": 1, "sigma_inv": (), "sigma_inc_pre": (1.0,), "sigma_inc_post": (3.0,),
            "sigma_inc_ft": (0.2,), "beta": 3.0}
    pts = [({"n": 2, "width": h}, witness_config(width=h, task=task)) for h in (1, 2)]
    df, _ = run_pairs(pts)
    return df


def spectra_cases() -> dict[str, tuple[LatentResult, LatentResult]]:
    """(unmixed, mixed) runs whose per-feature spectra show the mechanism."""
    cases = {"h=6, tie (witness)": witness_config(width=6),
             "h=8, tie (no bottleneck)": witness_config(width=8),
             "h=6, tie, D_ft variance 1 on V_spec": witness_config(width=6, task={"ft_spec_var": 1.0}),
             "h=6, tie, depth 3": witness_config(width=6, model={"depth": 3, "T": 3.0})}
    cfgs = []
    for c in cases.values():
        cfgs += [c, c.with_(pre={"mix_fraction": ALPHA})]
    res = run_many(cfgs)
    return {name: (res[2 * j], res[2 * j + 1]) for j, name in enumerate(cases)}
