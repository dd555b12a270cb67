"""``python -m linear_theory``: run outputs, bad-input exit code 2 with nothing written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from early_exposure.configs import to_dict
from linear_theory import default_config
from linear_theory.cli import main

ROOT = Path(__file__).resolve().parent.parent
_FAST = ["--set", "stages.pre.steps=60", "--set", "stages.post.steps=20", "--set", "stages.ft.steps=20"]


def test_run_writes_result_and_trajectory(tmp_path):
    out = tmp_path / "run"
    rc = main(["run", "--config", str(ROOT / "configs/theory/default.yaml"), "--out", str(out),
               "--trajectory-stride", "10", *_FAST])
    assert rc == 0
    body = json.loads((out / "result.json").read_text())
    assert set(body["losses"]) == {"L_pretrain", "L_im", "L_ret", "L_ft", "L_pre"}
    assert set(body["spectra"]) == {"init", "pre", "post", "ft"}
    assert all(len(v) == 8 for v in body["spectra"].values())
    assert set(body["offdiag"]) == {"init", "pre", "post", "ft"}
    assert body["diverged"] is False and body["diverged_stage"] is None
    assert body["config"]["stages"]["pre"]["steps"] == 60
    assert body["config"]["task"] == to_dict(default_config().task)
    assert "git_commit" in body["provenance"] and body["provenance"]["versions"]["jax"]
    assert body["seed"] == 0
    tr = pd.read_csv(out / "trajectory.csv")
    assert len(tr) == (60 // 10 + 1) + (20 // 10 + 1) * 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_json_config_equivalent_to_yaml(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(to_dict(default_config())))
    for name, cfg in (("j", str(p)), ("y", str(ROOT / "configs/theory/default.yaml"))):
        assert main(["run", "--config", cfg, "--out", str(tmp_path / name), *_FAST]) == 0
    a = json.loads((tmp_path / "j" / "result.json").read_text())
    b = json.loads((tmp_path / "y" / "result.json").read_text())
    assert a["losses"] == b["losses"] and a["config"] == b["config"]


def test_diverged_run_records_nulls(tmp_path):
    out = tmp_path / "div"
    assert main(["run", "--out", str(out), *_FAST, "--set", "stages.post.lr=5"]) == 0
    body = json.loads((out / "result.json").read_text())
    assert body["diverged"] is True and body["diverged_stage"] == "post"
    assert body["losses"]["L_ret"] is None and math.isfinite(body["losses"]["L_pretrain"])


BAD = [
    (["--set", "stages.pre.mix_fraction=1.5"], "stages.pre.mix_fraction"),
    (["--set", "stages.post.replay=-0.1"], "stages.post.replay"),
    (["--set", "stages.post.dropout=1.0"], "stages.post.dropout"),
    (["--set", "task.k=5"], "task.k"),
    (["--set", "task.sigma_inc_pre=[1.0]"], "task.sigma_inc_pre"),
    (["--set", "task.sigma_inv=[1, 2, 3]"], "task.sigma_inv"),
    (["--set", "stages.ft.steps=-3"], "stages.ft.steps"),
    (["--set", "stages.pre.lr=-0.1"], "stages.pre.lr"),
    (["--set", "task.beta=.nan"], "task.beta"),
    (["--set", "task.beta=.inf"], "task.beta"),
    (["--set", "stages.post.bogus=1"], "stages.post.bogus"),
    (["--set", "stages.pre.steps=ten"], "stages.pre.steps"),
    (["--set", "model.init=xavier"], "model.init"),
    (["--set", "model.width=4", "--set", "model.init=ideal"], "model.width"),
    (["--set", "precision=float16"], "precision"),
    (["--trajectory-stride", "0"], "--trajectory-stride"),
]


@pytest.mark.parametrize("extra, field", BAD)
def test_bad_input_exits_2_naming_field_and_writes_nothing(tmp_path, capsys, extra, field):
    out = tmp_path / "out"
    rc = main(["run", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and field in err[0], err
    assert not out.exists()


def test_bad_config_file_and_unknown_section(tmp_path, capsys):
    cfg = to_dict(default_config())
    cfg["extra_section"] = {}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "extra_section" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_process_exit_code_is_2(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "linear_theory", "run", "--out", str(out), "--set",
                           "stages.pre.mix_fraction=2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "stages.pre.mix_fraction" in proc.stderr
    assert not out.exists()
