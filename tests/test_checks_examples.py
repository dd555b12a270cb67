"""Test-set sampling in the frontier intervals (paper_checks.examples): with per-example
losses the gap gets a seed x document bootstrap interval beside the t-interval, and a gap
that is tight over seeds but carried by a few test documents is not a PASS; without them the
evidence says the interval is seed-only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from early_exposure.frontier import FRONTIER_COLUMNS
from paper_checks.checks_frontier import compare_frontiers
from paper_checks.common import CheckOptions
from paper_checks.examples import Examples

OPTS = CheckOptions(n_boot=300)


def _lm_dir(tmp, doc_sd: float, n_docs: int = 20):
    """5 seeds; unmixed front (2, 3), (3, 2) and mixed lowered by 0.2 in L_ret (gap 0.2, every
    seed, +-0.005). Per-example L_ret = table value + a zero-mean document effect of sd
    ``doc_sd`` that differs between the arms (the same for every seed and lr of an arm)."""
    rng = np.random.default_rng(0)
    eff = {m: rng.normal(0, doc_sd, n_docs) for m in ("unmixed", "mixed")}
    eff = {m: v - v.mean() for m, v in eff.items()}
    rows = []
    for m, shift in (("unmixed", 0.0), ("mixed", 0.2)):
        for s in range(5):
            for j, (l_ft, l_ret) in enumerate([(2.0, 3.0), (3.0, 2.0)]):
                rid = f"{m}-{s}-{j}"
                ret = l_ret - shift + 0.005 * (s - 2)
                rows.append({"side": "lm", "pipeline": "p", "method": m, "mix_fraction": 0.0 if m == "unmixed" else 1.0,
                             "compute_matched": False, "upstream_id": f"{m}-{s}", "post_hparams": "{}",
                             "ft_lr": [1e-4, 3e-4][j], "ft_budget": 1.0, "seed": s, "L_im": 2.0, "L_ret": ret,
                             "L_ft": l_ft, "L_pre": 4.0, "diverged": False, "run_id": rid})
                (tmp / "runs" / rid).mkdir(parents=True)
                np.savez(tmp / "runs" / rid / "eval.npz", post_loss_stage2=np.full(n_docs, 2.0),
                         post_loss_stage3=ret + eff[m], ft_loss_stage3=np.full(n_docs, l_ft),
                         pre_loss_stage3=np.full(n_docs, 4.0))
    return pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))


def test_document_sampling_widens_the_interval(tmp_path):
    df = _lm_dir(tmp_path / "small", doc_sd=0.01)
    ex = Examples.from_dir(tmp_path / "small")
    st, ev, data = compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS, ex)
    b = data["loss_gap_seed_doc_bootstrap"]
    assert st == "PASS" and abs(b["point"] - 0.2) < 1e-9 and b["lo"] > 0.15
    # sd 1 nat per document between arms, 20 documents: the gap's document-sampling sd is
    # ~ sqrt(2) / sqrt(20) = 0.32, so the bootstrap interval reaches the 0.04 bar
    df = _lm_dir(tmp_path / "big", doc_sd=1.0)
    st, ev, data = compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS, Examples.from_dir(tmp_path / "big"))
    assert data["loss_gap"]["lo"] > 0.15  # tight over seeds ...
    assert data["loss_gap_seed_doc_bootstrap"]["lo"] < 0.04  # ... but not over documents
    assert st == "INCONCLUSIVE" and "seed x document" in ev


def test_without_per_example_losses_the_interval_is_seed_only(tmp_path):
    df = _lm_dir(tmp_path, doc_sd=0.01)
    assert Examples.from_dir(tmp_path / "nowhere") is None
    st, ev, data = compare_frontiers(df, "unmixed", "mixed", "ret_ft", "lm", OPTS, None)
    assert st == "PASS" and "seed-only interval" in ev and "loss_gap_seed_doc_bootstrap" not in data
