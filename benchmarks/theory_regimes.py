"""Regimes of the paper's claims (a)-(d) in the Appendix C linear model.

Command (from the repository root; 52 s wall measured on the shared 2-core machine)::

    nice -n 19 python benchmarks/theory_regimes.py

Pure use of the public API (``simulate``, the sweep engine, the frontier and compute-matched
studies, the paper-check functions that judge them). Prints, in order:

alpha (and lambda in 4.) is the mixing fraction, ``stages.pre.mix_fraction``.

1. Post-training budget x alpha (exact GD, default task): L_im, L_ret.
2. Convergence of post-training operationalised by an early-stopping rule on L_post
   (evaluate every ``EVAL_EVERY`` steps, stop after ``PATIENCE`` evaluations without a relative
   improvement > r, restore the best step; budget ``MAX_POST``), over T (init scale), beta and
   r; per cell the stop steps and the Section 4.1 verdict (``check_sec41``) of the rows.
   2b: coupled models (random init, wider hidden layer, random basis, large init) at a short
   and a converged budget. 2c: Section 4.1 with finite D_post, minibatch SGD and the LM side's
   rule (every epoch, patience 2, strict improvement, best epoch restored). Then claim (a) on
   the early-stopped checkpoints of 2.
3. Frontier claims (a) and (d) (``frontier_checks``) with the shipped post-training grid, with
   post-training run to convergence, and with early-stopped post-training.
4. Compute-matched study (Section 4.2, finite samples, SGD): N x lambda (and one-pass vs
   several passes), best lambda, and the ``check_sec42`` verdict.
"""

from __future__ import annotations

import time
from dataclasses import replace
import warnings

import numpy as np
import pandas as pd

from early_exposure.frontier import make_row, validate_frontier
from early_exposure.io import stable_hash
from linear_theory import load_config, simulate
from linear_theory.studies.compute_matched import ComputeMatchedConfig, Sec41Config, frontier_from, study_rows
from linear_theory.studies.compute_matched import base_config as cm_base_config
from linear_theory.studies.finite import FiniteSpec, run_finite
from linear_theory.studies.frontier import FrontierConfig, frontier_rows, load_frontier_config
from linear_theory.sweep.engine import sweep_frame
from linear_theory.sweep.grid import Axis
from paper_checks.checks_frontier import CheckOptions, check_sec41, check_sec42, frontier_checks

warnings.filterwarnings("ignore")
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)

DEFAULT = "configs/theory/default.yaml"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
EVAL_EVERY = 10       # steps between evaluations of L_post
PATIENCE = 2          # evaluations without improvement (the LM side's stage2.patience)
MAX_POST = 3000       # post-training budget of the early-stopping rule (enough to converge everywhere below)
MIN_DELTAS = (0.0, 1e-6, 1e-4, 1e-3)  # relative improvement that counts (0 = strict, as the LM code)
OPTS = CheckOptions()
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def early_stop(L: np.ndarray, steps: np.ndarray, r: float, patience: int = PATIENCE) -> int:
    """Step of the best evaluation when the rule stops (or at the end of the budget).

    An evaluation improves when L < best * (1 - r); ``patience`` consecutive evaluations
    without improvement stop training and the best checkpoint is restored (as
    ``lm_experiments.engine.train``: ``val < best_val``, ``bad_evals >= patience``, best weights)."""
    best, best_step, bad = L[0], int(steps[0]), 0
    for v, s in zip(L[1:], steps[1:]):
        if v < best * (1.0 - r):
            best, best_step, bad = v, int(s), 0
        else:
            bad += 1
            if bad >= patience:
                break
    return best_step


def theory_row(cfg, alpha: float, losses: dict, post: dict, cm: bool = False, seed: int = 0) -> dict:
    up = {"cfg": str(cfg), "mix_fraction": alpha, "post": post}
    return make_row(side="theory", pipeline="pre>post>ft", method="mixed" if alpha > 0 else "unmixed",
                    mix_fraction=float(alpha), compute_matched=cm, upstream_id=stable_hash(up),
                    post_hparams=post, ft_lr=float(cfg.stages.ft.lr), ft_budget=float(cfg.stages.ft.steps),
                    seed=seed, L_im=float(losses["L_im"]), L_ret=float(losses["L_ret"]),
                    L_ft=float(losses["L_ft"]), L_pre=float(losses["L_pre"]), diverged=False,
                    run_id=stable_hash(up))


def sec41_verdict(rows: list[dict]) -> tuple[str, float, float]:
    df = validate_frontier(pd.DataFrame(rows))
    status, _, data = check_sec41(df, "theory", OPTS)
    return status, data["delta_L_im"]["point"], data["delta_L_ret"]["point"]


