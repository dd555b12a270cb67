"""Preemption: a SIGTERM mid-stage leaves a checkpoint at the step it arrived, the process
exits with the requeue code (75), and a rerun of the same command continues bitwise.

Reference: the same tiny sweep run once without interruption (in this process); its
``frontier.csv`` bytes are what every interrupted-then-rerun sweep must reproduce. The signal
is a real SIGTERM that the training loop sends to its own process at a given step
(``LM_EXPERIMENTS_FAULT_SIGTERM=<stage>:<step>``), so the handler, the flag, the checkpoint
and the exit run as under a scheduler; one test signals the Ray driver from outside instead,
and one signals a single rank of a 2-process torchrun unit (the other must stop at the same
step; its rerun is compared with one process within the DDP tolerance).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lm_experiments.cli import run
from lm_tiny import write_corpora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEQ = 16
ROOT = Path(__file__).resolve().parent.parent
EXIT_REQUEUE = 75  # EX_TEMPFAIL (sysexits.h), the documented code a job script requeues on


def _cfg(paths: dict[str, str]) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 6 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 0.5], "checkpoint_every": 0},
        "post": {"sweep": {"lr": [2.0e-3], "batch_size": [4], "dropout": [0.1]}, "max_epochs": 2, "eval_every_epochs": 1.0,
                 "patience": 2, "post_train_tokens": 16 * SEQ, "checkpoint_every": 0},
        "ft": {"lr": [1.0e-3], "tokens": 4 * 4 * SEQ, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm_preempt")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(write_corpora(root))))
    cache = root / "cache"
    out = root / "ref"
    assert run(["run", "--config", str(cfg), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    return {"root": root, "cfg": cfg, "cache": cache, "plan": m["plan"], "frontier": (out / "frontier.csv").read_bytes()}


def _cmd(ref: dict, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lm_experiments", "run", "--config", str(ref["cfg"]), "--out", str(out),
            "--cache", str(ref["cache"]), "--no-progress", *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LM_EXPERIMENTS_FAULT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _state_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "train_state" / "state.pt", map_location="cpu", weights_only=False)["step"])


def _check_stopped(out: Path, p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == EXIT_REQUEUE, p.stderr[-3000:]
    assert "preempted" in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["preempted"] and not m["failed"] and not m["status"]["complete"]
    assert not (out / "frontier.csv").exists()
    return m


def _check_resumed(ref: dict, out: Path, run_dir: Path, step: int, env: dict[str, str], *extra: str) -> None:
    p = _run(_cmd(ref, out, *extra), env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "frontier.csv").read_bytes() == ref["frontier"]
    assert json.loads((run_dir / "result.json").read_text())["train"]["resumed_from"] == step
    assert not (run_dir / "train_state").exists()


def test_serial_sigterm_mid_post_training_checkpoints_at_that_step_and_the_rerun_is_bitwise(
        ref: dict, tmp_path: Path) -> None:
    out = tmp_path / "serial"
    post = out / "upstream" / f"post-{ref['plan']['post'][0]}"
    p = _run(_cmd(ref, out), _env(LM_EXPERIMENTS_FAULT_SIGTERM="post:3"))
    _check_stopped(out, p)
    assert _state_step(post) == 3  # the step the signal arrived at
    assert not (post / "result.json").exists()  # no partial result of the stopped run
    assert (out / "upstream" / f"pre-{ref['plan']['pre'][0]}" / "result.json").exists()  # its upstream finished
    _check_resumed(ref, out, post, 3, _env())


def test_ray_sigterm_in_a_worker_checkpoints_at_that_step_and_the_rerun_is_bitwise(ref: dict, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    pre = out / "upstream" / f"pre-{ref['plan']['pre'][1]}"  # lambda = 0.5
    p = _run(_cmd(ref, out, "--executor", "ray"), _env(LM_EXPERIMENTS_FAULT_SIGTERM="pre lam=0.5:2"))
    m = _check_stopped(out, p)
    assert {"stage": "pre", "id": ref["plan"]["pre"][1]} in m["preempted"]
    assert _state_step(pre) == 2
    assert not (pre / "result.json").exists()
    _check_resumed(ref, out, pre, 2, _env(), "--executor", "ray")


def test_ray_driver_sigterm_stops_the_sweep_with_the_requeue_code_and_the_rerun_is_bitwise(
        ref: dict, tmp_path: Path) -> None:
    """The scheduler's signal reaches the driver only (Slurm ``--signal=B:TERM`` forwarded by
    the job script): the driver tells the running tasks, waits for their checkpoints, exits 75."""
    out = tmp_path / "driver"
    log = tmp_path / "trainings.log"
    proc = subprocess.Popen(_cmd(ref, out, "--executor", "ray"), env=_env(LM_EXPERIMENTS_TRAINING_LOG=str(log)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (log.exists() and log.read_text().strip()):  # the first training started in a worker
        assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    _check_stopped(out, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert (out / ".units" / "PREEMPTED").exists()  # the driver told its tasks; the rerun removes it
    p = _run(_cmd(ref, out, "--executor", "ray"), _env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "frontier.csv").read_bytes() == ref["frontier"]
    assert not (out / ".units" / "PREEMPTED").exists()


@pytest.fixture(scope="module")
def one_chain(ref: dict) -> dict:
    """One chain (pre -> post -> ft) without dropout, run in one process: the reference of the
    multi-process tests (DDP's dropout masks differ from one process's)."""
    cfg = yaml.safe_load(ref["cfg"].read_text())
    cfg["pre"]["mix_fraction"] = [0.5]
    cfg["post"]["sweep"]["dropout"] = [0.0]
    path = ref["root"] / "one_chain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = ref["root"] / "one_chain"
    assert run(["run", "--config", str(path), "--out", str(out), "--cache", str(ref["cache"]), "--no-progress"]) == 0
    return {"cfg": cfg, "path": path, "out": out, "plan": json.loads((out / "manifest.json").read_text())["plan"]}


def _check_two_ranks_stopped_and_resumed(ref: dict, one_chain: dict, out: Path, rerun: list[str]) -> None:
    from early_exposure.frontier import read_frontier

    post = out / "upstream" / f"post-{one_chain['plan']['post'][0]}"
    state = torch.load(post / "train_state" / "state.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 2 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    p = _run(rerun, _env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((post / "result.json").read_text())["train"]["resumed_from"] == 2
    a, b = read_frontier(out / "frontier.csv"), read_frontier(one_chain["out"] / "frontier.csv")
    assert list(a["run_id"]) == list(b["run_id"]) == one_chain["plan"]["ft"]
    for col in ("L_im", "L_ret", "L_ft", "L_pre"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, err_msg=col)


def test_torchrun_ranks_agree_on_the_step_when_one_rank_is_signalled(ref: dict, one_chain: dict,
                                                                     tmp_path: Path) -> None:
    """``train.procs_per_run: 2`` (each unit a torchrun job of 2 gloo ranks): only rank 1 gets
    the SIGTERM; rank 0 stops at the same step through the agreement and writes the checkpoint
    (both ranks' RNG states), the sweep exits 75, and the rerun completes with the losses of one
    process within the DDP tolerance (rtol 1e-5, tests/test_lm_ddp.py; bitwise resume at the same
    world size is tested there)."""
    cfg = {**one_chain["cfg"], "train": {"procs_per_run": 2}}
    ref2 = {**ref, "cfg": tmp_path / "procs2.yaml"}
    ref2["cfg"].write_text(yaml.safe_dump(cfg))
    out = tmp_path / "stopped"
    p = _run(_cmd(ref2, out), _env(LM_EXPERIMENTS_FAULT_SIGTERM="post:2@1"))
    _check_stopped(out, p)
    _check_two_ranks_stopped_and_resumed(ref, one_chain, out, _cmd(ref2, out))


def test_outer_torchrun_ranks_checkpoint_together_and_the_rerun_completes(ref: dict, one_chain: dict,
                                                                          tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m lm_experiments run``: rank 1 alone is signalled; both
    ranks stop at its step and exit 75 (torchrun itself reports the failed workers: exit 1, as
    docs/lm_scaleout.md says), the manifest lists the preemption, and the rerun completes."""
    out = tmp_path / "outer"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launch, *_cmd({**ref, "cfg": one_chain["path"]}, out)[1:]]
    p = _run(cmd, _env(LM_EXPERIMENTS_FAULT_SIGTERM="post:2@1", OMP_NUM_THREADS="1"))
    assert p.returncode != 0 and "exitcode  : 75" in p.stderr and "exitcode  : 1" not in p.stderr, p.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["preempted"] and not m["failed"] and not (out / "frontier.csv").exists()
    _check_two_ranks_stopped_and_resumed(ref, one_chain, out, cmd)
