"""Verdict rows "beyond the paper" for the paper-check report (docs/theory_latent.md).

:func:`latent_check` recomputes a small witness (4 runs, 3-6 s on 2 cores) rather than
reading files and returns rows shaped like ``paper_checks.checks_theory``'s
(``paper_checks.report.make_check``: id, claim, source, side, status, evidence, data,
pipeline, analogue). Statuses: PASS where the latent benefit (same L_im after converged
post-training, lower L_ret) exists in the stated model, FAIL where it does not,
INCONCLUSIVE where post-training did not converge by the rule.
"""

from __future__ import annotations

import time
from typing import Any

from linear_theory.latent.config import witness_config
from linear_theory.latent.model import build_tasks, run_many
from linear_theory.latent.study import MIN_RET, TOL_IM, compare
from linear_theory.latent.theory import eckart_young, predict_pair

__all__ = ["latent_check", "CHECK_KEYS"]

#: the record keys of paper_checks.report.make_check
CHECK_KEYS = ("id", "claim", "source", "side", "status", "evidence", "data", "pipeline", "analogue")
SOURCE = "beyond the paper (docs/theory_latent.md)"


def _row(id: str, claim: str, status: str, evidence: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": id, "claim": claim, "source": SOURCE, "side": "theory", "status": status,
            "evidence": evidence, "data": data, "pipeline": None, "analogue": None}


def latent_check(*, width: int = 6, control_width: int = 8, gap: float = 0.0, alpha: float = 0.5,
                 closed_form_rtol: float = 0.02) -> list[dict[str, Any]]:
    """Three verdict rows (ids ``theory.latent.*``):

    - ``bottleneck_tie``: width ``width`` < n with sigma_inc_post = beta - ``gap`` (witness task,
      :func:`linear_theory.latent.config.witness_config`): mixed (``alpha``) and unmixed arms
      reach the same L_im after post-training converged by the strict early-stopping rule,
      and mixed has the lower L_ret. PASS when both arms stopped by the rule at the
      Eckart-Young optimum (within 1e-6), |Delta L_im| <= 1% and Delta L_ret <= -1% of L_ret;
      INCONCLUSIVE when an arm hit the budget; FAIL otherwise.
    - ``closed_form``: the slot-model closed form (``linear_theory.latent.theory``) predicts
      that Delta L_ret within ``closed_form_rtol`` (relative).
    - ``appendix_c_width``: the same comparison with ``control_width`` (= n: the Appendix C
      model). PASS would mean a latent benefit without a bottleneck; the expected verdict is
      FAIL (Proposition 2).
    """
    t0 = time.perf_counter()
    cfgs = []
    for h in (width, control_width):
        cu = witness_config(width=h, gap=gap)
        cfgs += [cu, cu.with_(pre={"mix_fraction": alpha})]
    res = run_many(cfgs)
    rows: list[dict[str, Any]] = []
    cmp: dict[int, dict[str, Any]] = {}
    for j, h in enumerate((width, control_width)):
        u, m = res[2 * j], res[2 * j + 1]
        c = compare(u, m)
        ey = eckart_young(build_tasks(cfgs[2 * j].task).sigma["post"], h)
        c.update({"width": h, "n": cfgs[2 * j].task.n, "gap": gap, "alpha": alpha, "eckart_young": ey,
                  "EY_gap_u": u.losses["L_im"] - ey, "EY_gap_m": m.losses["L_im"] - ey})
        cmp[h] = c
    seconds = time.perf_counter() - t0

    def verdict(c: dict[str, Any]) -> tuple[str, str]:
        conv = c["stop_u"] == "rule" and c["stop_m"] == "rule"
        at_opt = abs(c["EY_gap_u"]) <= 1e-6 and abs(c["EY_gap_m"]) <= 1e-6
        ev = (f"h = {c['width']}, n = {c['n']}, gap = {c['gap']:g}, alpha = {c['alpha']:g}: "
              f"L_im unmixed/mixed = {c['L_im_u']:.6g}/{c['L_im_m']:.6g} (Eckart-Young optimum {c['eckart_young']:.6g}), "
              f"L_ret = {c['L_ret_u']:.5g}/{c['L_ret_m']:.5g} (Delta L_ret = {c['dL_ret']:+.4g}, "
              f"{100 * c['dL_ret'] / c['L_ret_u']:+.1f}%), post stopped by the rule at {c['steps_u']}/{c['steps_m']} "
              f"steps (grad norm {c['gnorm_u']:.1e}/{c['gnorm_m']:.1e}); criteria: |Delta L_im| <= {100 * TOL_IM:g}%, "
              f"Delta L_ret <= -{100 * MIN_RET:g}% of L_ret")
        if not conv:
            return "INCONCLUSIVE", ev + "; an arm hit the post-training budget (not converged)"
        if c["latent"] and at_opt:
            return "PASS", ev
        return "FAIL", ev + ("" if c["latent"] else "; no latent benefit")

    c = cmp[width]
    status, ev = verdict(c)
    rows.append(_row("theory.latent.bottleneck_tie",
                     f"same L_im after converged post-training, lower L_ret with mixing: two-layer linear "
                     f"network with bottleneck h = {width} < n and tied post-training singular values",
                     status, ev, {**c, "seconds": seconds}))

    pred = predict_pair(cfgs[1], cfgs[0])
    err = abs(pred["dL_ret"] - c["dL_ret"]) / max(abs(c["dL_ret"]), 1e-12)
    ok = err <= closed_form_rtol and abs(pred["dL_im"] - c["dL_im"]) <= 1e-6 * max(c["L_im_u"], 1.0)
    rows.append(_row("theory.latent.closed_form",
                     "slot-model closed form: Delta L_ret = Delta L_im - sum over switched slots of "
                     "[(c - s_inc(t_ft))^2 - (beta - s_spec(t_ft))^2]",
                     "PASS" if ok else "FAIL",
                     f"predicted Delta L_im = {pred['dL_im']:+.4g}, Delta L_ret = {pred['dL_ret']:+.4g} "
                     f"({pred['switched']} switched slots) vs simulated {c['dL_im']:+.3g}, {c['dL_ret']:+.4g}: "
                     f"relative error {err:.2%} (tolerance {closed_form_rtol:.0%}; gradient flow vs GD at lr "
                     f"{cfgs[0].ft.lr:g})", {"prediction": pred, "relative_error": err}))

    c = cmp[control_width]
    status, ev = verdict(c)
    rows.append(_row("theory.latent.appendix_c_width",
                     f"same L_im after converged post-training, lower L_ret with mixing: Appendix C width "
                     f"h = {control_width} (no bottleneck), same task", status, ev, c))
    return rows
