"""Compute-matched post-training trains on exactly the D_post blocks its own pretraining did
not see, counted from the data actually served (issue 21).

A tiny real pipeline (local corpora, tiny-1m, CPU) runs stage 1 and the compute-matched
stage 2 at fractions where rounding matters (an odd number of D_post blocks: 13 at
lambda = 0.25 -> 3.25, 9 at lambda = 0.75 -> 6.75). Every batch the training loop feeds
the model is recorded (the engine's ``loss_and_backward`` is wrapped), and D_post blocks
are identified by their token content against the prepared D_post training split, never
by indices from the code under test. The reference: the D_post training blocks of the
subset (all 13 rows of the split, or the 9-block ``post_train_tokens`` cap) minus the
ones served in stage 1, each once.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from lm_tiny import write_corpora

# ---- every lm_experiments name used here (remap these lines when modules move) --------
import lm_experiments.engine.train as ENGINE_MODULE  # monkeypatched: ENGINE_MODULE.loss_and_backward
from lm_experiments.config import config_from_mapping
from lm_experiments.protocol.plan import make_plan
from lm_experiments.protocol.context import StageContext
from lm_experiments.protocol.stages import run_post, run_pre
from lm_experiments.protocol.prepared import data_sizes

ENGINE_STEP_FN = "loss_and_backward"  # the engine function that receives every training batch x (b, T)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ = 16
N_TRAIN_BLOCKS = 13  # data.max_train_tokens / SEQ: every role's training split holds 13 blocks


def _config(paths: dict[str, str], lam: float, post_blocks: int | None) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 4 * SEQ, "val_fraction": 0.1,
           "bpe_sample_chars": 20000, "max_train_tokens": N_TRAIN_BLOCKS * SEQ},
        "model": {"preset": "tiny-1m"},
        "pre": {"tokens": 5 * 4 * SEQ, "batch_size": 4, "mix_fraction": [lam], "optim": {"warmup_steps": 1},
                "checkpoint_every": 0},
        "post": {"sweep": {"lr": [1.0e-3], "batch_size": [4]}, "max_epochs": 2, "patience": 1,
                 "post_train_tokens": None if post_blocks is None else post_blocks * SEQ,
                 "compute_matched": [lam], "optim": {"warmup_steps": 1, "min_lr": 1.0e-4}},
        "ft": {"lr": [1.0e-3], "tokens": 4 * SEQ, "batch_size": 4, "optim": {"warmup_steps": 0}},
        "eval": {"batch_size": 8},
        "seeds": [3],
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cm_served")
    return {"paths": write_corpora(root), "cache": root / "cache", "root": root}


def _key(row: np.ndarray) -> bytes:
    return np.asarray(row, dtype=np.int64).tobytes()


# lambda, D_post subset size (None: no cap, the whole 13-block split), expected stage-1 share by hand
CASES = [(0.25, None, 3),   # 0.25 * 13 = 3.25 -> 3 in stage 1, 10 in stage 2
         (0.75, 9, 7)]      # 0.75 * 9 = 6.75 -> 7 in stage 1, 2 in stage 2


@pytest.mark.parametrize("lam,post_blocks,n_stage1", CASES)
def test_compute_matched_stage2_serves_exactly_the_unseen_post_blocks(
        corpora: dict, monkeypatch: pytest.MonkeyPatch, lam: float, post_blocks: int | None, n_stage1: int) -> None:
    cfg = config_from_mapping(_config(corpora["paths"], lam, post_blocks))
    out = corpora["root"] / f"out-{lam}"
    ctx = StageContext.open(cfg, out, cache_root=corpora["cache"])
    post_train = np.asarray(ctx.prepared.splits["post"].train)
    pre_train = np.asarray(ctx.prepared.splits["pre"].train)
    assert post_train.shape == (N_TRAIN_BLOCKS, SEQ)
    # a D_post block is named by its row in the prepared split, found by content
    row_of = {_key(r): i for i, r in enumerate(post_train)}
    pre_rows = {_key(r) for r in pre_train}
    # content identifies a block: D_post rows are distinct and none is a D_pre row
    assert len(row_of) == N_TRAIN_BLOCKS and not set(row_of) & pre_rows

    served: list[np.ndarray] = []
    real = getattr(ENGINE_MODULE, ENGINE_STEP_FN)

    def recording(model, x, *args, **kwargs):
        served.extend(x.detach().cpu().numpy().astype(np.int64))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(ENGINE_MODULE, ENGINE_STEP_FN, recording)

    plan = make_plan(ctx.cfg, data_sizes(ctx.prepared), ctx.prepared.fingerprint)
    pre = next(r for r in plan.pre if r.mix_fraction == lam)
    post = next(r for r in plan.post if r.pre == pre and r.compute_matched)
    assert post.setting.replay == 0.0  # stage 2 then serves D_post blocks only

    assert not run_pre(ctx, pre).diverged
    stage1, served = served, []
    assert not run_post(ctx, post).diverged
    stage2 = served

    # stage 1: the full budget was fed (5 steps x 4 rows), every row a D_pre or a D_post block
    assert len(stage1) == 5 * 4
    assert all(_key(r) in row_of or _key(r) in pre_rows for r in stage1)
    s1_post = Counter(row_of[_key(r)] for r in stage1 if _key(r) in row_of)
    assert len(s1_post) == n_stage1 and set(s1_post.values()) == {1}  # round(lambda * N), each once

    # stage 2: one epoch over the rest, every row a D_post block, each exactly once
    assert all(_key(r) in row_of for r in stage2)
    s2 = Counter(row_of[_key(r)] for r in stage2)
    assert set(s2.values()) == {1}

    # the subset: every D_post training block (no cap), or the cap's 9 distinct training blocks
    subset = set(s1_post) | set(s2)
    if post_blocks is None:
        assert subset == set(range(N_TRAIN_BLOCKS))
    else:
        assert len(subset) == post_blocks
    n_sub = N_TRAIN_BLOCKS if post_blocks is None else post_blocks
    assert set(s2) == subset - set(s1_post)
    assert not set(s2) & set(s1_post)
    assert len(s1_post) + len(s2) == n_sub and len(stage2) == n_sub - n_stage1
