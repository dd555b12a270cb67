"""The main job's runner: order, resume, failure handling, the reproduce.json record.

The real steps take minutes, so the runner is exercised on tiny subprocess steps; the
plan itself is checked for the order and commands the issue specifies.
"""

import json
import sys
from pathlib import Path

from paper_checks.cli import main
from paper_checks.reproduce import Step, plan, run_plan


def _writer(path, marker):
    code = f"import pathlib; p = pathlib.Path({str(path)!r}); p.parent.mkdir(parents=True, exist_ok=True); " \
           f"p.write_text('x'); open({str(marker)!r}, 'a').write('ran\\n')"
    return (sys.executable, "-c", code)


def test_plan_order_and_commands(tmp_path):
    steps = plan("quick", tmp_path)
    names = [s.name for s in steps]
    assert names == ["theory verify", "theory assumptions", "theory trajectory unmixed", "theory trajectory mixed",
                     "theory sweep", "theory frontier", "theory compute-matched", "theory latent", "theory matched",
                     "theory whatwhere", "LM cpu-quick-synth", "LM cpu-quick-synth whatwhere", "figures",
                     "paper checks"]
    for name in ("cpu-quick-synth",):
        lm = steps[names.index(f"LM {name}")]
        assert f"configs/lm/{name}.yaml" in lm.argv and str(tmp_path / "lm" / name) in lm.argv
        assert (Path(__file__).resolve().parent.parent / "configs" / "lm" / f"{name}.yaml").is_file()
    assert "stages.pre.mix_fraction=0.5" in steps[3].argv and "--trajectory-stride" in steps[3].argv
    ww = steps[names.index("LM cpu-quick-synth whatwhere")]  # reads the LM step's output directory
    assert "lm_experiments.analysis.whatwhere" in ww.argv and str(tmp_path / "lm" / "cpu-quick-synth") in ww.argv
    full = [s.name for s in plan("full", tmp_path)]
    for name in ("cpu-quick-synth", "cpu-natural-flan-music", "cpu-full", "cpu-full-flan-music"):  # natural text: longer
        assert f"LM {name}" in full and (Path(__file__).resolve().parent.parent / "configs" / "lm" / f"{name}.yaml").is_file()
    assert [s.name for s in plan("gpu", tmp_path)][10] == "LM gpu-135m"


def test_runner_continues_after_failure_records_and_resumes(tmp_path):
    out = tmp_path / "results"
    marker = tmp_path / "ran.txt"
    steps = [
        Step("first", _writer(out / "a/one.txt", marker), ("a/one.txt",)),
        Step("broken", (sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"), ("b/two.txt",)),
        Step("third", _writer(out / "c/three.txt", marker), ("c/three.txt",)),
        Step("derived", _writer(out / "d/four.txt", marker), ("d/four.txt",), derived=True),
    ]
    lines = []
    rec = run_plan(steps, out, "quick", log=lines.append)
    status = {s["name"]: s["status"] for s in rec["steps"]}
    assert status == {"first": "ok", "broken": "failed", "third": "ok", "derived": "ok"}
    assert rec["steps"][1]["returncode"] == 3 and "boom" in Path(rec["steps"][1]["log"]).read_text()
    assert json.loads((out / "reproduce.json").read_text())["steps"][2]["wall_s"] >= 0
    assert marker.read_text().count("ran") == 3
    assert any("FAILED" in line for line in lines)

    # resume: finished steps are skipped; the failed one is retried (and fails again)
    rec2 = run_plan(steps, out, "quick", log=lines.append)
    status2 = {s["name"]: s["status"] for s in rec2["steps"]}
    assert status2 == {"first": "skipped", "broken": "failed", "third": "skipped", "derived": "ok"}
    assert marker.read_text().count("ran") == 4  # only the derived step ran again

    # a removed output makes its step run again
    (out / "a/one.txt").unlink()
    steps_ok = [steps[0], steps[2]]
    rec3 = run_plan(steps_ok, out, "quick", log=lines.append)
    assert [s["status"] for s in rec3["steps"]] == ["ok", "skipped"]


def test_bad_preset_exits_2(tmp_path, capsys):
    assert main(["reproduce", "--preset", "huge", "--out", str(tmp_path / "r")]) == 2
    assert "--preset" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_heartbeat_while_a_step_runs(tmp_path):
    out = tmp_path / "results"
    step = Step("slow", (sys.executable, "-c", "import time; time.sleep(0.6)"), ())
    lines = []
    rec = run_plan([step], out, "quick", log=lines.append, heartbeat_s=0.1)
    assert rec["steps"][0]["status"] == "ok"
    assert any("still running" in line for line in lines)
