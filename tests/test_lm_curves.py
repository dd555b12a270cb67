"""Training curves written while a run trains (``--curves``) and exported from finished runs.

References: the run's own ``TrainResult.history`` / ``result.json`` ``train.history`` (the
values the curve must hold), the file on disk read back independently *during* training (it
must grow at every logging step), an uninterrupted run (for a resumed one), a run without
curves (training must not change), fake tracker modules (no network, no install).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from early_exposure.errors import ConfigError
from lm_experiments.engine.curves import CURVE_COLUMNS, CsvCurves, TensorBoardCurves, TrackerCurves, csv_text, require
from lm_experiments.engine.optim import OptimConfig
from lm_experiments.engine.train import EarlyStop, train
from lm_tiny import T, ArraySource, tiny_model, write_corpora

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CPU = torch.device("cpu")
OPT = OptimConfig(lr=3e-3, warmup_steps=2)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _as_history(rows: list[dict[str, str]]) -> list[dict]:
    """Rows back to history records (floats round-trip exactly through the file)."""
    return [{"step": int(r["step"]), **{k: float(r[k]) for k in CURVE_COLUMNS[1:] if r[k] != ""}} for r in rows]


class _Watched(CsvCurves):
    """A CSV sink that, after each write, reads the file back from disk (a separate open)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seen: list[list[int]] = []  # the steps on disk after each log call

    def log(self, records):
        super().log(records)
        self.seen.append([int(r["step"]) for r in _rows(self.path)])


def test_csv_curve_grows_at_every_logging_step_and_ends_equal_to_the_history(tmp_path):
    val = ArraySource(1, batch=8, seed=9).data.reshape(-1, T)

    def eval_fn(m):
        from lm_experiments.engine.evaluate import evaluate

        return evaluate(m, val, batch_size=8, device=CPU).mean_loss

    sink = _Watched(tmp_path / "run" / "curves.csv")
    res = train(tiny_model(), ArraySource(8), optim=OPT, ckpt_dir=tmp_path / "run" / "ck", device=CPU,
                log_every=2, stopping=EarlyStop(eval_fn, eval_every=4), curves=sink)
    sink.close()
    # logging steps 2, 4, 6, 8: the file on disk had 2k rows at the k-th one, while training ran
    assert sink.seen == [list(range(1, 2 * k + 1)) for k in (1, 2, 3, 4)]
    rows = _rows(sink.path)
    assert list(rows[0]) == list(CURVE_COLUMNS)
    assert _as_history(rows) == res.history  # same steps, same values (exact), val_loss where evaluated
    assert [r["step"] for r in rows if r["val_loss"]] == ["4", "8"]
    assert sink.path.read_text() == csv_text(res.history)


def test_curves_do_not_change_training(tmp_path):
    a = tiny_model(dropout=0.1)
    ra = train(a, ArraySource(5), optim=OPT, ckpt_dir=tmp_path / "a", device=CPU, seed=3)
    b = tiny_model(dropout=0.1)
    sink = CsvCurves(tmp_path / "b.csv")
    rb = train(b, ArraySource(5), optim=OPT, ckpt_dir=tmp_path / "b", device=CPU, seed=3, curves=sink)
    sink.close()
    assert ra.history == rb.history
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_resumed_run_rewrites_its_curve_up_to_the_checkpoint(tmp_path):
    full = CsvCurves(tmp_path / "full.csv")
    ref = train(tiny_model(), ArraySource(8), optim=OPT, ckpt_dir=tmp_path / "ref", device=CPU, curves=full)
    full.close()
    path = tmp_path / "run" / "curves.csv"
    sink = CsvCurves(path)
    part = train(tiny_model(), ArraySource(8), optim=OPT, ckpt_dir=tmp_path / "run" / "ck", device=CPU,
                 stop_after_steps=4, curves=sink)
    sink.close()
    assert part.steps == 4 and [int(r["step"]) for r in _rows(path)] == [1, 2, 3, 4]
    # the interrupted attempt got further than its checkpoint before it died: rows 5-6 (and a half row)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("5,9.0,,0.001,1.0\n6,9.5,,0.001,1.0\n7,9.")
    sink = _Watched(path)
    res = train(tiny_model(), ArraySource(8), optim=OPT, ckpt_dir=tmp_path / "run" / "ck", device=CPU, curves=sink)
    sink.close()
    assert res.resumed_from == 4
    assert sink.seen[0] == [1, 2, 3, 4, 5]  # the stale rows were dropped before step 5 was written
    assert path.read_bytes() == (tmp_path / "full.csv").read_bytes()  # as the uninterrupted run's
    assert _as_history(_rows(path)) == ref.history


