"""The lambda studies of the paper, claims (b) and (c), judged on a frontier table (either side).

Rows: for each (lambda, seed) the post-trained checkpoint with the lowest L_im (the one early
stopping / the hyperparameter sweep selects) and its L_ret at the gentlest fine-tuning LR
shared by every lambda (the paper fixes one small LR). Every statistic is computed on each
seed alone (a change over the lambda range is the least-squares slope times the range) and
summarised over seeds by a Student-t interval, the t-test p and the exact sign-flip p. LM
thresholds are absolute, in nats (:mod:`paper_checks.common`); the theory side's are 1% of
its loss scale. One exact theory seed is judged on its values.

- (b) Section 4.1: L_im nearly flat in lambda while L_ret falls (post-training to
  convergence). "Flat" is an equivalence test (TOST) of the L_im change against the fixed
  margin ``FLAT_MARGIN_NATS``, on at least ``MIN_LAMBDAS_FLAT`` lambdas. PASS: TOST p < alpha
  and the L_ret-change interval below -MEANINGFUL; FAIL: the L_ret change is not meaningfully
  negative (interval above -MEANINGFUL) or the L_im-change interval lies outside the margin.
- (c) Section 4.2, compute-matched (one pass over D_post in all), three statements:
  c1 L_im worsens with lambda (interval of the change above +MEANINGFUL);
  c2 L_ret improves with lambda and its best is at lambda > 0 (change interval below
  -MEANINGFUL and L_ret(0) - min_{lambda>0} L_ret interval above +MEANINGFUL);
  c3 the optimum is interior, "between the two extremes" (min endpoint L_ret - min interior
  L_ret interval above +MEANINGFUL). Each FAILs when its interval lies on the other side of
  the bar. All three first need the testbed to pose (c): the compute-matched lambda = 0
  single pass must reach ``PRECONDITION_SHARE`` of the L_im gain early-stopped
  post-training reaches from the same theta_pre ((L_stage1 - L_im^cm) / (L_stage1 -
  L_im^es), mean over seeds, with L_stage1 = the D_post loss of the unmixed theta_pre);
  else, or when that cannot be computed, INCONCLUSIVE with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.frontier import BASE_METHODS
from early_exposure.runs import RunTree
from early_exposure.stats import Interval, sign_flip_p, slope, t_interval, t_test_p, tost
from paper_checks.common import MIN_LAMBDAS_FLAT, CheckOptions, fmt, meaningful, p_fields, usable
from paper_checks.report import make_check, no_data


def per_lambda_table(df: pd.DataFrame, compute_matched: bool) -> pd.DataFrame:
    """Rows of the lambda studies: for each (lambda, seed) the post-trained checkpoint with
    the lowest L_im, with all its fine-tuning rows. Base methods only."""
    rows = df.loc[df["method"].isin(BASE_METHODS) & (df["compute_matched"].astype(bool) == compute_matched)]
    rows = usable(rows)
    if rows.empty:
        return rows
    budget = rows["ft_budget"].mode().iloc[0]
    rows = rows.loc[rows["ft_budget"] == budget]
    best = (rows.sort_values("L_im", kind="stable")
            .drop_duplicates(["mix_fraction", "seed"])[["mix_fraction", "seed", "upstream_id"]])
    return rows.merge(best, on=["mix_fraction", "seed", "upstream_id"])


def _common_ft_lrs(t: pd.DataFrame) -> list[float]:
    per_lam = [set(g["ft_lr"]) for _, g in t.groupby("mix_fraction")]
    return sorted(set.intersection(*per_lam)) if per_lam else []


def _by_seed(t: pd.DataFrame, col: str, ft_lr: float | None) -> dict[Any, pd.Series]:
    """seed -> Series lambda -> mean ``col`` (L_im: one value per checkpoint)."""
    sub = t if ft_lr is None else t.loc[t["ft_lr"] == ft_lr]
    if ft_lr is None:
        sub = sub.drop_duplicates(["mix_fraction", "seed"])
    return {s: g.groupby("mix_fraction")[col].mean().sort_index() for s, g in sub.groupby("seed")}


def _change(series: dict[Any, pd.Series], span: float) -> dict[Any, float]:
    return {s: slope(v.index.to_numpy(float), v.to_numpy(float)) * span for s, v in series.items()}


def _run_groups(t: pd.DataFrame, ft_lr: float | None) -> dict[Any, dict[float, list[str]]]:
    """seed -> lambda -> run ids (L_im: one run per checkpoint; L_ret: the runs at ``ft_lr``)."""
    sub = t.drop_duplicates(["mix_fraction", "seed"]) if ft_lr is None else t.loc[t["ft_lr"] == ft_lr]
    return {s: {float(lam): list(g2["run_id"]) for lam, g2 in g.groupby("mix_fraction")}
            for s, g in sub.groupby("seed")}


def _boot(examples: Any, t: pd.DataFrame, ft_lr: float | None, col: str, fn: Any, opts: CheckOptions,
          level: float | None = None) -> Interval | None:
    """Seed x document bootstrap interval (None without per-example losses)."""
    if examples is None:
        return None
    return examples.per_seed_interval(_run_groups(t, ft_lr), col, fn, opts, level)


def _slope_fn(span: float) -> Any:
    return lambda v: slope(v.index.to_numpy(float), v.to_numpy(float)) * span


def _boot_note(parts: dict[str, Interval | None], side: str) -> str:
    got = {k: v for k, v in parts.items() if v is not None}
    if got:
        return "; seed x document bootstrap " + ", ".join(f"{k} {fmt(v)}" for k, v in got.items())
    return "; seed-only intervals (no per-example losses)" if side == "lm" else ""


class _Judge:
    """Per-seed values -> (interval, t-test p against ``null``, sign-flip p), or the exact value."""

    def __init__(self, exact: bool, opts: CheckOptions):
        self.exact, self.opts = exact, opts

    def __call__(self, per_seed: dict[Any, float], null: float = 0.0) -> tuple[Interval, float, float]:
        vals = [v for v in per_seed.values() if np.isfinite(v)]
        if self.exact:
            v = float(np.mean(vals)) if vals else float("nan")
            return Interval(v, v, v, 0, 0), float("nan"), float("nan")
        return (t_interval(vals, level=self.opts.level), t_test_p(vals, null=null),
                sign_flip_p([v - null for v in vals]))


def _seeds_ok(t: pd.DataFrame, side: str, opts: CheckOptions) -> tuple[bool, bool, str]:
    """(judgeable, exact, note)."""
    n = t["seed"].nunique()
    if side == "theory" and n == 1:
        return True, True, "1 seed (theory: treated as exact)"
    if n >= opts.min_seeds:
        return True, False, f"{n} seeds"
    return False, False, f"too few seeds ({n} < {opts.min_seeds})"


def check_sec41(df: pd.DataFrame, side: str, opts: CheckOptions,
                examples: Any = None) -> tuple[str, str, dict[str, Any]]:
    """(b) Section 4.1: L_im nearly flat in lambda (TOST, fixed margin) while L_ret falls.
    With per-example losses (``examples``) the seed x document bootstrap intervals must agree:
    the (1 - 2 alpha) one of the L_im change inside the margin, the L_ret change's below -bar."""
    t = per_lambda_table(df, compute_matched=False)
    lams = sorted(t["mix_fraction"].unique()) if not t.empty else []
    if len(lams) < 2:
        return "INCONCLUSIVE", f"no data: need >= {MIN_LAMBDAS_FLAT} mixing fractions, have {lams}", {"lambdas": lams}
    lrs = _common_ft_lrs(t)
    if not lrs:
        return "INCONCLUSIVE", "no data: no fine-tuning lr shared by every lambda", {"lambdas": lams}
    lr = lrs[0]  # the gentlest common fine-tuning rate (the paper uses one small LR, 5e-5)
    ok, exact, note = _seeds_ok(t, side, opts)
    span = float(lams[-1] - lams[0])
    d_im_s = _change(_by_seed(t, "L_im", None), span)
    d_ret_s = _change(_by_seed(t, "L_ret", lr), span)
    judge = _Judge(exact, opts)
    im_scale = float(t.drop_duplicates(["mix_fraction", "seed"])["L_im"].abs().mean())
    eps = meaningful(side, float(t.loc[t["ft_lr"] == lr, "L_ret"].abs().mean()), opts)
    margin = opts.flat_margin_nats if side == "lm" else opts.min_effect * im_scale
    d_im, _, sf_im = judge(d_im_s)
    d_ret, p_ret, sf_ret = judge(d_ret_s, null=-eps)
    eq = tost(list(d_im_s.values()), margin, alpha=opts.alpha)
    use_boot = examples is not None and ok and not exact
    b_im = _boot(examples if use_boot else None, t, None, "L_im", _slope_fn(span), opts, level=1 - 2 * opts.alpha)
    b_ret = _boot(examples if use_boot else None, t, lr, "L_ret", _slope_fn(span), opts)
    data: dict[str, Any] = {
        "comparison": "L_im and L_ret vs lambda", "lambdas": [float(v) for v in lams], "ft_lr": lr,
        "delta_L_im": d_im.as_dict(), "delta_L_ret": d_ret.as_dict(), "tost_L_im": eq.as_dict(),
        "flat_margin": margin, "min_effect_L_ret": eps, "seeds": len(d_im_s),
        "per_seed": {"delta_L_im": {str(k): v for k, v in d_im_s.items()},
                     "delta_L_ret": {str(k): v for k, v in d_ret_s.items()}},
        "means": t.drop_duplicates(["mix_fraction", "seed"]).groupby("mix_fraction")["L_im"].mean().to_dict(),
        "means_L_ret": t.loc[t["ft_lr"] == lr].groupby("mix_fraction")["L_ret"].mean().to_dict(),
        # intersection-union: PASS needs both tests; its p is the larger of the two
        **p_fields(max(eq.p, p_ret) if not exact else float("nan"), max(sf_im, sf_ret) if not exact else float("nan")),
        "sign_flip_p_parts": {"delta_L_im": sf_im, "delta_L_ret": sf_ret},
        # verdicts.csv: the L_im change with the TOST's (1 - 2 alpha) interval
        "estimate": {"point": eq.mean, "lo": eq.lo, "hi": eq.hi}, "n_seeds": len(d_im_s),
    }
    desc = (f"change over lambda {lams[0]:g}->{lams[-1]:g} ({len(lams)} values): L_im {fmt(d_im)} "
            f"(TOST vs +-{margin:.3g}: p {eq.p:.3g}, {1 - 2 * opts.alpha:.0%} CI [{eq.lo:.3g}, {eq.hi:.3g}]), "
            f"L_ret (ft lr {lr:g}) {fmt(d_ret)} (t-test p vs bar {p_ret:.3g}, sign-flip p {sf_ret:.3g}); "
            f"meaningful L_ret drop > {eps:.3g}; {note}"
            + ("" if exact else _boot_note({"L_im (90%)": b_im, "L_ret": b_ret}, side)))
    data["seed_doc_bootstrap"] = {"L_im": None if b_im is None else b_im.as_dict(),
                                  "L_ret": None if b_ret is None else b_ret.as_dict()}
    if not ok:
        return "INCONCLUSIVE", f"{note}; estimate only: {desc}", data
    if len(lams) < MIN_LAMBDAS_FLAT:
        return "INCONCLUSIVE", f"flatness needs >= {MIN_LAMBDAS_FLAT} mixing fractions, have {len(lams)}: {desc}", data
    if exact:
        im_flat, im_not = abs(d_im.point) <= margin, abs(d_im.point) > margin
    else:
        im_flat = eq.p < opts.alpha and (b_im is None or (-margin < b_im.lo and b_im.hi < margin))
        im_not = np.isfinite(d_im.lo) and (d_im.lo > margin or d_im.hi < -margin)
    ret_falls = d_ret.hi < -eps and (b_ret is None or b_ret.hi < -eps)
    if ret_falls and im_flat:
        return "PASS", desc, data
    if d_ret.lo > -eps or im_not:
        why = "L_ret does not fall meaningfully" if d_ret.lo > -eps else "L_im is not flat (outside the margin)"
        return "FAIL", f"{why}: {desc}", data
    return "INCONCLUSIVE", f"intervals too wide to decide: {desc}", data