# ---------------------------------------------------------------- 1. budget x alpha
def study_budget() -> None:
    log("1/4 post-training budget x alpha (default task, exact GD, sweep engine)")
    base = load_config(DEFAULT)
    steps = (10, 25, 50, 100, 150, 200, 300, 500, 1000, 3000)
    df = sweep_frame(base, [Axis("stages.post.steps", steps, "list"), Axis("stages.pre.mix_fraction", ALPHAS, "list")])
    for col in ("L_im", "L_ret"):
        t = df.pivot(index="stages.post.steps", columns="stages.pre.mix_fraction", values=col)
        print(f"\n{col} (rows: post-training steps, columns: alpha; T = 10, beta = 4, lr 0.01)")
        print(t.to_string(float_format=lambda v: f"{v:.4g}"))
    rows = []
    for s, g in df.groupby("stages.post.steps"):
        recs = g[["L_im", "L_ret", "L_ft", "L_pre"]].to_dict("records")
        verdict = sec41_verdict([theory_row(base, a, r, {"steps": int(s)})
                                 for a, r in zip(g["stages.pre.mix_fraction"], recs)])
        rows.append({"post.steps": s, **dict(zip(("verdict (b)", "dL_im", "dL_ret"), verdict))})
    print("\nSection 4.1 check (check_sec41) on the alpha rows of each fixed budget")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


# ---------------------------------------------------------------- 2. early stopping
def run_es(T: float, beta: float) -> dict:
    """Per alpha: trajectory run, then one rerun per distinct stop step."""
    out = {}
    for a in ALPHAS:
        over = [f"model.T={T}", f"task.beta={beta}", f"stages.pre.steps={int(300 * T)}", f"stages.pre.mix_fraction={a}"]
        cfg = load_config(DEFAULT, over + [f"stages.post.steps={MAX_POST}"])
        res = simulate(cfg, trajectory_stride=EVAL_EVERY)
        tr = res.trajectory
        post = tr[tr["stage"] == "post"]
        L, st = post["L_post"].to_numpy(), post["step"].to_numpy()
        per_r = {"plateau": float("nan")}
        on_plateau = L[1:] > 1.0  # before the unmixed model's escape (L_post > 1)
        if a == 0.0 and on_plateau.any():
            rel = (L[:-1] - L[1:]) / L[:-1]
            per_r["plateau"] = float(rel[on_plateau].min())
        cache: dict[int, dict] = {}
        for r in MIN_DELTAS:
            s = early_stop(L, st, r)
            if s not in cache:
                cache[s] = simulate(load_config(DEFAULT, over + [f"stages.post.steps={s}"])).losses
            per_r[r] = (s, cache[s], cfg)
        out[a] = per_r
    return out


def study_early_stopping() -> dict:
    log("2/4 early-stopping rule on L_post x T x beta (pre steps = 300 T, so pretraining converges)")
    table, keep = [], {}
    for beta in (4.0, 1.0):
        for T in (5.0, 10.0, 20.0, 40.0):
            es = run_es(T, beta)
            keep[(T, beta)] = es
            for r in MIN_DELTAS:
                rows = [theory_row(es[a][r][2], a, es[a][r][1], {"steps": es[a][r][0], "rule": r}) for a in ALPHAS]
                status, d_im, d_ret = sec41_verdict(rows)
                table.append({"beta": beta, "T": T, "r": r,
                              "stop(a=0)": es[0.0][r][0], "stop(a=.5)": es[0.5][r][0],
                              "L_im(a=0)": es[0.0][r][1]["L_im"], "L_im(a=1)": es[1.0][r][1]["L_im"],
                              "L_ret(a=0)": es[0.0][r][1]["L_ret"], "L_ret(a=.5)": es[0.5][r][1]["L_ret"],
                              "L_ret(a=1)": es[1.0][r][1]["L_ret"], "dL_im": d_im, "dL_ret": d_ret,
                              "min rel impr (a=0)": es[0.0]["plateau"],
                              "verdict (b)": status})
            log(f"   beta={beta:g} T={T:g} done")
    print("\nEarly stopping (eval every %d steps, patience %d, budget %d, best step restored); "
          "dL = least-squares change over alpha 0->1" % (EVAL_EVERY, PATIENCE, MAX_POST))
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return keep


