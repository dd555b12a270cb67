"""Data-parallel training over 2 CPU processes (gloo) against one process at the same global batch.

References: the single-process engine on the same batches (losses, validation losses,
weights), the unsharded ``evaluate``, an uninterrupted 2-process run (for resume), the
single-process pipeline run of the same config (for ``torchrun -m lm_experiments run``).
Tolerances: losses rtol 1e-5 (gloo's all-reduce sums in another order than one process's
full-batch matmuls); weights per tensor ``||dW|| <= 1e-3 ||W - W_init||`` (AdamW turns
~1e-9 gradient differences on near-zero gradients into sign flips of single updates, so
element-wise bounds do not suit it); resume within DDP bitwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lm_tiny import T, ArraySource, tiny_model, write_corpora

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py; restored after the module

WORLD = 2
REPO = Path(__file__).resolve().parent.parent


def _val() -> np.ndarray:
    return ArraySource(3, batch=5, seed=99).data.reshape(-1, T)  # 15 blocks: uneven shards too


def _runs(ckpt_root: Path) -> dict:
    """The runs both sides execute: name -> train() keyword arguments (one definition)."""
    from lm_experiments.engine.evaluate import evaluate
    from lm_experiments.engine.optim import OptimConfig
    from lm_experiments.engine.train import EarlyStop

    cpu = torch.device("cpu")
    val = _val()
    common = dict(optim=OptimConfig(lr=2e-3, min_lr=1e-4, warmup_steps=2), device=cpu, progress=False,
                  stopping=EarlyStop(lambda m: evaluate(m, val, batch_size=4, device=cpu).mean_loss, eval_every=2,
                                     patience=9))
    return {"base": dict(common, micro_batch=1, seed=5), "dropout": dict(common, micro_batch=0, seed=6)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from lm_experiments.engine import distributed
    from lm_experiments.engine.evaluate import evaluate
    from lm_experiments.engine.train import train

    ctx = distributed.init_from_env(timeout_s=120)
    assert ctx.world_size == world and ctx.rank == rank
    out_p = Path(out)
    runs = _runs(out_p)
    src = ArraySource(6, batch=5)  # 5 rows: an uneven split over 2 ranks
    rec: dict = {}
    for name, kw in runs.items():
        p = 0.1 if name == "dropout" else 0.0
        model = tiny_model(dropout=p)
        full = train(model, src, ckpt_dir=out_p / f"ck-{name}-full", **kw)
        part_model = tiny_model(dropout=p)
        part = train(part_model, src, ckpt_dir=out_p / f"ck-{name}", stop_after_steps=3, checkpoint_every=2, **kw)
        state = out_p / f"ck-{name}" / "state.pt"
        ck = torch.load(state, map_location="cpu", weights_only=False) if state.exists() else None
        resumed_model = tiny_model(seed=123, dropout=p)  # a fresh process: the weights come from the checkpoint
        resumed = train(resumed_model, src, ckpt_dir=out_p / f"ck-{name}", **kw)
        rec[name] = {"history": full.history, "resumed_history": resumed.history, "part_steps": part.steps,
                     "resumed_from": resumed.resumed_from, "world_size": full.world_size,
                     "ck_world": None if ck is None else ck.get("world_size"),
                     "ck_rng_ranks": None if ck is None else len(ck.get("rng_ranks", [])),
                     "state": {k: v.clone() for k, v in model.state_dict().items()},
                     "resumed_state": {k: v.clone() for k, v in resumed_model.state_dict().items()},
                     "ck_left": (out_p / f"ck-{name}").exists()}
    # a plan whose last batch has 1 row (fewer than the 2 ranks): rank 1 holds none of it
    pmodel = tiny_model()
    pres = train(pmodel, _PartialSource(), ckpt_dir=out_p / "ck-partial", **runs["base"])
    rec["partial"] = {"history": pres.history, "state": {k: v.clone() for k, v in pmodel.state_dict().items()}}
    ev = evaluate(model, _val(), batch_size=4, device=torch.device("cpu"), return_correct=True)  # sharded
    rec["eval"] = {"per_example": ev.per_example, "correct": ev.correct, "mean": ev.mean_loss}
    torch.save(rec, out_p / f"rank{rank}.pt")
    distributed.shutdown()


class _PartialSource(ArraySource):
    """Batches of 5, 5 and 1 rows (a plan's last, partial batch smaller than the world size)."""

    def __init__(self) -> None:
        super().__init__(3, batch=5, seed=3)

    def batch(self, step: int) -> np.ndarray:
        return self.data[step][:1] if step == 2 else self.data[step]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.spawn(_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.time() + 300
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-process DDP run did not finish in 300 s")
    return {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)}


def _single(name: str, tmp: Path):
    from lm_experiments.engine.train import train

    kw = dict(_runs(tmp)[name])
    kw["micro_batch"] = 0  # the whole global batch in one forward: the plainest reference
    model = tiny_model(dropout=0.1 if name == "dropout" else 0.0)
    res = train(model, ArraySource(6, batch=5), ckpt_dir=tmp / f"single-{name}", **kw)
    return res, model


def _assert_same_training(a: dict, b: dict, init: dict, rel: float = 1e-3) -> None:
    for k, vb in b.items():
        if not torch.is_floating_point(vb):
            continue
        moved = float((vb - init[k]).norm())
        assert float((a[k] - vb).norm()) <= rel * moved, (k, float((a[k] - vb).norm()), moved)


def test_ddp_matches_single_process_at_the_same_global_batch(ddp, tmp_path):
    r0, r1 = ddp[0]["base"], ddp[1]["base"]
    res, model = _single("base", tmp_path)
    assert r0["world_size"] == WORLD and res.world_size == 1
    for key in ("train_loss", "val_loss", "lr"):
        got = [h.get(key, np.nan) for h in r0["history"]]
        ref = [h.get(key, np.nan) for h in res.history]
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose([h["grad_norm"] for h in r0["history"]], [h["grad_norm"] for h in res.history],
                               rtol=1e-4)
    _assert_same_training(r0["state"], model.state_dict(), tiny_model().state_dict())
    # every rank holds the same weights and took the same decisions
    assert r0["history"] == r1["history"]
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])