def stage1_losses(run_dir: Path | None, df: pd.DataFrame) -> dict[Any, float]:
    """seed -> D_post loss of the unmixed theta_pre (before stage 2): from ``run_dir``'s
    ``regime.csv`` (column ``L_post_stage1``; computed from the run directories when the file
    is absent), else from ``post_hparams["L_post_stage1"]`` of the lambda = 0 rows."""
    out: dict[Any, float] = {}
    if run_dir is not None:
        table = None
        tree = RunTree(run_dir)
        try:
            if tree.regime.is_file():
                table = pd.read_csv(tree.regime)
            elif tree.run_dirs("ft"):
                from paper_checks.lm_regime import regime_table

                table = regime_table(run_dir)
        except (OSError, ValueError, ImportError, pd.errors.ParserError, pd.errors.EmptyDataError):
            table = None
        if table is not None and {"seed", "method", "mix_fraction", "L_post_stage1"} <= set(table.columns):
            u = table.loc[(table["method"] == "unmixed") & (table["mix_fraction"] == 0)]
            out = {s: float(v) for s, v in u.groupby("seed")["L_post_stage1"].mean().items() if np.isfinite(v)}
    if not out:
        zero = df.loc[df["mix_fraction"] == 0]
        for s, hp in zip(zero["seed"], zero["post_hparams"]):
            try:
                v = json.loads(hp).get("L_post_stage1") if isinstance(hp, str) and hp else None
            except (ValueError, AttributeError):
                v = None
            if v is not None and np.isfinite(float(v)):
                out[s] = float(v)
    return out