def test_a_diverged_run_ends_its_curve_at_the_failed_step(tmp_path):
    sink = CsvCurves(tmp_path / "c.csv")
    res = train(tiny_model(), ArraySource(30), optim=OptimConfig(lr=1e6), ckpt_dir=tmp_path / "ck", device=CPU,
                curves=sink)
    sink.close()
    assert res.diverged and res.steps < 30
    assert not math.isfinite(float(_rows(tmp_path / "c.csv")[-1]["train_loss"] or "nan") + float(
        _rows(tmp_path / "c.csv")[-1]["grad_norm"] or "0"))  # the failed step's row is the last one
    assert _rows(tmp_path / "c.csv")[-1]["step"] == str(res.history[-1]["step"])
    assert (tmp_path / "c.csv").read_text() == csv_text(res.history)


# ---------------------------------------------------------------------------- missing packages
@pytest.mark.parametrize("kind,module", [("tensorboard", "tensorboard"), ("trackio", "trackio"),
                                         ("wandb-offline", "wandb")])
def test_a_missing_writer_package_is_one_clear_line_and_exit_2(kind, module, monkeypatch, capsys, tmp_path):
    from lm_experiments.cli import run

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=f"--curves.*{module} is not installed; .*pip install {module}"):
        require(kind)
    rc = run(["run", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out"),
              "--cache", str(tmp_path / "c"), "--curves", kind])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"pip install {module}" in err
    assert not (tmp_path / "out").exists()


