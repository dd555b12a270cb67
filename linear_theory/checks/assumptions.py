"""Assumption checker for Appendix C: every assumption/definition with its numbers, joint
feasibility, and the smallest relaxation under which the theorems' conclusion holds in simulation.

Command::

    python -m linear_theory assumptions --config configs/theory/default.yaml [--out DIR]

prints :func:`assumptions_table` and (with ``--out``) writes ``DIR/assumptions.json``
(:func:`run_assumptions` plus provenance; format in docs/INTERFACES.md).

Free parameters: c_mis is taken at its supremum min_i (sigma^post_i - sigma^pre_i) over the
inconsistent features (Definition C.3 needs a strict ">"; every smaller c_mis also qualifies, and a
larger c_mis only makes C.4 easier, so the supremum is the most favourable choice for C.4); alpha
(the paper's symbol for ``stages.pre.mix_fraction``) ranges over [0, 1]; eps over (0, bound of C.13).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from early_exposure.configs import to_dict
from early_exposure.frontier import STAGES
from early_exposure.seeding import stream
from linear_theory.checks.errata import ASSUMPTION_ERRATA
from linear_theory.config import SimConfig
from linear_theory.simulate import simulate
from linear_theory.tasks import blocks, build_task, mixture_modes

__all__ = ["check_assumptions", "feasibility", "run_assumptions", "assumptions_table", "alpha_interval_c6"]


def _f(x: Any) -> Any:
    """Plain floats/lists for JSON (inf -> 'inf')."""
    if isinstance(x, np.ndarray):
        return [_f(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_f(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def alpha_interval_c6(s_pre: np.ndarray, s_post: np.ndarray, beta: float) -> tuple[float, float] | None:
    """{alpha in [0, 1]: alpha beta > (1-alpha) s_pre_i + alpha s_post_i for all i} as (lo, hi], or None.

    alpha (beta - s_post_i + s_pre_i) > s_pre_i: needs beta > s_post_i - s_pre_i, then
    alpha > s_pre_i / (beta - s_post_i + s_pre_i).
    """
    lo = 0.0
    for p, q in zip(s_pre, s_post):
        slope = beta - q + p
        if slope <= 0:
            return None
        lo = max(lo, p / slope)
    return (lo, 1.0) if lo < 1.0 else None


def _post_gamma(cfg: SimConfig) -> tuple[float, Any]:
    """Gamma of Assumption C.11 measured along the configured post-training trajectory."""
    res = simulate(cfg, trajectory_stride=1)
    if res.trajectory is None:
        return float("nan"), res
    tr = res.trajectory[res.trajectory.stage == "post"]
    gamma = float(max(np.max(tr.W1_op.to_numpy()) ** 2, np.max(tr.W2_op.to_numpy()) ** 2)) if len(tr) else float("nan")
    return gamma, res


def check_assumptions(cfg: SimConfig) -> list[dict[str, Any]]:
    """Evaluate C.1-C.8 and C.11-C.13 (with the eps condition) for ``cfg``; numbers behind each verdict."""
    task = cfg.task
    tm = build_task(task)
    n, k = task.n, task.k
    bl = blocks(n, k)
    inv, inc, sp = bl["invariant"], bl["inconsistent"], bl["specialized"]
    s_pre, s_post = tm.pre.sigma, tm.post.sigma
    beta, alpha = task.beta, cfg.stages.pre.mix_fraction
    out: list[dict[str, Any]] = []

    # C.1 simultaneous diagonalisability
    orth = max(float(np.max(np.abs(tm.U.T @ tm.U - np.eye(n)))), float(np.max(np.abs(tm.V.T @ tm.V - np.eye(n)))))
    diag_err = max(float(np.linalg.norm(tm.U.T @ tm.A(t) @ tm.V - np.diag(getattr(tm, t).sigma))) for t in STAGES)
    out.append({"id": "C.1", "holds": bool(orth < 1e-12 and diag_err < 1e-12),
                "numbers": {"orthonormality_error": orth, "max_offdiag_of_U^T_A_V": diag_err, "basis": task.basis},
                "explanation": "A^t = U Sigma_t V^T with shared orthonormal U, V by construction"})
    # C.2 invariant features
    same = bool(np.all(s_pre[inv] == s_post[inv]) and np.all(s_post[inv] == tm.ft.sigma[inv]))
    out.append({"id": "C.2", "holds": same, "numbers": {"sigma_inv": _f(s_pre[inv])},
                "explanation": "invariant features take the same value in all three tasks"})
    # C.3 inconsistent features
    gaps = s_post[inc] - s_pre[inc]
    c_mis = float(np.min(gaps)) if k else float("inf")
    out.append({"id": "C.3", "holds": bool(k == 0 or np.all(gaps > 0)),
                "numbers": {"sigma_post_minus_pre": _f(gaps), "c_mis_sup": _f(c_mis)},
                "explanation": "sigma_post > sigma_pre and sigma_post - sigma_pre > c_mis; any c_mis < "
                               f"min gap = {c_mis:.4g} qualifies (supremum used below)"})
    # C.4 specialized features
    zero_cov = bool(np.all(tm.pre.cov[sp] == 0) and np.all(tm.ft.cov[sp] == 0))
    c4 = bool(zero_cov and beta > 0 and beta < c_mis / 2)
    out.append({"id": "C.4", "holds": c4,
                "numbers": {"beta": beta, "c_mis_sup_over_2": _f(c_mis / 2), "zero_variance_under_D_pre_D_ft": zero_cov},
                "explanation": "specialized directions have zero variance under D_pre and D_ft, Sigma_post = beta > 0, "
                               f"and beta < c_mis/2 ({beta:.4g} vs {c_mis / 2:.4g})"})
    # C.5 invariant features high magnitude
    others = np.concatenate([s_pre[inc], s_pre[sp]]) if k else np.zeros(0)
    others_post = np.concatenate([s_post[inc], s_post[sp]]) if k else np.zeros(0)
    min_inv = float(np.min(s_pre[inv])) if inv.stop > 0 else float("inf")
    c5 = bool(min_inv > (np.max(others) if others.size else -np.inf) and min_inv > (np.max(others_post) if others_post.size else -np.inf))
    out.append({"id": "C.5", "holds": c5,
                "numbers": {"min_sigma_inv": _f(min_inv), "max_other_sigma_pre": _f(np.max(others) if others.size else 0.0),
                            "max_other_sigma_post": _f(np.max(others_post) if others_post.size else 0.0)},
                "explanation": "every invariant value exceeds every inconsistent/specialized value of Sigma_pre and Sigma_post"})
    # C.6 sufficient specialized mixing
    rhs = (1 - alpha) * s_pre[inc] + alpha * s_post[inc]
    interval = alpha_interval_c6(s_pre[inc], s_post[inc], beta) if k else (0.0, 1.0)
    out.append({"id": "C.6", "holds": bool(k == 0 or np.all(alpha * beta > rhs)),
                "numbers": {"alpha": alpha, "alpha_beta": alpha * beta, "rhs_(1-a)s_pre+a_s_post": _f(rhs),
                            "alpha_interval_where_C6_holds": _f(list(interval)) if interval else None},
                "explanation": "alpha beta exceeds the mixed Sigma_xy value of every inconsistent feature at the "
                               "configured alpha" + ("" if interval else "; no alpha in [0, 1] satisfies it")})
    # C.7 joint decomposition (whitened lambda = 1 as printed)
    sxy, lam = mixture_modes(tm, alpha)
    out.append({"id": "C.7", "holds": bool(np.all((lam == 1) | (sxy == 0))),
                "numbers": {"sigma_xy": _f(sxy), "lambda_x": _f(lam)},
                "explanation": "Sigma_xy = U D_xy V^T and Sigma_xx diagonal in the V basis hold by construction; the "
                               "printed lambda_i = 1 (whitened input) fails for 0 < alpha < 1 on the specialized "
                               "modes (lambda = alpha) and for alpha < 1 is 0 there under D_pre"})
    # C.8 init scale
    is_paper = cfg.model.init == "paper" or (cfg.model.init == "aligned" and task.basis == "identity")
    out.append({"id": "C.8", "holds": bool(is_paper and cfg.width == n),
                "numbers": {"init": cfg.model.init, "T": cfg.model.T, "exp(-2T)": math.exp(-2 * cfg.model.T),
                            "width": cfg.width},
                "explanation": "W1 = W2 = exp(-T) I_n (paper init, square)"})
    # C.11 / C.12 / C.13 along the configured post-training
    gamma, res = _post_gamma(cfg)
    eta, lam_reg, K = cfg.stages.post.lr, cfg.stages.post.reg, cfg.stages.post.steps
    out.append({"id": "C.11", "holds": bool(math.isfinite(gamma)),
                "numbers": {"Gamma_measured": _f(gamma), "diverged": res.diverged},
                "explanation": "Gamma = max over post-training steps of ||W1||_op^2 and ||W2||_op^2 (the printed "
                               "assumption lists W1 twice; both factors are bounded here)"})
    c12 = 4 * eta * (lam_reg + 2) * gamma
    out.append({"id": "C.12", "holds": bool(c12 < 1),
                "numbers": {"4_eta_(lambda+2)_Gamma": _f(c12), "eta": eta, "lambda": lam_reg, "Gamma": _f(gamma)},
                "explanation": "4 eta (lambda + 2) Gamma < 1"})
    nz = s_post[s_post != 0]
    c_min = float(np.min(nz)) if nz.size else float("nan")
    eps_printed = c_mis / (2 * c_mis - 4 * beta) if (2 * c_mis - 4 * beta) > 0 else float("nan")
    eps_corrected = c_mis ** 2 / (2 * c_mis + 4 * beta) if k else float("inf")
    eps = 0.5 * eps_printed if math.isfinite(eps_printed) and eps_printed > 0 else 0.5 * eps_corrected
    K_req = math.log(100 * gamma / eps) / (lam_reg * c_min) if lam_reg > 0 and math.isfinite(gamma) else float("inf")
    out.append({"id": "C.13", "holds": bool(K >= K_req),
                "numbers": {"K_steps": K, "K_required_as_printed": _f(K_req), "K_required_in_steps_if_eta_missing": _f(K_req / eta) if eta > 0 else "inf",
                            "lambda": lam_reg, "c_min": c_min, "eps_used": _f(eps), "Gamma": _f(gamma)},
                "explanation": "K >= log(100 Gamma/eps)/(lambda c_min); infinite for lambda = 0; eps is half its allowed bound"})
    out.append({"id": "C.13-eps", "holds": bool(math.isfinite(eps_printed) and eps_printed > 0),
                "numbers": {"printed_bound_c_mis/(2c_mis-4beta)": _f(eps_printed),
                            "bound_implied_by_C17_proof_c_mis^2/(2c_mis+4beta)": _f(eps_corrected),
                            "c_mis": _f(c_mis), "beta": beta},
                "explanation": "the printed bound is positive only when beta < c_mis/2 (C.4); the C.17 proof's own "
                               "inequality k[c_mis^2 - 2 c_mis eps - 4 beta eps] > 0 needs eps < c_mis^2/(2 c_mis + 4 beta)"})
    return out


def _random_feasibility(samples: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Monte Carlo over (sigma_pre, sigma_post, beta, alpha) >= 0: how often C.3 + C.4 + C.6 hold at once."""
    rng = stream(seed)  # == np.random.default_rng(seed)
    s_pre = rng.uniform(0, 5, samples)
    s_post = rng.uniform(0, 10, samples)
    beta = rng.uniform(0, 10, samples)
    alpha = rng.uniform(0, 1, samples)
    c_mis = s_post - s_pre
    c3 = c_mis > 0
    c4 = beta < c_mis / 2
    c6 = alpha * beta > (1 - alpha) * s_pre + alpha * s_post
    return {"samples": samples, "C3": int(c3.sum()), "C3_and_C4": int((c3 & c4).sum()), "C6": int(c6.sum()),
            "C3_and_C6": int((c3 & c6).sum()), "C4_and_C6": int((c4 & c6).sum()),
            "C3_and_C4_and_C6": int((c3 & c4 & c6).sum())}