def _size(hp: Any) -> dict[str, Any]:
    try:
        d = json.loads(hp) if isinstance(hp, str) and hp else {}
    except ValueError:
        return {}
    return {k: d[k] for k in _SIZE_KEYS if isinstance(d, dict) and k in d}


def _same_size(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its early-stopped rows cut to the post-training data size of its
    compute-matched rows, when both record one (so the precondition compares like with like)."""
    cm = df["compute_matched"].astype(bool)
    sizes = {json.dumps(_size(h), sort_keys=True) for h in df.loc[cm, "post_hparams"]}
    if len(sizes) != 1 or sizes == {"{}"}:
        return df
    want = json.loads(sizes.pop())
    es_sizes = df.loc[~cm, "post_hparams"].map(_size)
    same = es_sizes.map(lambda d: all(d.get(k) == v for k, v in want.items()) and bool(d))
    return df if not same.any() else pd.concat([df.loc[cm], df.loc[~cm].loc[same]])


def precondition(df: pd.DataFrame, stage1: dict[Any, float], opts: CheckOptions) -> tuple[bool, str, dict[str, Any]]:
    """Can the testbed pose (c)? (ok, reason, data): the compute-matched lambda = 0 single
    pass reaches >= ``opts.precondition_share`` of the early-stopped L_im gain (mean over seeds)."""
    cm = per_lambda_table(df, compute_matched=True)
    es = per_lambda_table(_same_size(df), compute_matched=False)
    cm0 = cm.loc[cm["mix_fraction"] == 0].groupby("seed")["L_im"].min()
    es0 = es.loc[es["mix_fraction"] == 0].groupby("seed")["L_im"].min()
    data: dict[str, Any] = {"required_share": opts.precondition_share}
    if cm0.empty:
        return False, "precondition not evaluable: no compute-matched lambda = 0 run", data
    if es0.empty:
        return False, ("precondition not evaluable: no early-stopped (not compute-matched) lambda = 0 run to "
                       "compare the single pass with"), data
    shares = {}
    for s in sorted(set(cm0.index) & set(es0.index)):
        l0 = stage1.get(s)
        if l0 is None or not l0 - es0[s] > 0:
            continue
        shares[s] = float((l0 - cm0[s]) / (l0 - es0[s]))
    if not shares:
        return False, ("precondition not evaluable: no D_post loss of theta_pre (regime.csv L_post_stage1) for the "
                       "seeds with both lambda = 0 runs"), data
    share = float(np.mean(list(shares.values())))
    data.update(share=share, per_seed={str(k): v for k, v in shares.items()},
                L_im_single_pass=float(cm0.mean()), L_im_early_stopped=float(es0.mean()))
    desc = (f"the lambda = 0 single pass reaches {share:.1%} of the early-stopped L_im gain "
            f"(L_im {cm0.mean():.4g} vs {es0.mean():.4g}; {len(shares)} seeds; required {opts.precondition_share:.0%})")
    if share < opts.precondition_share:
        return False, f"the testbed cannot pose (c): {desc}", data
    return True, desc, data


def check_sec42_parts(df: pd.DataFrame, side: str, opts: CheckOptions, stage1: dict[Any, float] | None = None,
                      examples: Any = None) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """(c) Section 4.2 as three verdicts {"c1", "c2", "c3"} (see the module docstring); with
    per-example losses a PASS also needs the seed x document bootstrap interval past the bar."""
    t = per_lambda_table(df, compute_matched=True)
    lams = sorted(t["mix_fraction"].unique()) if not t.empty else []
    if len(lams) < 3:
        r = ("INCONCLUSIVE", f"no data: need >= 3 compute-matched mixing fractions, have {lams}", {"lambdas": lams})
        return {"c1": r, "c2": r, "c3": r}
    lrs = _common_ft_lrs(t)
    if not lrs:
        r = ("INCONCLUSIVE", "no data: no fine-tuning lr shared by every lambda", {"lambdas": lams})
        return {"c1": r, "c2": r, "c3": r}
    lr = lrs[0]
    n_seeds = t["seed"].nunique()
    exact = side == "theory" and n_seeds == 1
    ok = exact or n_seeds >= opts.min_seeds
    judge = _Judge(exact, opts)
    span = float(lams[-1] - lams[0])
    ret_series = _by_seed(t, "L_ret", lr)
    complete = {s: v for s, v in ret_series.items() if len(v) == len(lams)}
    d_im_s = _change(_by_seed(t, "L_im", None), span)
    d_ret_s = _change(ret_series, span)
    zero_gap_s = {s: float(v.iloc[0] - v.iloc[1:].min()) for s, v in complete.items()}
    interior_s = {s: float(min(v.iloc[0], v.iloc[-1]) - v.iloc[1:-1].min()) for s, v in complete.items()}
    eps_im = meaningful(side, float(t.drop_duplicates(["mix_fraction", "seed"])["L_im"].abs().mean()), opts)
    eps = meaningful(side, float(t.loc[t["ft_lr"] == lr, "L_ret"].abs().mean()), opts)
    d_im, p_im, sf_im = judge(d_im_s, null=eps_im)
    d_ret, p_ret, sf_ret = judge(d_ret_s, null=-eps)
    zg, p_zg, sf_zg = judge(zero_gap_s, null=eps)
    ig, p_ig, sf_ig = judge(interior_s, null=eps)
    ex = examples if (examples is not None and ok and not exact) else None
    b_im = _boot(ex, t, None, "L_im", _slope_fn(span), opts)
    b_ret = _boot(ex, t, lr, "L_ret", _slope_fn(span), opts)
    b_zg = _boot(ex, t, lr, "L_ret", lambda v: float(v.iloc[0] - v.iloc[1:].min()), opts)
    b_ig = _boot(ex, t, lr, "L_ret", lambda v: float(min(v.iloc[0], v.iloc[-1]) - v.iloc[1:-1].min()), opts)
    means = t.loc[t["ft_lr"] == lr].groupby("mix_fraction")["L_ret"].mean()
    pre_ok, pre_why, pre_data = precondition(df, stage1 or {}, opts)
    base = {"comparison": "compute-matched L_im and L_ret vs lambda", "lambdas": [float(v) for v in lams],
            # the arms the regime gate reads (paper_checks.regime.check_arms)
            "baseline": "unmixed (compute-matched)", "candidate": "mixed (compute-matched)",
            "ft_lr": lr, "seeds": n_seeds, "n_seeds": n_seeds, "best_lambda": float(means.idxmin()),
            "means_L_ret": means.to_dict(),
            "min_effect_L_im": eps_im, "min_effect_L_ret": eps, "precondition": {"ok": pre_ok, "why": pre_why,
                                                                                 **pre_data}}
    base["seed_doc_bootstrap"] = {k: None if v is None else v.as_dict() for k, v in
                                  (("delta_L_im", b_im), ("delta_L_ret", b_ret), ("zero_minus_best_positive", b_zg),
                                   ("endpoint_minus_interior_L_ret", b_ig))}
    note = ("1 seed (theory: exact)" if exact else
            f"{n_seeds} seeds, t-test p c1 {p_im:.3g} / c2 {max(p_ret, p_zg):.3g} / c3 {p_ig:.3g}, sign-flip p "
            f"{sf_im:.3g} / {max(sf_ret, sf_zg):.3g} / {sf_ig:.3g}")
    nan = float("nan")

    def verdict(passed: bool, failed: bool, why_fail: str, desc: str, data: dict[str, Any],
                boot_ok: bool = True) -> tuple[str, str, dict]:
        desc = f"{desc}; ft lr {lr:g}; {note}; precondition: {pre_why}"
        if not ok:
            return "INCONCLUSIVE", f"too few seeds ({n_seeds} < {opts.min_seeds}); estimate only: {desc}", data
        if not pre_ok:
            return "INCONCLUSIVE", f"{pre_why}; estimate only: {desc}", data
        if passed and boot_ok:
            return "PASS", desc, data
        if failed:
            return "FAIL", f"{why_fail}: {desc}", data
        if passed:
            return "INCONCLUSIVE", f"the seed x document bootstrap interval reaches the bar: {desc}", data
        return "INCONCLUSIVE", f"interval includes the bar: {desc}", data

    def past(b: Interval | None, lo: float | None = None, hi: float | None = None) -> bool:
        return b is None or ((lo is None or b.lo > lo) and (hi is None or b.hi < hi))

    c1 = verdict(d_im.lo > eps_im, d_im.hi < eps_im,
                 "L_im does not worsen meaningfully with lambda",
                 f"L_im change over lambda = {fmt(d_im)} (bar +{eps_im:.3g})"
                 + ("" if exact else _boot_note({"L_im change": b_im}, side)),
                 {**base, "delta_L_im": d_im.as_dict(), "estimate": d_im.as_dict(),
                  **p_fields(p_im if not exact else nan, sf_im)},
                 past(b_im, lo=eps_im))
    c2 = verdict(d_ret.hi < -eps and zg.lo > eps, d_ret.lo > -eps or zg.hi < eps,
                 "L_ret does not improve with lambda, or no lambda > 0 is meaningfully better than lambda = 0",
                 f"L_ret change over lambda = {fmt(d_ret)} (bar -{eps:.3g}); L_ret(0) - min L_ret(lambda > 0) = "
                 f"{fmt(zg)} (bar +{eps:.3g}); best lambda {means.idxmin():g}"
                 + ("" if exact else _boot_note({"L_ret change": b_ret, "L_ret(0) - best": b_zg}, side)),
                 {**base, "delta_L_ret": d_ret.as_dict(), "zero_minus_best_positive": zg.as_dict(),
                  "estimate": zg.as_dict(),
                  **p_fields(max(p_ret, p_zg) if not exact else nan, max(sf_ret, sf_zg) if not exact else nan)},
                 past(b_ret, hi=-eps) and past(b_zg, lo=eps))
    c3 = verdict(ig.lo > eps, ig.hi < eps, "no interior lambda is meaningfully best",
                 f"min endpoint L_ret - min interior L_ret = {fmt(ig)} (bar +{eps:.3g}); best lambda "
                 f"{means.idxmin():g}" + ("" if exact else _boot_note({"endpoint - interior": b_ig}, side)),
                 {**base, "endpoint_minus_interior_L_ret": ig.as_dict(), "estimate": ig.as_dict(),
                  **p_fields(p_ig if not exact else nan, sf_ig)},
                 past(b_ig, lo=eps))
    return {"c1": c1, "c2": c2, "c3": c3}


def check_sec42(df: pd.DataFrame, side: str, opts: CheckOptions,
                stage1: dict[Any, float] | None = None) -> tuple[str, str, dict[str, Any]]:
    """(c3), the interior optimum, as one verdict (the name older callers use)."""
    return check_sec42_parts(df, side, opts, stage1)["c3"]


C_PARTS = (("c1", "compute-matched: L_im worsens as lambda grows"),
           ("c2", "compute-matched: L_ret improves with lambda, best retained performance at lambda > 0"),
           ("c3", "compute-matched: the L_ret optimum lies between the two extremes (interior lambda)"))


def lambda_checks(df: pd.DataFrame | None, side: str, prefix: str, opts: CheckOptions,
                  what: str = "frontier.csv", run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Claims (b) and (c1)-(c3) per pipeline (and per post-training data size) for one table;
    ``run_dir`` (an LM output directory) supplies theta_pre's D_post loss for (c)'s precondition."""
    src_b, src_c = "Section 4.1, Figure 3a", "Section 4.2, Figure 3b"
    claim_b = "L_im nearly flat in lambda while L_ret falls"
    out = []
    pipelines = sorted(df["pipeline"].unique()) if df is not None and not df.empty else [None]
    for pipe in pipelines:
        tag = pipe or "all"
        if pipe is None:
            out.append(no_data(f"{prefix}.b.sec41.{tag}", claim_b, src_b, side, what, pipe, "b.sec41"))
            out += [no_data(f"{prefix}.{c}.sec42.{tag}", text, src_c, side, what, pipe, f"{c}.sec42")
                    for c, text in C_PARTS]
            continue
        sub = df.loc[df["pipeline"] == pipe]
        stage1 = stage1_losses(run_dir, sub)
        from paper_checks.examples import Examples

        examples = Examples.from_dir(run_dir)
        for size, part in split_by_size(sub, compute_matched=False):
            status, ev, data = check_sec41(part, side, opts, examples)
            sfx, txt = ("", "") if size is None else (f".{size}", f" ({size})")
            if size is not None:
                data["post_data_size"] = size
            out.append(make_check(f"{prefix}.b.sec41.{tag}{sfx}", claim_b + txt, src_b, side, status, ev, data,
                                  pipe, "b.sec41"))
        for size, part in split_by_size(sub, compute_matched=True):
            parts = check_sec42_parts(part, side, opts, stage1, examples)
            sfx, txt = ("", "") if size is None else (f".{size}", f" ({size})")
            for c, text in C_PARTS:
                status, ev, data = parts[c]
                data = dict(data)
                if size is not None:
                    data["post_data_size"] = size
                out.append(make_check(f"{prefix}.{c}.sec42.{tag}{sfx}", text + txt, src_c, side, status, ev, data,
                                      pipe, f"{c}.sec42"))
    return out


_SIZE_KEYS = ("N", "n_samples", "post_train_tokens", "post_tokens")


def split_by_size(df: pd.DataFrame, compute_matched: bool) -> list[tuple[str | None, pd.DataFrame]]:
    """[(\"N=100\", rows), ...] when the study's rows differ in a post-training data-size
    field of ``post_hparams``; [(None, df)] otherwise. Other rows are kept in every part."""
    study = df["compute_matched"].astype(bool) == compute_matched
    hp = df.loc[study, "post_hparams"].map(lambda s: json.loads(s) if isinstance(s, str) and s else {})
    for key in _SIZE_KEYS:
        vals = hp.map(lambda d: d.get(key) if isinstance(d, dict) else None)
        distinct = sorted(v for v in vals.dropna().unique())
        if len(distinct) > 1:
            return [(f"{key}={v:g}" if isinstance(v, (int, float)) else f"{key}={v}",
                     pd.concat([df.loc[~study], df.loc[study].loc[vals == v]])) for v in distinct]
    return [(None, df)]


__all__ = ["check_sec41", "check_sec42", "check_sec42_parts", "lambda_checks", "per_lambda_table", "precondition",
           "split_by_size", "stage1_losses"]
