"""``train.procs_per_run``: every run of a sweep data-parallel over its own torchrun job
(lm_experiments.runner.launch), from the serial executor and as a multi-process Ray task.

References: the one-process sweep of the same config (losses within the DDP tolerance of
tests/test_lm_engine_ddp.py: rtol 1e-5, gloo sums in another order than one process's matmuls),
and the serial executor's multi-process sweep (the Ray one must equal it bitwise: the same
torchrun jobs, only the placement differs).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from test_lm_engine_ddp import _pipeline_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_procs(cfg_path, n: int):
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"] = {"procs_per_run": n}
    p = cfg_path.with_name(f"procs{n}.yaml")
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """One-process sweep and the serial multi-process sweep of the same tiny config."""
    from lm_experiments.cli import run

    root = tmp_path_factory.mktemp("procs")
    cfg = _pipeline_config(root)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    assert run(["run", "--config", str(cfg), "--out", str(root / "one"), "--cache", str(root / "cache"),
                "--no-progress"]) == 0
    assert run(["run", "--config", str(_with_procs(cfg, 2)), "--out", str(root / "serial2"), "--cache",
                str(root / "cache"), "--no-progress"]) == 0
    return root, cfg


def test_serial_procs_per_run_matches_one_process(sweeps):
    from early_exposure.frontier import read_frontier

    root, _ = sweeps
    a, b = read_frontier(root / "serial2" / "frontier.csv"), read_frontier(root / "one" / "frontier.csv")
    assert list(a["run_id"]) == list(b["run_id"]) and len(a) == 1
    for col in ("L_im", "L_ret", "L_ft", "L_pre"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, err_msg=col)
    res = json.loads(next((root / "serial2" / "runs").glob("*/result.json")).read_text())
    assert {res["stages"][s]["world_size"] for s in ("pre", "post", "ft")} == {2}  # really data-parallel
    one = json.loads(next((root / "one" / "runs").glob("*/result.json")).read_text())
    assert {one["stages"][s]["world_size"] for s in ("pre", "post", "ft")} == {1}
    assert not list((root / "serial2" / ".units").iterdir())  # specs cleaned up


def test_ray_multi_process_tasks_equal_the_serial_ones(sweeps):
    from lm_experiments.cli import run

    root, cfg = sweeps
    assert run(["run", "--config", str(_with_procs(cfg, 2)), "--out", str(root / "ray2"), "--cache",
                str(root / "cache"), "--no-progress", "--executor", "ray"]) == 0
    assert (root / "ray2" / "frontier.csv").read_bytes() == (root / "serial2" / "frontier.csv").read_bytes()


def test_a_run_failing_inside_its_torchrun_job_is_recorded(sweeps, monkeypatch):
    """Injected failure in the post-training run: recorded with its error, its fine-tuning
    skipped, the sweep exits 1 and writes no complete frontier."""
    from lm_experiments.cli import run

    root, cfg = sweeps
    post_id = json.loads(next((root / "serial2" / "runs").glob("*/result.json")).read_text())["upstream_id"]
    monkeypatch.setenv("LM_EXPERIMENTS_FAULT_RAISE", post_id)
    assert run(["run", "--config", str(_with_procs(cfg, 2)), "--out", str(root / "fail2"), "--cache",
                str(root / "cache"), "--no-progress"]) == 1
    m = json.loads((root / "fail2" / "manifest.json").read_text())
    failed = {f["id"]: f for f in m["failed"]}
    assert post_id in failed and "injected failure" in failed[post_id]["error"]
    assert [f["skipped"] for f in m["failed"]].count(True) == 1  # its fine-tuning, not run
    assert not (root / "fail2" / "frontier.csv").exists()


def test_procs_per_run_validated():
    from early_exposure.errors import ConfigError
    from lm_experiments.config import TrainSection

    with pytest.raises(ConfigError, match="procs_per_run"):
        TrainSection(procs_per_run=0)
    with pytest.raises(ConfigError, match="procs_per_run"):
        TrainSection(procs_per_run=True)