def _conclusion(cfg: SimConfig, alpha: float) -> dict[str, Any]:
    """Theorem C.15/C.17 conclusion in simulation: idealized inits and the configured (real) pipeline."""
    out: dict[str, Any] = {}
    for kind, init in (("idealized", "ideal"), ("real_pretraining", cfg.model.init)):
        r = {}
        for name, a in (("mixed", alpha), ("unmixed", 0.0)):
            c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=init),
                                    stages=dataclasses.replace(cfg.stages, pre=dataclasses.replace(cfg.stages.pre, mix_fraction=a)))
            if init == "ideal":
                c = dataclasses.replace(c, stages=dataclasses.replace(
                    c.stages, post=dataclasses.replace(c.stages.post, steps=max(c.stages.post.steps, 1000)),
                    ft=dataclasses.replace(c.stages.ft, steps=max(c.stages.ft.steps, 1000))))
            res = simulate(c)
            r[name] = {"L_im": res.losses["L_im"], "L_ret": res.losses["L_ret"],
                       "Delta": res.losses["L_ret"] - res.losses["L_im"], "diverged": res.diverged}
        r["Delta_unmixed_gt_Delta_mixed"] = bool(r["unmixed"]["Delta"] > r["mixed"]["Delta"])
        r["L_ret_mixed_lt_unmixed"] = bool(r["mixed"]["L_ret"] < r["unmixed"]["L_ret"])
        out[kind] = r
    return out


