"""``paper_checks`` and ``figures`` on damaged results: skipped and listed, never a crash.

A results tree holds one finished tiny LM sweep (``lm/tiny/``). Damage: a truncated
``result.json`` of one fine-tuning run, a truncated ``eval.npz`` of another (both in the
checks' analyses), a truncated theta_pre safetensors (the regime table); then the frontier
table itself (truncated, not UTF-8, a column missing) and a garbage ``sweep.parquet``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from figures.common import frontier_tables, load_frontier, load_parquet, Skip
from lm_experiments.cli import run
from lm_tiny import write_corpora
from paper_checks.cli import main as checks_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEQ = 16


@pytest.fixture(scope="module")
def lm_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readers")
    paths = write_corpora(root)
    cfg = {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 0.5], "checkpoint_every": 0},
        "post": {"sweep": {"lr": [2.0e-3], "batch_size": [4]}, "max_epochs": 1, "eval_every_epochs": 1.0,
                 "patience": 1, "post_train_tokens": 12 * SEQ, "checkpoint_every": 0},
        "ft": {"lr": [1.0e-3, 3.0e-3], "tokens": 2 * 4 * SEQ, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "out"
    assert run(["run", "--config", str(root / "tiny.yaml"), "--out", str(out), "--cache", str(root / "cache"),
                "--no-progress"]) == 0
    return out


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _damaged_tree(lm_out: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    res = tmp_path / "results"
    d = res / "lm" / "tiny"
    shutil.copytree(lm_out, d)
    plan = json.loads((d / "manifest.json").read_text())["plan"]
    victims = {"result": d / "runs" / plan["ft"][0] / "result.json",
               "npz": d / "runs" / plan["ft"][1] / "eval.npz",
               "pre": d / "upstream" / f"pre-{plan['pre'][0]}" / "model" / "model.safetensors"}
    for p in victims.values():
        _truncate(p)
    return res, victims


def test_paper_checks_skip_and_list_damaged_runs(lm_out: Path, tmp_path: Path, capsys) -> None:
    res, victims = _damaged_tree(lm_out, tmp_path)
    out = tmp_path / "report"
    assert checks_main(["--results", str(res), "--out", str(out), "--n-boot", "20", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    report = json.loads((out / "report.json").read_text())
    forgetting = next(v for k, v in report["analyses"].items() if k.startswith("forgetting"))
    layerwise = next(v for k, v in report["analyses"].items() if k.startswith("layerwise"))
    # forgetting reads result.json and eval.npz: both damaged runs skipped, named, with what is wrong
    listed = " ".join(forgetting["skipped_damaged"])
    assert len(forgetting["skipped_damaged"]) == 2
    assert str(victims["result"]) in listed and str(victims["npz"]) in listed
    assert sum(r["runs"] for r in forgetting["table"]) == 4 - 2  # 2 lambdas x 2 ft lrs, 2 damaged
    # layerwise reads result.json: the run with the truncated eval.npz is damaged too (its integrity record)
    assert len(layerwise["skipped_damaged"]) == 2
    # the regime table leaves out the runs it cannot trust and says which
    skipped = report["regime"]["skipped_damaged"]["tiny"]
    assert any(str(victims["pre"]) in s for s in skipped) and any(str(victims["result"]) in s for s in skipped)
    md = (out / "report.md").read_text()
    assert "skipped 2 damaged run(s)" in md and "Damaged runs left out of the regime table" in md


def test_figures_list_and_drop_damaged_runs(lm_out: Path, tmp_path: Path) -> None:
    res, victims = _damaged_tree(lm_out, tmp_path)
    log: list[str] = []
    tables = list(frontier_tables(res, "frontier", log.append, "frontiers"))
    rows = pd.concat([t[2] for t in tables])
    bad_ids = {victims["result"].parent.name, victims["npz"].parent.name}
    full = pd.read_csv(res / "lm" / "tiny" / "frontier.csv")
    assert set(rows["run_id"]) == set(full["run_id"]) - bad_ids
    damaged_lines = [ln for ln in log if ln.startswith("skip damaged run")]
    assert len(damaged_lines) == 2 and all(any(i in ln for i in bad_ids) for ln in damaged_lines)


@pytest.mark.parametrize("damage", ["truncated", "truncated, no manifest", "not UTF-8", "column missing"])
def test_figures_skip_a_damaged_frontier_table(lm_out: Path, tmp_path: Path, damage: str) -> None:
    res = tmp_path / "results"
    shutil.copytree(lm_out, res / "lm" / "tiny")
    csv = res / "lm" / "tiny" / "frontier.csv"
    text = csv.read_bytes()
    if damage.startswith("truncated"):
        csv.write_bytes(text[: len(text) // 3])
        if damage.endswith("no manifest"):  # as a table written by hand: UTF-8 and a final newline checked
            (csv.parent / "frontier.csv.manifest.json").unlink()
    elif damage == "not UTF-8":
        csv.write_bytes(text.replace(b"unmixed", b"unm\xffxed", 1))
    else:
        pd.read_csv(csv).drop(columns=["L_ret"]).to_csv(csv, index=False)
    with pytest.raises(Skip, match="damaged"):
        load_frontier(csv)
    log: list[str] = []
    assert list(frontier_tables(res, "frontier", log.append, "frontiers")) == []
    assert any(ln.startswith("skip frontiers lm-tiny:") and str(csv) in ln for ln in log)


@pytest.mark.parametrize("damage", ["truncated", "cut at a line end", "not UTF-8", "column missing"])
def test_paper_checks_on_a_damaged_frontier_table_say_what_is_wrong(lm_out: Path, tmp_path: Path, capsys,
                                                                   damage: str) -> None:
    res = tmp_path / "results"
    shutil.copytree(lm_out, res / "lm" / "tiny")
    csv = res / "lm" / "tiny" / "frontier.csv"
    text = csv.read_bytes()
    if damage == "truncated":
        csv.write_bytes(text[: len(text) * 2 // 3])
    elif damage == "cut at a line end":  # parses as a valid, shorter table: only the manifest tells
        lines = text.splitlines(keepends=True)
        assert len(lines) >= 3
        csv.write_bytes(b"".join(lines[:-1]))
        assert len(pd.read_csv(csv)) == len(lines) - 2
    elif damage == "not UTF-8":
        csv.write_bytes(text.replace(b"unmixed", b"unm\xffxed", 1))
    else:
        pd.read_csv(csv).drop(columns=["L_ret"]).to_csv(csv, index=False)
    out = tmp_path / "report"
    assert checks_main(["--results", str(res), "--out", str(out), "--n-boot", "20", "--quiet"]) == 0
    assert "Traceback" not in "".join(capsys.readouterr())
    lm = [c for c in json.loads((out / "report.json").read_text())["checks"] if c["side"] == "lm"]
    assert lm and all(c["status"] == "INCONCLUSIVE" and f"{csv} damaged" in c["evidence"] for c in lm)


def test_a_garbage_parquet_is_skipped_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "sweep.parquet"
    p.write_bytes(b"PAR1 this is not a parquet file at all")
    log: list[str] = []
    assert load_parquet(p, log.append, "phase diagram") is None
    assert len(log) == 1 and log[0].startswith("skip phase diagram:") and "damaged" in log[0]
    good = tmp_path / "good.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(good)
    assert load_parquet(good, log.append, "x")["a"].tolist() == [1, 2]
