"""The Ray executor against the serial one (a local Ray instance with 2 worker CPUs).

- The same small sweep run serially and as Ray tasks gives a bitwise identical frontier table.
- A worker killed mid-sweep (its process exits without cleanup) is recorded as failed with
  its descendants while the other runs finish; rerunning completes with the same table.
- A run that raises is recorded while the others finish (their results are on disk).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lm_experiments.cli import run
from lm_tiny import write_corpora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEQ = 16


def _cfg(paths: dict[str, str]) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 1.0], "checkpoint_every": 0},
        "post": {"sweep": {"lr": [2.0e-3], "batch_size": [4]}, "extra": [{"replay": 0.1}], "max_epochs": 1,
                 "eval_every_epochs": 1.0, "patience": 1, "post_train_tokens": 12 * SEQ, "checkpoint_every": 0},
        "ft": {"lr": [1.0e-3, 3.0e-3], "tokens": 2 * 4 * SEQ, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm_ray")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(write_corpora(root))))
    cache = root / "cache"

    def go(out: Path, *extra: str) -> int:
        return run(["run", "--config", str(cfg), "--out", str(out), "--cache", str(cache), "--no-progress", *extra])

    serial = root / "serial"
    assert go(serial) == 0
    return {"root": root, "go": go, "serial": (serial / "frontier.csv").read_bytes()}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_ray_sweep_equals_serial_bitwise(sweep: dict) -> None:
    out = sweep["root"] / "ray"
    assert sweep["go"](out, "--executor", "ray") == 0
    assert (out / "frontier.csv").read_bytes() == sweep["serial"]
    m = _manifest(out)
    assert m["executor"] == "ray" and m["status"]["complete"] and not m["failed"]
    assert m["status"]["ft"]["done"] == 2 * 2 * 2  # 2 lambdas x 2 settings x 2 ft lrs


def test_killed_worker_is_recorded_and_a_rerun_completes_the_same_table(sweep: dict, monkeypatch) -> None:
    out = sweep["root"] / "killed"
    marker = sweep["root"] / "killed.marker"
    monkeypatch.setenv("LM_EXPERIMENTS_FAULT_EXIT", str(marker))
    assert sweep["go"](out, "--executor", "ray", "--max-retries", "0") == 1
    assert marker.exists()  # one worker died
    m = _manifest(out)
    lost = [f for f in m["failed"] if not f["skipped"]]
    assert len(lost) == 1 and not m["status"]["complete"] and not (out / "frontier.csv").exists()
    finished = m["status"]["pre"]["done"] + m["status"]["post"]["done"] + m["status"]["ft"]["done"] - len(m["failed"])
    assert finished > 0  # the rest went on
    monkeypatch.delenv("LM_EXPERIMENTS_FAULT_EXIT")
    assert sweep["go"](out, "--executor", "ray") == 0
    assert (out / "frontier.csv").read_bytes() == sweep["serial"]


def test_a_raising_run_is_recorded_while_the_others_finish(sweep: dict, monkeypatch) -> None:
    from early_exposure.frontier import read_frontier

    serial = read_frontier(sweep["root"] / "serial" / "frontier.csv")
    victim = str(serial["upstream_id"].iloc[0])  # one post-training run and its 2 fine-tunings
    out = sweep["root"] / "raising"
    monkeypatch.setenv("LM_EXPERIMENTS_FAULT_RAISE", victim)
    assert sweep["go"](out, "--executor", "ray") == 1
    m = _manifest(out)
    by_id = {f["id"]: f for f in m["failed"]}
    assert "injected failure" in by_id[victim]["error"] and not by_id[victim]["skipped"]
    assert sum(f["skipped"] for f in m["failed"]) == 2 and len(m["failed"]) == 3
    partial = read_frontier(out / "frontier.partial.csv")
    assert len(partial) == len(serial) - 2 and victim not in set(partial["upstream_id"])
    assert m["status"]["ft"]["done"] == len(serial)  # every unit was attempted or skipped
