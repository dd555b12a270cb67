"""lm_experiments.analysis.whatwhere end to end on a tiny two-seed pipeline (local corpora, CPU, tens of
seconds): every table is written, transition counts add up, `none` reproduces the recorded
L_ret and `all` the recorded L_im exactly, a run whose model was not saved is re-fine-tuned
to the same losses, and a directory that is not a run directory exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lm_experiments.cli import run
from lm_experiments.analysis.whatwhere import main as whatwhere_main
from lm_tiny import write_corpora

SEQ = 16


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_whatwhere")
    paths = write_corpora(root)
    cfg = {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "model": {"preset": "tiny-1m"},
        "pre": {"tokens": 6 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 1.0], "optim": {"warmup_steps": 1},
                "checkpoint_every": 0},
        "post": {"sweep": {"lr": [1.0e-3], "batch_size": [4]}, "max_epochs": 2, "eval_every_epochs": 1.0,
                 "patience": 1, "post_train_tokens": 20 * SEQ, "optim": {"warmup_steps": 1, "min_lr": 1.0e-4}},
        "ft": {"lr": [3.0e-3], "tokens": 4 * 4 * SEQ, "batch_size": 4, "optim": {"warmup_steps": 0},
               "save_checkpoints": True},
        "eval": {"batch_size": 8},
        "seeds": [0, 1],
        "device": "cpu",
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out, cache = root / "out", root / "cache"
    assert run(["run", "--config", str(root / "tiny.yaml"), "--out", str(out), "--cache", str(cache),
                "--no-progress"]) == 0
    # one run as if ft.save_checkpoints had been off: the analysis must re-fine-tune it
    victim = sorted((out / "runs").iterdir())[0]
    shutil.rmtree(victim / "model")
    rc = whatwhere_main([str(out), "--cache", str(cache)])
    return {"out": out, "rc": rc, "victim": victim.name}


def test_tables_written_and_counts_add_up(tree: dict) -> None:
    assert tree["rc"] == 0
    w = tree["out"] / "whatwhere"
    for name in ("items.json", "transitions.csv", "forgetting_map.csv", "agreement.csv", "protection.csv",
                 "rollback.csv", "depth_profile.csv", "update_geometry.csv", "update_geometry_map.csv"):
        assert (w / name).is_file(), name
    t = pd.read_csv(w / "transitions.csv")
    counts = t[["n_1->0", "n_0->1", "n_1->1", "n_0->0"]].sum(axis=1)
    assert (counts == t["n"]).all()
    assert ((t["n_1->0"] / t["n"] - t["forgetting"]).abs() < 1e-12).all()
    assert set(t["pair"]) == {"pre->post", "post->ft"}
    m = pd.read_csv(w / "forgetting_map.csv")
    assert (m["n_seeds"] == 2).all()
    info = json.loads((w / "items.json").read_text())
    assert info["runs"] == 4 and info["models_evaluated"] == 12  # per seed: 2 theta_pre, 2 theta_post, 2 theta_ft
    assert info["regenerated_ft"] == 1 and info["regenerated_L_ret_max_diff"] == 0.0


def test_rollback_none_and_all_reproduce_recorded_losses(tree: dict) -> None:
    rb = pd.read_csv(tree["out"] / "whatwhere" / "rollback.csv")
    recorded = {json.loads(p.read_text())["run_id"]: json.loads(p.read_text())["losses"]
                for p in (tree["out"] / "runs").glob("*/result.json")}
    assert set(rb["method"]) == {"unmixed", "mixed"} and rb["run_id"].nunique() == 4
    for rid, g in rb.groupby("run_id"):
        none, all_ = g[g["unit"] == "none"].iloc[0], g[g["unit"] == "all"].iloc[0]
        assert none["L_ret_rb"] == pytest.approx(recorded[rid]["L_ret"], abs=1e-6)
        assert all_["L_ret_rb"] == pytest.approx(recorded[rid]["L_im"], abs=1e-6)
        assert none["share_ret_undone"] == 0.0 and all_["share_ret_undone"] == pytest.approx(1.0)
        assert all_["L_ft_rb"] == pytest.approx(recorded[rid]["L_ft_stage2"], abs=1e-6)


def test_not_a_run_directory_exits_2(tmp_path: Path) -> None:
    assert whatwhere_main([str(tmp_path)]) == 2
    assert whatwhere_main([str(tmp_path / "absent")]) == 2
