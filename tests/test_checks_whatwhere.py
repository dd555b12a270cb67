"""Report rows beyond the paper (paper_checks.checks_beyond) on hand-made what/where tables:
the paired per-seed difference, its Student-t interval and the status it implies."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from paper_checks.checks_beyond import beyond_checks


def _trans(unmixed: list[float], mixed: list[float]) -> pd.DataFrame:
    rows = []
    for method, vals in (("unmixed", unmixed), ("mixed", mixed)):
        for seed, v in enumerate(vals):
            rows.append({"pipeline": "p", "method": method, "mix_fraction": 0.0 if method == "unmixed" else 1.0,
                         "compute_matched": False, "seed": seed, "ft_lr": 3e-4, "pair": "post->ft",
                         "set": "post.answer", "n": 50, "forgetting": v})
    return pd.DataFrame(rows)


def _tree(tmp_path, unmixed, mixed):
    w = tmp_path / "lm" / "quick" / "whatwhere"
    w.mkdir(parents=True)
    _trans(unmixed, mixed).to_csv(w / "transitions.csv", index=False)
    (w / "items.json").write_text(json.dumps({"pipeline": "p"}))
    return tmp_path


def _row(rows, cid):
    return next(r for r in rows if r["id"] == cid)


def test_protect_row_interval_and_status(tmp_path):
    res = _tree(tmp_path, [0.30, 0.35, 0.28], [0.10, 0.12, 0.11])
    r = _row(beyond_checks(res), "lm.quick.whatwhere.protect.post.answer")
    diffs = [0.20, 0.23, 0.17]
    m = sum(diffs) / 3
    sd = pd.Series(diffs).std(ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / 3 ** 0.5
    iv = r["data"]["interval"]
    assert iv["point"] == pytest.approx(m)
    assert iv["lo"] == pytest.approx(m - half) and iv["hi"] == pytest.approx(m + half)
    assert r["status"] == "PASS" and r["pipeline"] == "p" and r["data"]["n_items"] == 50
    assert r["data"]["baseline"] == "unmixed" and r["data"]["candidate"] == "mixed"
    assert "3 seeds" in r["evidence"] and "50 items" in r["evidence"]
    # only the sets the pipeline has get a row; the theory rows say where to get them
    assert not any(r["id"] == "lm.quick.whatwhere.protect.post.mc" for r in beyond_checks(res))
    assert _row(beyond_checks(res), "theory.whatwhere.c16_overlap")["evidence"].startswith("no data")


def test_protect_row_fail_and_inconclusive(tmp_path):
    r = _row(beyond_checks(_tree(tmp_path / "a", [0.1, 0.11, 0.12], [0.3, 0.32, 0.29])),
             "lm.quick.whatwhere.protect.post.answer")
    assert r["status"] == "FAIL"
    r = _row(beyond_checks(_tree(tmp_path / "b", [0.1, 0.3, 0.2], [0.2, 0.1, 0.25])),
             "lm.quick.whatwhere.protect.post.answer")
    assert r["status"] == "INCONCLUSIVE"   # differences -0.1, 0.2, -0.05: the interval holds 0


def test_protect_row_on_the_synthetic_exact_match_items(tmp_path):
    """The synthetic world's exact-match set (``post.em``) gets its own row, judged like the
    others: per-seed unmixed - mixed share of answers lost, mixed arms (two lambdas) averaged
    per seed first."""
    rows = []
    for method, lam, vals in (("unmixed", 0.0, [0.6, 0.7, 0.65, 0.62, 0.68]),
                              ("mixed", 0.5, [0.3, 0.35, 0.32, 0.31, 0.36]), ("mixed", 1.0, [0.2, 0.25, 0.22, 0.21, 0.2])):
        for seed, v in enumerate(vals):
            rows.append({"pipeline": "p", "method": method, "mix_fraction": lam, "compute_matched": False,
                         "seed": seed, "ft_lr": 3e-3, "pair": "post->ft", "set": "post.em", "n": 32, "forgetting": v})
    w = tmp_path / "lm" / "quick" / "whatwhere"
    w.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(w / "transitions.csv", index=False)
    (w / "items.json").write_text(json.dumps({"pipeline": "p"}))
    r = _row(beyond_checks(tmp_path), "lm.quick.whatwhere.protect.post.em")
    diffs = [0.6 - 0.25, 0.7 - 0.30, 0.65 - 0.27, 0.62 - 0.26, 0.68 - 0.28]  # by hand: unmixed - mean(mixed)
    assert r["data"]["per_seed"] == pytest.approx(diffs)
    assert r["status"] == "PASS" and r["data"]["n_items"] == 32 and "exact-match" in r["claim"]