def feasibility(cfg: SimConfig) -> dict[str, Any]:
    """Joint feasibility of the assumptions and the smallest relaxation that keeps the conclusion."""
    task = cfg.task
    tm = build_task(task)
    inc = blocks(task.n, task.k)["inconsistent"]
    s_pre, s_post = tm.pre.sigma[inc], tm.post.sigma[inc]
    gaps = s_post - s_pre
    c_mis = float(np.min(gaps)) if task.k else float("inf")
    alphas = np.linspace(0, 1, 1001)
    c6_grid = np.array([np.all(a * task.beta > (1 - a) * s_pre + a * s_post) for a in alphas])
    c4_ok = task.beta < c_mis / 2
    chain = ("C.3: sigma_post_i >= sigma_pre_i + c_mis; C.6: alpha beta > (1-alpha) sigma_pre_i + alpha sigma_post_i "
             ">= sigma_pre_i + alpha c_mis >= alpha c_mis; C.4: c_mis > 2 beta, so alpha beta > 2 alpha beta, i.e. "
             "alpha beta < 0 -- impossible for alpha in [0, 1], beta > 0 (alpha = 0 gives 0 > sigma_pre_i >= 0)")
    mc = _random_feasibility()
    infeasible = [{"ids": ["C.3", "C.4", "C.6"], "chain": chain,
                   "numbers": {"this_task_alpha_grid_points_with_C6": int(c6_grid.sum()),
                               "this_task_C4_holds": bool(c4_ok), "random_tasks": mc}}]
    interval = alpha_interval_c6(s_pre, s_post, task.beta) if task.k else (0.0, 1.0)
    # smallest change: drop "beta < c_mis/2" from C.4 (only the C.17 eps bound uses it); keep C.6.
    relaxed = {"change": "drop 'beta < c_mis/2' from Definition C.4; keep C.6 (alpha beta above the inconsistent "
                         "Sigma_xy values) and require sigma_ft != sigma_post on the inconsistent features (what C.17's "
                         "proof actually uses in place of c_mis); use eps < c'^2/(2c' + 4 beta) with "
                         "c' = min |sigma_post - sigma_ft|",
               "alpha_interval_where_C6_holds": _f(list(interval)) if interval else None}
    if interval is not None:
        a_cfg = cfg.stages.pre.mix_fraction
        a_star = a_cfg if interval[0] < a_cfg <= interval[1] else float(interval[0] + 0.5 * (interval[1] - interval[0]))
        relaxed["alpha_used"] = a_star
        relaxed["simulation"] = _conclusion(cfg, a_star)
        relaxed["conclusion_holds_in_simulation"] = bool(
            relaxed["simulation"]["idealized"]["Delta_unmixed_gt_Delta_mixed"]
            and abs(relaxed["simulation"]["idealized"]["mixed"]["Delta"]) < 1e-9
            and relaxed["simulation"]["real_pretraining"]["L_ret_mixed_lt_unmixed"])
    # the other way round: keep C.4 (beta < c_mis/2), which forces C.6 to fail -> conclusion fails
    beta_c4 = 0.45 * c_mis if task.k else task.beta
    cfg_c4 = dataclasses.replace(cfg, task=dataclasses.replace(task, beta=float(beta_c4)))
    alt = {"change": f"keep C.4 with beta = {beta_c4:.4g} < c_mis/2 (so C.6 cannot hold), alpha as configured",
           "simulation": _conclusion(cfg_c4, cfg.stages.pre.mix_fraction)}
    alt["conclusion_holds_in_simulation"] = bool(
        alt["simulation"]["idealized"]["Delta_unmixed_gt_Delta_mixed"]
        and abs(alt["simulation"]["idealized"]["mixed"]["Delta"]) < 1e-9)
    return {"jointly_feasible": False if task.k else True,
            "infeasible_subsets": infeasible if task.k else [],
            "minimal_relaxation": relaxed,
            "alternative_keep_C4": alt}