def test_export_to_tensorboard_without_tensorboard_exits_2(monkeypatch, capsys, tmp_path):
    from lm_experiments.analysis.curves import main

    (tmp_path / "runs").mkdir()
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main(["--results", str(tmp_path), "--out", str(tmp_path / "tb"), "--format", "tensorboard"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert main(["--results", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_the_default_imports_no_writer_package():
    code = ("import sys\n"
            "from lm_experiments.cli import build_parser\n"
            "import lm_experiments.engine.train, lm_experiments.runner.pipeline, lm_experiments.analysis.curves\n"
            "assert build_parser().parse_args(['run', '--config', 'cpu-quick', '--out', 'y']).curves is None\n"
            "print(sorted(m for m in ('tensorboard', 'torch.utils.tensorboard', 'trackio', 'wandb') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- writers with fake packages
def _fake_tensorboard(monkeypatch) -> list:
    calls: list = []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            calls.append(("open", purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            calls.append("flush")

        def close(self):
            calls.append("close")

    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    mod = types.ModuleType("torch.utils.tensorboard")
    mod.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", mod)
    return calls


def test_tensorboard_writer_logs_scalars_live_and_purges_on_resume(monkeypatch, tmp_path):
    calls = _fake_tensorboard(monkeypatch)
    hist = [{"step": 1, "train_loss": 4.0, "lr": 1e-3}, {"step": 2, "train_loss": 3.5, "lr": 1e-3, "val_loss": 3.9}]
    tb = TensorBoardCurves(tmp_path / "tb" / "post-x")
    tb.begin([])
    tb.log(hist[:1])
    assert calls == [("open", None), "flush", ("train_loss", 4.0, 1), ("lr", 1e-3, 1), "flush"]
    tb.close()
    calls.clear()
    tb = TensorBoardCurves(tmp_path / "tb" / "post-x")  # the directory exists: a resumed attempt
    tb.begin(hist[:1])
    tb.log(hist[1:])
    tb.close()
    assert calls[0] == ("open", 1)  # TensorBoard hides the earlier attempt's events from step 1 on
    assert [c for c in calls if isinstance(c, tuple) and c[0] != "open"] == [
        ("train_loss", 4.0, 1), ("lr", 1e-3, 1), ("train_loss", 3.5, 2), ("val_loss", 3.9, 2), ("lr", 1e-3, 2)]


@pytest.mark.parametrize("kind,module", [("trackio", "trackio"), ("wandb-offline", "wandb")])
def test_tracker_writer_is_local_and_logs_every_step(kind, module, monkeypatch, tmp_path):
    calls: list = []
    fake = types.ModuleType(module)

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append("finish")

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    fake.init, fake.log, fake.finish = init, Run().log, Run().finish
    monkeypatch.setitem(sys.modules, module, fake)
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    sink = TrackerCurves(kind, tmp_path / "trackers", "ft-r1")
    sink.begin([{"step": 1, "train_loss": 4.0, "lr": 1e-3}])
    sink.log([{"step": 2, "train_loss": float("nan"), "lr": 1e-3}])
    sink.close()
    init_kw = calls[0][1]
    assert init_kw["name"] == "ft-r1"
    if kind == "wandb-offline":
        assert init_kw["mode"] == "offline" and init_kw["dir"] == str(tmp_path / "trackers")
    else:
        import os

        assert os.environ["TRACKIO_DIR"] == str(tmp_path / "trackers" / "trackio") and "space_id" not in init_kw
    assert calls[1:] == [("log", {"train_loss": 4.0, "lr": 1e-3}, 1), ("log", {"lr": 1e-3}, 2), "finish"]


# ---------------------------------------------------------------------------- the pipeline, end to end
def _tiny_config(root: Path) -> Path:
    """One run per stage (pre, post with early stopping, ft) on the tiny corpora."""
    import yaml

    paths = write_corpora(root)
    seq = 16
    cfg = {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": seq, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * seq, "batch_size": 4, "mix_fraction": [0.5], "checkpoint_every": 0},
        "post": {"max_epochs": 1, "eval_every_epochs": 1.0, "patience": 1, "post_train_tokens": 12 * seq,
                 "checkpoint_every": 0, "sweep": {"batch_size": [4]}},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * seq, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }
    p = root / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_pipeline_writes_live_curves_in_each_run_dir_and_export_matches(tmp_path, capsys):
    """``--curves csv`` on a tiny sweep: every trained run's ``curves.csv`` (written by the
    process that trained it) holds its result.json history; the export of the finished runs
    gives the same bytes; the curve is not part of the run's integrity record; without
    ``--curves`` no curve is written."""
    from early_exposure.runs import RunTree, damage
    from lm_experiments.analysis.curves import history_of, main as export_main
    from lm_experiments.cli import run

    p = _tiny_config(tmp_path)
    out = tmp_path / "out"
    assert run(["run", "--config", str(p), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress",
                "--curves", "csv"]) == 0
    assert "live training curves -> " in capsys.readouterr().out
    tree = RunTree(out)
    dirs = {s: tree.run_dirs(s) for s in ("pre", "post", "ft")}
    assert all(len(v) == 1 for v in dirs.values())
    for stage, (d,) in dirs.items():
        hist = history_of(stage, json.loads(RunTree.record(d).read_text()))
        assert len(hist) >= 2 and any("val_loss" in h for h in hist) == (stage == "post")
        live = RunTree.curves(d)
        assert _as_history(_rows(live)) == hist
    dest = tmp_path / "exported"
    assert export_main(["--results", str(out), "--out", str(dest)]) == 0
    exported = sorted(f.name for f in dest.glob("*.csv"))
    assert exported == sorted(f"{tree.curve_name(d)}.csv" for (d,) in dirs.values())
    for (d,) in dirs.values():
        assert (dest / f"{tree.curve_name(d)}.csv").read_bytes() == RunTree.curves(d).read_bytes()
    # the curve is a view of result.json: deleting it does not damage (and so never redoes) the run
    (d,) = dirs["ft"]
    RunTree.curves(d).unlink()
    assert damage(d) is None
    # the default writes no curve anywhere
    out2 = tmp_path / "out2"
    assert run(["run", "--config", str(p), "--out", str(out2), "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    assert not list(out2.rglob("curves.csv")) and not (out2 / "tensorboard").exists()


def test_export_of_hand_made_records_keeps_every_value_and_lists_damaged_runs(tmp_path, capsys):
    from lm_experiments.analysis.curves import main

    hist = [{"step": 1, "train_loss": 7.5, "lr": 1e-4}, {"step": 2, "train_loss": 7.25, "lr": 2e-4, "val_loss": 7.0}]
    ft_hist = [{"step": 1, "train_loss": 3.125, "lr": 1e-3, "grad_norm": 0.5}]
    for rel, rec in (("upstream/post-abc", {"stage": "post", "diverged": False, "train": {"history": hist}}),
                     ("runs/r1", {"diverged": False, "stages": {"ft": {"history": ft_hist}}}),
                     ("upstream/pre-none", {"stage": "pre", "diverged": True, "train": {"steps": 0}})):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "result.json").write_text(json.dumps(rec))
    (tmp_path / "upstream" / "pre-bad").mkdir(parents=True)
    (tmp_path / "upstream" / "pre-bad" / "result.json").write_text('{"stage": "pre", "tr')  # truncated
    dest = tmp_path / "dest"
    assert main(["--results", str(tmp_path), "--out", str(dest)]) == 0
    assert sorted(f.name for f in dest.iterdir()) == ["ft-r1.csv", "post-abc.csv"]
    assert (dest / "post-abc.csv").read_text() == (
        "step,train_loss,val_loss,lr,grad_norm\n1,7.5,,0.0001,\n2,7.25,7.0,0.0002,\n")
    assert _as_history(_rows(dest / "ft-r1.csv")) == ft_hist
    err = capsys.readouterr().err
    assert "damaged run left out: " in err and "pre-bad" in err
    empty = tmp_path / "empty"
    (empty / "runs").mkdir(parents=True)
    assert main(["--results", str(empty), "--out", str(tmp_path / "d2")]) == 1


@pytest.mark.slow
def test_ray_workers_write_the_same_live_curves_as_the_serial_executor(tmp_path):
    """Each Ray task writes the curve of the run it trains, in that run's directory; the files
    are the serial executor's byte for byte (the runs are bitwise the same)."""
    from lm_experiments.cli import run

    p = _tiny_config(tmp_path)
    files = {}
    for ex in ("serial", "ray"):
        out = tmp_path / ex
        assert run(["run", "--config", str(p), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress",
                    "--curves", "csv", "--executor", ex]) == 0
        files[ex] = {f.relative_to(out).as_posix(): f.read_bytes() for f in sorted(out.rglob("curves.csv"))}
    assert len(files["serial"]) == 3 and all(len(b.splitlines()) >= 3 for b in files["serial"].values())
    assert files["ray"] == files["serial"]