def study_coupled() -> None:
    """Non-decoupled models (full-matrix path): can converged arms differ in L_ret?"""
    log("2b coupled models (random init; small e^-T or large e^0, e^-1 scale; width; basis), pre 3000 steps")
    rows = []
    settings = (["model.init=random"], ["model.init=random", "model.width=12"],
                ["model.init=random", "task.basis=random"], ["model.init=random", "model.T=1"],
                ["model.init=random", "model.T=0"], ["model.init=random", "model.T=0", "task.basis=random"])
    for over in settings:
        for post in (50, MAX_POST):
            rec = {"setting": " ".join(o.split(".")[-1] for o in over), "post.steps": post}
            trs = []
            for a in ALPHAS:
                cfg = load_config(DEFAULT, over + [f"stages.pre.mix_fraction={a}", f"stages.post.steps={post}",
                                                   "stages.pre.steps=3000"])
                res = simulate(cfg)
                trs.append(theory_row(cfg, a, res.losses, {"steps": post, "setting": rec["setting"]}))
                if a in (0.0, 1.0):
                    rec[f"L_im(a={a:g})"] = res.losses["L_im"]
            for a, r in zip(ALPHAS, trs):
                rec[f"L_ret(a={a:g})"] = r["L_ret"]
            rec["verdict (b)"] = sec41_verdict(trs)[0]
            rows.append(rec)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.5g}"))


def study_sgd_early_stopping() -> None:
    """Section 4.1 analogue with finite D_post, minibatch SGD and the LM side's rule."""
    log("2c Section 4.1 with SGD on finite D_post + early stopping (eval every epoch, patience 2, strict, "
        "best restored; validation = exact L_post), 3 seeds, batch 8, post lr 0.02, pre steps 60 T")
    table = []
    for T in (10.0, 20.0):
        cfg = load_config(DEFAULT, ["stages.post.lr=0.02", f"model.T={T}", f"stages.pre.steps={int(60 * T)}"])
        for N, E in ((100, 30), (400, 12)):
            rows, stops = [], {}
            for seed in (0, 1, 2):
                specs, keys = [], []
                for lam in ALPHAS:
                    extra = int(round(lam * N))
                    for e in range(1, E + 1):  # the e-epoch run is the prefix of the (e+1)-epoch run
                        specs.append(FiniteSpec(N + extra, extra / (N + extra), seed, 400.0, 8, e))
                        keys.append((lam, e))
                res = dict(zip(keys, run_finite(cfg, specs)))
                for lam in ALPHAS:
                    L = np.array([res[(lam, e)]["L_im"] for e in range(1, E + 1)])
                    best = early_stop(L, np.arange(1, E + 1), 0.0)
                    stops.setdefault(lam, []).append(best)
                    r = res[(lam, best)]
                    rows.append(theory_row(cfg, lam, r, {"N": N, "epochs": best, "seed": seed}, seed=seed))
            df = validate_frontier(pd.DataFrame(rows))
            status, _, data = check_sec41(df, "theory", OPTS)
            m_im, m_ret = data["means"], data["means_L_ret"]
            table.append({"T": T, "N": N, "max ep": E,
                          **{f"stop ep(l={a:g})": "/".join(map(str, stops[a])) for a in (0.0, 0.5, 1.0)},
                          **{f"L_im(l={a:g})": m_im[a] for a in (0.0, 0.5, 1.0)},
                          **{f"L_ret(l={a:g})": m_ret[a] for a in (0.0, 0.5, 1.0)},
                          "verdict (b)": status})
            log(f"   T={T:g} N={N} done")
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


# ---------------------------------------------------------------- 3. frontier (a), (d)
def frontier_verdicts(fc: FrontierConfig, label: str) -> list[dict]:
    rows, _ = frontier_rows(fc)
    df = validate_frontier(pd.DataFrame(rows))
    out = []
    for c in frontier_checks(df, "theory", "theory", OPTS, claims="ad"):
        out.append({"protocol": label, "claim": c["analogue"],
                    "status": c["status"], "evidence": str(c.get("evidence", ""))[:260]})
    return out


def study_frontier() -> None:
    log("3/4 frontier claims (a), (d): shipped grid vs converged vs early-stopped post-training")
    shipped = load_frontier_config("configs/theory/sweep_frontier.yaml")
    res = frontier_verdicts(shipped, "shipped (post.steps 25-200)")
    conv = replace(shipped, post=replace(shipped.post, steps=(MAX_POST,)))
    res += frontier_verdicts(conv, f"converged (post.steps {MAX_POST})")
    for r in res:
        print(f"{r['protocol']:<30} {r['claim']:<28} {r['status']:<13} {r['evidence']}")
    print("\nverdicts per single post-training budget (post lr {0.01, 0.02}; ft grid as shipped)")
    table = []
    for steps in (25, 50, 100, 200, 500, MAX_POST):
        for reg in ((0.0, 0.1), (0.0,)):
            fc = replace(shipped, post=replace(shipped.post, steps=(steps,), reg=reg))
            v = {r["claim"]: r["status"] for r in frontier_verdicts(fc, "")}
            table.append({"post.steps": steps, "reg": "/".join(map(str, reg)), **v})
    print(pd.DataFrame(table).to_string(index=False))