def run_assumptions(cfg: SimConfig) -> dict[str, Any]:
    """The body of assumptions.json (without provenance)."""
    return {"assumptions": check_assumptions(cfg), "feasibility": feasibility(cfg), "errata": ASSUMPTION_ERRATA,
            "config": to_dict(cfg)}


def assumptions_table(body: dict[str, Any]) -> str:
    """The verdict table the ``assumptions`` command prints for a :func:`run_assumptions` body."""
    lines = [f"{'id':<9} {'holds':<6} numbers", "-" * 100]
    for a in body["assumptions"]:
        nums = ", ".join(f"{k}={v if not isinstance(v, float) else f'{v:.4g}'}" for k, v in a["numbers"].items())
        lines.append(f"{a['id']:<9} {str(a['holds']):<6} {nums[:160]}")
    f = body["feasibility"]
    lines.append("-" * 100)
    lines.append(f"jointly feasible: {f['jointly_feasible']}")
    for s in f["infeasible_subsets"]:
        lines.append(f"  infeasible {s['ids']}: {s['chain']}")
    mr = f["minimal_relaxation"]
    lines.append(f"  minimal relaxation: {mr['change']}")
    if "conclusion_holds_in_simulation" in mr:
        lines.append(f"    conclusion holds in simulation (alpha = {mr['alpha_used']:.3g}): {mr['conclusion_holds_in_simulation']}")
    alt = f["alternative_keep_C4"]
    lines.append(f"  alternative: {alt['change']} -> conclusion holds: {alt['conclusion_holds_in_simulation']}")
    return "\n".join(lines)
