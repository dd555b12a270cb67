"""The regime table (hand-made results tree, figures computed here by hand), the envelope
(each criterion failing alone), the gate on the verdicts, and the compute-matched split at
fractions where rounding matters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from early_exposure.frontier import write_frontier
from paper_checks.lm_regime import regime_table
from lm_experiments.protocol.schedules import POST, posttrain_source, pretrain_source, split_post_blocks
from paper_checks.checks_frontier import CheckOptions
from paper_checks.cli import build_report
from paper_checks.regime import Envelope, judge_arm
from paper_checks.synthetic import frontier_rows, regime_rows

LNV = math.log(100)


def _write(p: Path, obj: dict) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj))


def _tree(root: Path) -> None:
    """One seed: unmixed and mixed theta_pre (a 10 x 10 + 10 parameter 'model', vocab 100),
    one post-training each, one fine-tuning each."""
    from safetensors.numpy import save_file

    for pid, lam, l_post1 in (("p0", 0.0, 4.0), ("p1", 1.0, 3.0)):
        d = root / "upstream" / f"pre-{pid}"
        _write(d / "result.json", {"pre_id": pid, "seed": 0, "mix_fraction": lam, "diverged": False,
                                    "train": {"tokens": 2200},
                                    "losses": {"L_pre_stage1": 2.0, "L_post_stage1": l_post1}})
        (d / "model").mkdir(parents=True)
        save_file({"w": np.zeros((10, 10), np.float32), "b": np.zeros(10, np.float32)}, str(d / "model" / "model.safetensors"))
        (d / "model" / "config.json").write_text(json.dumps({"vocab_size": 100}))
    for uid, pid in (("u0", "p0"), ("u1", "p1")):
        _write(root / "upstream" / f"post-{uid}" / "result.json",
               {"upstream_id": uid, "pre_id": pid, "diverged": False, "train": {"stopped_early": True}})
    for rid, uid, pid, lam, method, l_pre2, l_pre, l_im, l_ret in (
            ("r0", "u0", "p0", 0.0, "unmixed", 3.0, 3.5, 2.0, 3.0),
            ("r1", "u1", "p1", 1.0, "mixed", 2.5, 2.8, 1.9, 2.2)):
        _write(root / "runs" / rid / "result.json", {
            "run_id": rid, "upstream_id": uid, "pre_id": pid, "pipeline": "a>b>c", "method": method,
            "mix_fraction": lam, "compute_matched": False, "seed": 0, "ft_lr": 1e-4, "diverged": False,
            "losses": {"L_pre_stage1": 2.0, "L_post_stage1": 4.0 if lam == 0 else 3.0, "L_pre_stage2": l_pre2,
                       "L_im": l_im, "L_ret": l_ret, "L_pre": l_pre}})


#: hand-set n-gram baselines of the hand-made tree (nats; only the bigram enters the envelope)
HAND_BASELINES = {"pre": {"unigram": 4.4, "bigram": 3.8, "trigram": 3.6},
                  "post": {"unigram": 4.5, "bigram": 2.6, "trigram": 2.5},
                  "ft": {"unigram": 4.6, "bigram": 4.0, "trigram": 3.9}}


def test_regime_table_hand_made(tmp_path: Path) -> None:
    _tree(tmp_path)
    t = regime_table(tmp_path, baselines=HAND_BASELINES).set_index("run_id")
    assert t.loc["r0", "n_params"] == 110 and t.loc["r0", "tokens_per_param"] == pytest.approx(20.0)
    assert t.loc["r0", "L_pre_pre_over_lnV"] == pytest.approx(2.0 / LNV)
    # kept share of the gain over uniform: (ln 100 - 3.0) / (ln 100 - 2.0) after post-training
    # (issue 21 moved the uniform reference to kept_*_uniform; kept_* is now against the bigram)
    assert t.loc["r0", "kept_post_uniform"] == pytest.approx((LNV - 3.0) / (LNV - 2.0))
    assert t.loc["r1", "kept_ft_uniform"] == pytest.approx((LNV - 2.8) / (LNV - 2.0))
    # ... and against the bigram of D_pre (3.8): (3.8 - 3.0) / (3.8 - 2.0), (3.8 - 2.8) / (3.8 - 2.0)
    assert t.loc["r0", "kept_post"] == pytest.approx(0.8 / 1.8)
    assert t.loc["r1", "kept_ft"] == pytest.approx(1.0 / 1.8)
    # margins over the bigram: D_pre 3.8 - 2.0; D_post 2.6 - L_im (2.0 / 1.9); D_ft absent (no L_ft)
    assert t.loc["r0", "margin_pre"] == pytest.approx(1.8)
    assert t.loc["r0", "margin_post"] == pytest.approx(0.6) and t.loc["r1", "margin_post"] == pytest.approx(0.7)
    assert math.isnan(t.loc["r0", "margin_ft"]) and t.loc["r0", "ngram_trigram_ft"] == 3.9
    # no synthetic world: no floors, no item scores
    assert t[["floor_pre", "to_floor_post", "em_stage2_test"]].isna().all().all()
    # without a manifest the baselines cannot be rebuilt: NaN columns, and the table says why
    t2 = regime_table(tmp_path)
    assert t2["ngram_bigram_pre"].isna().all() and t2["kept_post"].isna().all()
    assert "manifest" in t2.attrs["baselines_error"]
    assert t.loc["r1", "dL_pre_ft"] == pytest.approx(0.3)
    # forgetting: reference = the UNMIXED theta_pre's D_post loss (4.0 < ln 100) for both arms
    assert t.loc["r0", "forgetting"] == pytest.approx((3.0 - 2.0) / (4.0 - 2.0))
    assert t.loc["r1", "forgetting"] == pytest.approx((2.2 - 1.9) / (4.0 - 1.9))
    assert bool(t.loc["r1", "stopped_early"]) is True


def _arm(**over: float) -> pd.DataFrame:
    base = {"run_id": ["a", "b"], "upstream_id": ["u", "u"], "seed": [0, 0], "ft_lr": [1e-4, 3e-4],
            "compute_matched": [False, False], "diverged": [False, False], "tokens_per_param": [5.0, 5.0],
            "L_pre_pre_over_lnV": [0.5, 0.5], "margin_pre": [0.3, 0.3], "margin_post": [0.2, 0.2],
            "margin_ft": [0.1, 0.1], "stopped_early": [True, True], "kept_post": [0.7, 0.7],
            "kept_ft": [0.5, 0.4], "forgetting": [0.3, 0.6], "L_im": [2.0, 2.0], "ret_minus_im": [0.3, 0.6]}
    for k, v in over.items():
        base[k] = [v, v]
    return pd.DataFrame(base)


@pytest.mark.parametrize("field,value,criterion", [
    # issue 21 replaced "learned" (L_pre(theta_pre) / ln V <= 0.65) by the three margins over the bigram
    ("margin_pre", 0.04, "learned_pre"), ("margin_pre", -0.3, "learned_pre"),
    ("margin_post", 0.0, "learned_post"), ("margin_ft", 0.049, "learned_ft"), ("margin_ft", float("nan"), "learned_ft"),
    ("stopped_early", False, "converged"),
    ("kept_post", 0.1, "kept_post"), ("kept_ft", -0.2, "kept_ft"),
    ("forgetting", 0.0, "partial"), ("forgetting", 1.2, "partial")])
def test_envelope_each_criterion_alone(field: str, value: float, criterion: str) -> None:
    env = Envelope()
    assert judge_arm(_arm(), env)["inside"] is True
    out = judge_arm(_arm(**{field: value}), env)
    assert out["inside"] is False and out["failed"] == [criterion]


def _results(root: Path, inside: bool) -> Path:
    df = frontier_rows("lm", "a>b>c", {"unmixed": 0.0, "mixed": 0.5}, seeds=[0, 1, 2, 3, 4])  # >= 5 seeds per arm since issue 22
    write_frontier(df, root / "lm" / "q" / "frontier.csv")
    regime_rows(df, inside=inside).to_csv(root / "lm" / "q" / "regime.csv", index=False)
    return root


def test_gate_turns_pass_into_inconclusive_outside_only(tmp_path: Path) -> None:
    opts = CheckOptions(n_boot=50)
    key = "lm.q.a.mixing.ret_ft.a>b>c"
    inside = {c["id"]: c for c in build_report(_results(tmp_path / "in", True), opts)["checks"]}
    outside = {c["id"]: c for c in build_report(_results(tmp_path / "out", False), opts)["checks"]}
    assert inside[key]["status"] == "PASS" and inside[key]["data"]["regime"]["inside"] is True
    c = outside[key]
    assert c["status"] == "INCONCLUSIVE" and c["evidence"].startswith("outside the paper's regime")
    assert "kept_post" in c["evidence"] and c["data"]["regime"]["status_before"] == "PASS"


@pytest.mark.parametrize("n_post,lam,n_mixed", [(7, 0.25, 2), (7, 0.75, 5), (9, 0.25, 2), (9, 0.75, 7)])
def test_compute_matched_split_one_pass_in_total(n_post: int, lam: float, n_mixed: int) -> None:
    """Stage 1 mixes round(lambda * n) D_post blocks (counts worked out by hand: 1.75 -> 2,
    5.25 -> 5, 2.25 -> 2, 6.75 -> 7); compute-matched stage 2 takes the others, once each:
    the two stages together are exactly one pass over D_post."""
    seq = 4
    post_pool = np.arange(n_post * seq, dtype=np.int32).reshape(n_post, seq)
    pre_pool = np.zeros((50, seq), dtype=np.int32)
    post_idx = np.arange(n_post, dtype=np.int64)  # the D_post subset in use (stages.StageContext.post_idx)
    mixed, rest = split_post_blocks(len(post_idx), lam, seed=3)
    s1 = pretrain_source(pre_pool, post_pool, post_idx[mixed], tokens=40 * seq, batch_size=4, seed=3)
    s2 = posttrain_source(post_pool, post_idx[rest], pre_pool, epochs=1, replay=0.0, batch_size=4, seed=3)
    used1, used2 = s1.blocks_used(POST), s2.blocks_used(POST)
    assert len(used1) == n_mixed and len(used2) == n_post - n_mixed
    assert set(used1.tolist()).isdisjoint(used2.tolist())
    both = np.concatenate([used1, used2])
    assert np.array_equal(np.sort(both), np.arange(n_post))  # every block exactly once in total


def test_claims_a_pipeline_did_not_plan_are_listed_apart(tmp_path: Path) -> None:
    """Pipeline x has the LoRA arms, pipeline y only the base arms: y's LoRA claim is not a
    verdict row (listed under not_planned, pointing at x's); a claim no pipeline judges
    (compute-matched) keeps its "no data" rows."""
    full = frontier_rows("lm", "x", {"unmixed": 0.0, "mixed": 0.5, "unmixed+lora": 0.0, "mixed+lora": 0.5},
                         seeds=[0, 1, 2])
    base = frontier_rows("lm", "y", {"unmixed": 0.0, "mixed": 0.5}, seeds=[0, 1, 2])
    df = pd.concat([full, base])
    write_frontier(df, tmp_path / "lm" / "q" / "frontier.csv")
    regime_rows(df).to_csv(tmp_path / "lm" / "q" / "regime.csv", index=False)
    rep = build_report(tmp_path, CheckOptions(n_boot=50))
    ids = {c["id"] for c in rep["checks"]}
    apart = {n["id"]: n for n in rep["not_planned"]}
    assert "lm.q.e.lora.ret_ft.x" in ids and "lm.q.e.lora.ret_ft.y" not in ids
    assert apart["lm.q.e.lora.ret_ft.y"]["judged_in"] == ["lm.q.e.lora.ret_ft.x"]
    # judged nowhere: stays "no data" ((c) is three claims c1-c3 since issue 22)
    assert all(f"lm.q.{c}.sec42.{p}" in ids for c in ("c1", "c2", "c3") for p in "xy")


def test_gate_reads_the_arms_of_each_check(tmp_path: Path) -> None:
    """One arm outside (unmixed+lora): the LoRA claim is gated, the mixing claim is not."""
    df = frontier_rows("lm", "a>b>c", {"unmixed": 0.0, "mixed": 0.5, "unmixed+lora": 0.0, "mixed+lora": 0.5},
                       seeds=[0, 1, 2, 3, 4])  # >= 5 seeds per arm since issue 22
    write_frontier(df, tmp_path / "lm" / "q" / "frontier.csv")
    reg = regime_rows(df)
    reg.loc[reg["method"] == "unmixed+lora", "kept_post"] = 0.1
    reg.to_csv(tmp_path / "lm" / "q" / "regime.csv", index=False)
    rep = build_report(tmp_path, CheckOptions(n_boot=50))
    by = {c["id"]: c for c in rep["checks"]}
    assert by["lm.q.a.mixing.ret_ft.a>b>c"]["status"] == "PASS"
    lora = by["lm.q.e.lora.ret_ft.a>b>c"]
    assert lora["status"] == "INCONCLUSIVE" and "unmixed+lora: kept_post" in lora["evidence"]
    assert rep["regime"]["presets"]["q"]["a>b>c"]["inside"] is False