def test_ddp_resume_reproduces_the_uninterrupted_run(ddp):
    for name in ("base", "dropout"):
        for rank in range(WORLD):
            r = ddp[rank][name]
            assert r["part_steps"] == 3 and r["resumed_from"] == 3, name
            assert r["ck_world"] == WORLD and r["ck_rng_ranks"] == WORLD  # rank 0 saved every rank's RNG
            assert r["resumed_history"] == r["history"], (name, rank)  # bitwise
            assert all(torch.equal(r["resumed_state"][k], r["state"][k]) for k in r["state"]), (name, rank)
            assert not r["ck_left"]  # removed at the end by rank 0
    d = ddp[0]["dropout"]["history"]  # with dropout (each rank its own RNG stream) the run trains
    assert all(np.isfinite(h["train_loss"]) for h in d) and d[-1]["train_loss"] < d[0]["train_loss"]


def test_sharded_evaluate_equals_unsharded(ddp):
    from lm_experiments.engine.evaluate import evaluate

    model = tiny_model()
    model.load_state_dict(ddp[0]["dropout"]["state"])
    ref = evaluate(model, _val(), batch_size=4, device=torch.device("cpu"), return_correct=True)
    for rank in range(WORLD):
        got = ddp[rank]["eval"]
        np.testing.assert_allclose(got["per_example"], ref.per_example, rtol=1e-6)
        np.testing.assert_array_equal(got["correct"], ref.correct)
        assert got["mean"] == pytest.approx(ref.mean_loss, rel=1e-6)


def _pipeline_config(root: Path) -> Path:
    paths = write_corpora(root)
    cfg = {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": T, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 5 * T, "batch_size": 5, "mix_fraction": [0.5], "checkpoint_every": 2},
        "post": {"max_epochs": 2, "eval_every_epochs": 1.0, "patience": 2, "post_train_tokens": 12 * T,
                 "checkpoint_every": 0, "sweep": {"batch_size": [4]}},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * T, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }
    p = root / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_pipeline_under_torchrun_matches_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m lm_experiments run``: the same runs (ids), the same losses
    as one process within tolerance, every file written once by rank 0, FLOPs recorded."""
    from early_exposure.frontier import read_frontier
    from lm_experiments.cli import run

    cfg = _pipeline_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "-m", "lm_experiments", "run",
           "--config", str(cfg), "--out", str(tmp_path / "ddp"), "--cache", str(tmp_path / "cache-ddp"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("pipeline pre>post>ft") == 1  # rank 0 prints, the other rank does not
    assert run(["run", "--config", str(cfg), "--out", str(tmp_path / "one"), "--cache", str(tmp_path / "cache-one"),
                "--no-progress"]) == 0
    a, b = read_frontier(tmp_path / "ddp" / "frontier.csv"), read_frontier(tmp_path / "one" / "frontier.csv")
    assert list(a["run_id"]) == list(b["run_id"]) and len(a) == 1
    for col in ("L_im", "L_ret", "L_ft", "L_pre"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, err_msg=col)
    res = json.loads(next((tmp_path / "ddp" / "runs").glob("*/result.json")).read_text())
    for stage in ("pre", "post", "ft"):
        st = res["stages"][stage]
        assert st["world_size"] == WORLD and st["flops"] == st["flops_per_token"] * st["tokens"] > 0
        assert st["mfu"] is None  # CPU: no peak
    one = json.loads(next((tmp_path / "one" / "runs").glob("*/result.json")).read_text())
    assert one["stages"]["pre"]["world_size"] == 1 and one["stages"]["pre"]["tokens"] == res["stages"]["pre"]["tokens"]
    assert not list((tmp_path / "ddp").rglob("train_state")) and not list((tmp_path / "ddp").rglob("*.tmp"))


def test_ddp_last_batch_with_fewer_rows_than_ranks_matches_single_process(ddp, tmp_path):
    """The rank without rows joins the all-reduce with a zero-weight stand-in row (no hang, no
    NaN); losses and weights as one process on the same batches."""
    from lm_experiments.engine.train import train

    kw = dict(_runs(tmp_path)["base"])
    kw["micro_batch"] = 0
    model = tiny_model()
    init = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    res = train(model, _PartialSource(), ckpt_dir=tmp_path / "single-partial", **kw)
    for r in range(WORLD):
        got = ddp[r]["partial"]
        assert len(got["history"]) == len(res.history) == 3
        np.testing.assert_allclose([h["train_loss"] for h in got["history"]], [h["train_loss"] for h in res.history],
                                   rtol=1e-5)
        _assert_same_training(got["state"], model.state_dict(), init)