def frontier_es(keep: dict) -> None:
    """(a) on early-stopped checkpoints: unmixed vs mixed (alpha 0.5) across a ft-lr sweep."""
    print("\n(a) with early-stopped post-training (per (T, beta, r): unmixed and alpha = 0.5 arms, "
          "ft lr in {0.005, 0.01, 0.02}, ft steps in {50, 200})")
    table = []
    for (T, beta), es in keep.items():
        if beta != 4.0:
            continue
        for r in MIN_DELTAS:
            rows = []
            for a in (0.0, 0.5):
                s, _, cfg = es[a][r]
                for lr in (0.005, 0.01, 0.02):
                    for fs in (50, 200):
                        c = cfg.replace([f"stages.post.steps={s}", f"stages.ft.lr={lr}", f"stages.ft.steps={fs}"])
                        rows.append(theory_row(c, a, simulate(c).losses, {"steps": s, "rule": r}))
            df = validate_frontier(pd.DataFrame(rows))
            st = {c["analogue"]: c["status"] for c in frontier_checks(df, "theory", "theory", OPTS, claims="a")}
            table.append({"T": T, "r": r, "stop(a=0)": es[0.0][r][0], **st})
    print(pd.DataFrame(table).to_string(index=False))


# ---------------------------------------------------------------- 4. compute-matched
def study_compute_matched() -> None:
    log("4/4 compute-matched (Section 4.2): N x lambda, 3 seeds, batch 8, post lr 0.02, one pass")
    lams = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    summ, ret_tab, im_tab = [], {}, {}
    for N in (200, 400, 1000, 2000, 5000):
        cm = ComputeMatchedConfig(set=("stages.post.lr=0.02", "stages.ft.steps=200"), n_samples=N, mix_fraction=lams,
                                  seeds=(0, 1, 2), pre_pool=400.0, batch=8, sec41=Sec41Config(enabled=False))
        df = study_rows(cm)
        m = df.groupby("mix_fraction")[["L_im", "L_ret", "post_steps"]].mean()
        ret_tab[N], im_tab[N] = m["L_ret"], m["L_im"]
        fr = validate_frontier(pd.DataFrame(frontier_from(df, cm, cm_base_config(cm))))
        status, desc, data = check_sec42(fr, "theory", OPTS)
        summ.append({"N": N, "post steps at lambda 0": int(m.loc[0.0, "post_steps"]),
                     "best lambda": float(m["L_ret"].idxmin()), "L_ret best": m["L_ret"].min(),
                     "L_ret(0)": m.loc[0.0, "L_ret"], "L_ret(1)": m.loc[1.0, "L_ret"],
                     "argmax L_im": float(m["L_im"].idxmax()), "verdict (c)": status})
        log(f"   N={N} done")
    print("\nmean L_im over 3 seeds (rows lambda, columns N)")
    print(pd.DataFrame(im_tab).to_string(float_format=lambda v: f"{v:.4g}"))
    print("\nmean L_ret over 3 seeds (rows lambda, columns N)")
    print(pd.DataFrame(ret_tab).to_string(float_format=lambda v: f"{v:.4g}"))
    print()
    print(pd.DataFrame(summ).to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    log("   several passes over the (1 - lambda) N post samples (not compute-matched any more), N = 400")
    cfg = cm_base_config(ComputeMatchedConfig(set=("stages.post.lr=0.02", "stages.ft.steps=200")))
    rows = []
    for ep in (1, 2, 4, 8):
        specs = [FiniteSpec(400, lam, s, 400.0, 8, ep) for s in (0, 1, 2) for lam in lams]
        for spec, res in zip(specs, run_finite(cfg, specs)):
            rows.append({"epochs": ep, "lambda": spec.mix_fraction, "L_im": res["L_im"], "L_ret": res["L_ret"]})
    df = pd.DataFrame(rows).groupby(["lambda", "epochs"])["L_ret"].mean().unstack()
    print("\nmean L_ret, N = 400 (rows lambda, columns epochs over the post-training share)")
    print(df.to_string(float_format=lambda v: f"{v:.4g}"))


def main() -> None:
    study_budget()
    keep = study_early_stopping()
    study_coupled()
    study_sgd_early_stopping()
    frontier_es(keep)
    study_frontier()
    study_compute_matched()
    log("done")


if __name__ == "__main__":
    main()
