"""Damaged LM artefacts are detected, reported in one line and redone; one lock per run.

Reference: one finished tiny sweep (2 mixing fractions x 1 post-training setting x 1
fine-tuning lr). Each test copies it, damages one file, reruns the same command and checks
(a) exactly one ``damaged artefact`` line naming the file, no traceback, exit 0; (b) the
damaged unit alone was redone (its ``result.json`` rewritten, every other one untouched);
(c) the redone file and the final frontier equal the undamaged run's, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from early_exposure.integrity import manifest_path, unit_lock
from lm_experiments.cli import run
from lm_experiments.engine.optim import OptimConfig
from early_exposure.runs import RunTree
from lm_experiments.engine.train import train
from lm_tiny import ArraySource, tiny_model, write_corpora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEQ = 16
ROOT = Path(__file__).resolve().parent.parent


def _cfg(paths: dict[str, str]) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 0.5], "checkpoint_every": 0},
        "post": {"sweep": {"lr": [2.0e-3], "batch_size": [4]}, "max_epochs": 1, "eval_every_epochs": 1.0,
                 "patience": 1, "post_train_tokens": 12 * SEQ, "checkpoint_every": 0},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * SEQ, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm_integrity")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(write_corpora(root))))
    cache = root / "cache"
    argv = ["run", "--config", str(cfg), "--cache", str(cache), "--no-progress"]
    out = root / "ref"
    assert run([*argv[:3], "--out", str(out), *argv[3:]]) == 0
    m = json.loads((out / "manifest.json").read_text())
    return {"root": root, "out": out, "argv": argv, "cache": cache, "cfg": cfg, "plan": m["plan"],
            "frontier": (out / "frontier.csv").read_bytes()}


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("**/result.json")}


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path) -> None:
    """Same size, one byte changed in the middle (a structurally intact file, wrong content)."""
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _drop_record(run_dir: Path) -> None:
    """Remove the integrity record, as in a run directory written before records existed."""
    p = run_dir / "result.json"
    rec = json.loads(p.read_text())
    del rec["integrity"]
    p.write_text(json.dumps(rec))


# (case, run directory of the damaged unit, file inside it, damage)
CASES = {
    "ft result.json truncated": ("runs/{ft}", "result.json", _truncate),
    "theta_post safetensors truncated": ("upstream/post-{post}", "model/model.safetensors", _truncate),
    "theta_pre safetensors truncated": ("upstream/pre-{pre}", "model/model.safetensors", _truncate),
    "eval.npz truncated": ("runs/{ft}", "eval.npz", _truncate),
    "eval_post.npz one byte changed": ("upstream/post-{post}", "eval_post.npz", _flip),
    "theta_post config one byte changed": ("upstream/post-{post}", "model/config.json", _flip),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_run_artefact_is_reported_once_redone_and_the_frontier_is_unchanged(
        ref: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    out = tmp_path / "out"
    shutil.copytree(ref["out"], out)
    d_tpl, name, damage = CASES[case]
    ids = {"ft": ref["plan"]["ft"][1], "post": ref["plan"]["post"][1], "pre": ref["plan"]["pre"][1]}
    run_dir = out / d_tpl.format(**ids)
    victim = run_dir / name
    good = (ref["out"] / d_tpl.format(**ids) / name).read_bytes()
    damage(victim)
    assert victim.read_bytes() != good
    before = _mtimes(out)
    capsys.readouterr()
    assert run([*ref["argv"][:3], "--out", str(out), *ref["argv"][3:]]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in (cap.out + cap.err).splitlines() if "damaged artefact" in ln]
    assert len(lines) == 1, lines
    assert str(victim) in lines[0] and "redoing" in lines[0]
    assert "Traceback" not in cap.out + cap.err
    changed = {k for k, v in _mtimes(out).items() if before.get(k) != v}
    assert changed == {str((run_dir / "result.json").relative_to(out))}
    if name == "result.json":  # redone: the same losses and files (times and cache hits differ)
        new, old = json.loads(victim.read_text()), json.loads(good)
        assert new["losses"] == old["losses"] and new["integrity"] == old["integrity"]
    else:
        assert victim.read_bytes() == good  # redone, to the same bytes
    assert (out / "frontier.csv").read_bytes() == ref["frontier"]


def test_a_run_directory_without_integrity_record_gets_structural_checks(ref: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "legacy"
    shutil.copytree(ref["out"], out)
    post = out / "upstream" / f"post-{ref['plan']['post'][0]}"
    for d in [p.parent for p in out.glob("**/result.json")]:
        _drop_record(d)
    victim = post / "model" / "model.safetensors"
    good = victim.read_bytes()
    _truncate(victim)
    capsys.readouterr()
    assert run([*ref["argv"][:3], "--out", str(out), *ref["argv"][3:]]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if "damaged artefact" in ln]
    assert len(lines) == 1 and str(victim) in lines[0] and "truncated" in lines[0]
    assert victim.read_bytes() == good and (out / "frontier.csv").read_bytes() == ref["frontier"]


def test_damaged_training_checkpoint_is_discarded_and_the_run_equals_an_uninterrupted_one(tmp_path: Path,
                                                                                          capsys) -> None:
    src = ArraySource(8)
    kw = dict(optim=OptimConfig(lr=2e-3, min_lr=1e-4, warmup_steps=1), device=torch.device("cpu"), seed=3)
    ref_model = tiny_model()
    ref_res = train(ref_model, src, ckpt_dir=tmp_path / "ref", **kw)
    for damage in (_truncate, _flip):
        ck = tmp_path / f"ck-{damage.__name__}"
        train(tiny_model(), src, ckpt_dir=ck, stop_after_steps=4, checkpoint_every=2, **kw)
        state = ck / "state.pt"
        assert manifest_path(state).is_file()
        damage(state)
        capsys.readouterr()
        model = tiny_model()  # the caller builds the run's initial model, as the stage functions do
        res = train(model, src, ckpt_dir=ck, checkpoint_every=2, **kw)
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "damaged artefact" in ln]
        assert len(lines) == 1 and str(state) in lines[0] and "from its start" in lines[0]
        assert res.resumed_from is None and res.steps == 8
        assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref_res.history]
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref_model.parameters()))
        assert not ck.exists()  # the checkpoint and its manifest are gone after a finished run


def _count_trainings(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        unit = line.split()[0]
        counts[unit] = counts.get(unit, 0) + 1
    return counts


def test_two_concurrent_runs_on_one_directory_train_each_unit_once(ref: dict, tmp_path: Path) -> None:
    """Both processes start while this test holds the first pretraining run's lock, so both
    must wait on it (each says so); then they share the units: each trains once."""
    out = tmp_path / "shared"
    log = tmp_path / "trainings.log"
    env = {**os.environ, "LM_EXPERIMENTS_TRAINING_LOG": str(log), "PYTHONPATH": str(ROOT / "tests") + os.pathsep
           + str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "lm_experiments", *ref["argv"][:3], "--out", str(out), *ref["argv"][3:]]
    first = RunTree(out).lock("pre", ref["plan"]["pre"][0])
    errs = [tmp_path / f"err{i}.txt" for i in range(2)]
    handles = [open(e, "w") for e in errs]
    try:
        with unit_lock(first):
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=h) for h in handles]
            t0 = time.time()
            while not all("[lock]" in e.read_text() for e in errs):  # both wait for the held unit
                assert time.time() - t0 < 240 and all(p.poll() is None for p in procs), [e.read_text() for e in errs]
                time.sleep(0.2)
        rcs = [p.wait(timeout=600) for p in procs]
    finally:
        for h in handles:
            h.close()
    assert rcs == [0, 0], [e.read_text()[-2000:] for e in errs]
    counts = _count_trainings(log)
    units = {f"upstream/pre-{i}" for i in ref["plan"]["pre"]} | {f"upstream/post-{i}" for i in ref["plan"]["post"]} \
        | {f"runs/{i}" for i in ref["plan"]["ft"]}
    assert set(counts) == units and set(counts.values()) == {1}
    assert (out / "frontier.csv").read_bytes() == ref["frontier"]


def test_the_ray_executor_redoes_a_damaged_run_and_the_driver_prints_the_line(ref: dict, tmp_path: Path,
                                                                             capsys) -> None:
    out = tmp_path / "ray"
    shutil.copytree(ref["out"], out)
    victim = out / "upstream" / f"post-{ref['plan']['post'][0]}" / "model" / "model.safetensors"
    good = victim.read_bytes()
    _truncate(victim)
    capsys.readouterr()
    assert run([*ref["argv"][:3], "--out", str(out), *ref["argv"][3:], "--executor", "ray"]) == 0
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("damaged artefact")]
    assert len(lines) == 1 and str(victim) in lines[0] and "Traceback" not in cap.err
    assert victim.read_bytes() == good and (out / "frontier.csv").read_bytes() == ref["frontier"]
