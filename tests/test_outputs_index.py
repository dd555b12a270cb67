"""What a tiny sweep leaves for a user to find their way: ``checkpoints.csv`` (every run
directory once, each row equal to an independent read of the run's ``result.json``), model
cards whose front matter carries the run's lineage, and the index refreshed when a sweep is
resumed. One tiny sweep (CPU, 2 lambdas, the matched study on: every kind of run directory)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lm_experiments.cli import run
from lm_tiny import write_corpora

SEQ = 16


def _config(paths: dict[str, str]) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 64, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "model": {"preset": "tiny-1m"},
        "pre": {"tokens": 4 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 0.5], "optim": {"warmup_steps": 1},
                "checkpoint_every": 0},
        "post": {"sweep": {"lr": [1.0e-3], "batch_size": [4]}, "max_epochs": 1, "eval_every_epochs": 0.5,
                 "patience": 2, "post_train_tokens": 12 * SEQ, "optim": {"warmup_steps": 1}},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * SEQ, "batch_size": 4, "optim": {"warmup_steps": 0},
               "save_checkpoints": True},
        "matched": {"enabled": True, "max_checkpoints": 2},
        "eval": {"batch_size": 8},
        "seeds": [0],
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("outputs")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_config(write_corpora(root))))
    out = root / "out"
    argv = ["run", "--config", str(cfg), "--out", str(out), "--cache", str(root / "cache"), "--no-progress"]
    assert run(argv) == 0
    return {"out": out, "argv": argv}


def _index(out: Path) -> list[dict[str, str]]:
    with open(out / "checkpoints.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _cell(v) -> str:
    """A value as the csv module writes it (None empty, JSON for a mapping)."""
    if v is None:
        return ""
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)


def test_every_run_directory_is_indexed_once_and_matches_its_record(sweep: dict) -> None:
    out = sweep["out"]
    rows = _index(out)
    run_dirs = sorted(p.parent.relative_to(out).as_posix() for p in out.glob("*/*/result.json")
                      if p.parent.parent.name in ("upstream", "runs", "trajectory"))
    indexed = [r["run_dir"] for r in rows if r["stage"] != "post-trajectory"]
    assert sorted(indexed) == run_dirs and len(set(indexed)) == len(indexed)
    stages = [r["stage"] for r in rows]
    assert stages.count("pre") == 2 and stages.count("post") == 2 and stages.count("ft") == 2
    assert stages.count("traj") == 2 and stages.count("post-trajectory") >= 2
    for r in rows:
        d = out / r["run_dir"]
        if r["stage"] == "post-trajectory":
            meta = json.loads((d / "meta.json").read_text())
            assert int(r["step"]) == meta["step"] and float(r["L_im"]) == meta["L_im"]
            assert r["model_dir"] == f"{r['run_dir']}/model"
            continue
        rec = json.loads((d / "result.json").read_text())
        own = {"pre": "pre_id", "post": "upstream_id", "ft": "run_id", "traj": "traj_id"}[r["stage"]]
        assert r["id"] == rec[own] and d.name.endswith(rec[own])
        assert r["status"] == ("diverged" if rec["diverged"] else "ok")
        assert r["seed"] == str(rec["seed"]) and float(r["mix_fraction"]) == rec["mix_fraction"]
        assert r["pre_id"] == rec["pre_id"]
        if r["stage"] != "pre":
            assert r["upstream_id"] == rec["upstream_id"]
        if r["stage"] in ("post", "ft"):
            assert r["compute_matched"] == _cell(rec["compute_matched"])
            setting = rec["setting"] if r["stage"] == "post" else rec["post_hparams"]
            assert json.loads(r["post_hparams"]) == setting
        if r["stage"] in ("ft", "traj"):
            assert float(r["ft_lr"]) == rec["ft_lr"] and r["method"] == rec["method"]
        if r["stage"] != "traj":
            assert json.loads(r["losses"]) == rec["losses"]
            for k in ("L_im", "L_ret", "L_ft", "L_pre"):
                assert r[k] == _cell(rec["losses"].get(k))
        model = "model" if r["stage"] == "ft" else rec.get("model_dir")
        assert r["model_dir"] == (f"{r['run_dir']}/{model}" if model and (d / model).is_dir() else "")
        if r["model_dir"]:
            assert (out / r["model_dir"] / "config.json").is_file()


def test_model_cards_carry_the_lineage_of_their_run(sweep: dict) -> None:
    from lm_experiments.engine.model_card import read_front_matter

    out = sweep["out"]
    cards = 0
    for r in _index(out):
        if not r["model_dir"] or r["stage"] == "post-trajectory":
            continue
        meta = read_front_matter((out / r["model_dir"] / "README.md").read_text())
        rec = json.loads((out / r["run_dir"] / "result.json").read_text())
        lin = meta["early_exposure"]
        assert meta["license"] == "mit" and meta["library_name"] == "transformers"
        assert lin["stage"] == r["stage"] and lin["seed"] == rec["seed"] and lin["mix_fraction"] == rec["mix_fraction"]
        for k in ("pre_id", "upstream_id", "run_id", "compute_matched", "ft_lr"):
            assert lin.get(k) == rec.get(k), k
        if r["stage"] == "post":
            assert lin["setting"] == rec["setting"] and lin["losses"] == rec["losses"]
            assert lin["train"]["steps"] == rec["train"]["steps"]
            assert meta["base_model"] == f"upstream/pre-{rec['pre_id']}/model"
            assert (out / meta["base_model"]).is_dir() and meta["datasets"] == ["local:post"]
        elif r["stage"] == "pre":
            assert lin["losses"] == rec["losses"] and lin["train"]["tokens"] == rec["train"]["tokens"]
            assert "base_model" not in meta
            assert meta["datasets"] == (["local:pre", "local:post"] if rec["mix_fraction"] > 0 else ["local:pre"])
        else:  # ft: the four losses of the frontier, the upstream theta_post
            assert lin["setting"] == rec["post_hparams"] and meta["datasets"] == ["local:ft"]
            assert all(math.isclose(lin["losses"][k], rec["losses"][k]) for k in ("L_ret", "L_ft", "L_pre"))
            assert meta["base_model"] == f"upstream/post-{rec['upstream_id']}/model"
            assert lin["train"]["tokens"] == rec["stages"]["ft"]["tokens"]
        cards += 1
    assert cards == 6


def test_resumed_sweep_refreshes_the_index(sweep: dict, tmp_path: Path) -> None:
    """A run redone on resume and a stale index (rows of a run removed since) are both fixed
    by the next sweep's end."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(sweep["out"], out)
    victim = next(r for r in _index(out) if r["stage"] == "ft")
    shutil.rmtree(out / victim["run_dir"])
    (out / "checkpoints.csv").write_text("stale\n")
    argv = list(sweep["argv"])
    argv[argv.index("--out") + 1] = str(out)
    assert run(argv) == 0
    again, first = _index(out), _index(sweep["out"])
    assert [r["run_dir"] for r in again] == [r["run_dir"] for r in first]
    loss_cols = ("L_im", "L_ret", "L_ft", "L_pre", "losses")
    for a, b in zip(again, first):  # the redone run: the same losses up to float noise
        assert {k: v for k, v in a.items() if k not in loss_cols} == {k: v for k, v in b.items() if k not in loss_cols}
        for k in loss_cols[:4]:
            assert (a[k] == b[k] == "") or math.isclose(float(a[k]), float(b[k]), rel_tol=1e-6)


def _results_root(sweep: dict, root: Path) -> Path:
    """A results root around the tiny sweep: the theory, figures, report, logs and record of
    the main job (small stand-ins), the sweep as preset ``tiny`` and one file of the user's."""
    import shutil

    shutil.copytree(sweep["out"], root / "lm" / "tiny")
    (root / "lm" / "tiny" / "checkpoints.csv").unlink()  # a sweep from before the index
    for rel in ("theory/verify/theorems.json", "theory/sweep/sweep.parquet", "theory/matched/matched.csv",
                "figures/fig2_theory.png", "figures/fig2_theory.pdf", "report/report.md", "report/report.json",
                "report/verdicts.csv", "logs/01_theory_verify.log", "reproduce.json", "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}")
    (root / "report/report.json").write_text(json.dumps({"checks": [], "summary": {}}))
    return root


def _links(md: str) -> list[str]:
    import re

    return re.findall(r"\]\(([^)#]+)\)", md)


def test_reproduce_leaves_a_guide_to_every_entry_of_the_results(sweep: dict, tmp_path: Path, monkeypatch) -> None:
    """``reproduce`` ends with RESULTS/README.md (and the index of a preset that lacks one):
    every path the guide names exists, every top-level entry and every entry of a preset's
    directory is described, each stage's run directories are counted."""
    import re

    import paper_checks.reproduce as rp

    root = _results_root(sweep, tmp_path / "results")
    import sys

    noop = rp.Step("noop", (sys.executable, "-c", "pass"), ())  # the real steps ran before
    monkeypatch.setattr(rp, "plan", lambda preset, out, executor="serial", curves=None: [noop])
    assert rp.reproduce_main(["--out", str(root), "--executor", "serial"]) == 0
    guide = (root / "README.md").read_text()
    links = _links(guide)
    assert links and all((root / p).exists() for p in links), [p for p in links if not (root / p).exists()]
    top = guide[guide.index("## What is here"):].split("\n\n")[1]
    described = {m.rstrip("/") for m in re.findall(r"^\| \[[^]]+\]\(([^)]+)\)", top, re.M)}
    assert described == {p.name for p in root.iterdir()}  # README.md, notes.txt included
    assert "| [notes.txt](notes.txt) | not written by the main job" in guide
    tiny = root / "lm" / "tiny"
    assert (tiny / "checkpoints.csv").is_file()  # written for the preset that had none
    for p in tiny.iterdir():
        assert f"[lm/tiny/{p.name}](lm/tiny/{p.name}{'/' if p.is_dir() else ''})" in guide, p.name
    counts = {s: len(list(tiny.glob(g))) for s, g in (("pre", "upstream/pre-*"), ("post", "upstream/post-*"),
                                                        ("ft", "runs/*"), ("traj", "trajectory/*"))}
    assert f"({counts['pre']} pretraining, {counts['post']} post-training runs)" in guide
    assert f"one directory per fine-tuning run: `runs/<run_id>/` ({counts['ft']} runs)" in guide
    for rel in ("report/report.md", "report/verdicts.csv", "figures/fig2_theory.png", "logs/01_theory_verify.log",
                "lm/tiny/checkpoints.csv", "theory/verify/"):
        assert f"]({rel})" in guide, rel
    assert "No `checkpoints.csv` yet" not in guide


def test_a_sweep_with_failed_runs_still_writes_the_index(sweep: dict, tmp_path: Path, monkeypatch) -> None:
    """A fine-tuning run that fails (an exception in training) is recorded and the sweep goes
    on; the partial sweep's index lists every run directory there is, not the failed one."""
    import shutil

    import lm_experiments.engine.train as engine

    out = tmp_path / "partial"
    shutil.copytree(sweep["out"], out)
    ft_dirs = sorted(p.parent for p in out.glob("runs/*/result.json"))
    for d in ft_dirs:
        shutil.rmtree(d)
    (out / "checkpoints.csv").unlink()
    real = engine.train

    def failing(model, source, **kw):
        if kw["desc"].startswith("ft"):
            raise RuntimeError("injected failure")
        return real(model, source, **kw)

    monkeypatch.setattr(engine, "train", failing)
    argv = list(sweep["argv"])
    argv[argv.index("--out") + 1] = str(out)
    assert run(argv) != 0
    assert (out / "frontier.partial.csv").exists()  # the partial sweep's tables
    rows = _index(out)
    assert not any(r["stage"] == "ft" for r in rows)
    assert [r["run_dir"] for r in rows] == [r["run_dir"] for r in _index(sweep["out"]) if r["stage"] != "ft"]
