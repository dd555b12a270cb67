"""The one-command main job: the whole study, in order, resumable.

    python -m paper_checks reproduce --preset quick --out results/

Runs each step as a subprocess (theory verify, assumptions, trajectories, sweep,
frontier, compute-matched, the LM preset, figures, paper checks), prints one progress
line per step with its wall time, and records every step (command, status, wall time,
log file) in ``OUT/reproduce.json`` after each step. Rerunning skips the producer steps
recorded as finished with the same command whose outputs still exist (the LM and sweep
producers also resume inside a step); figures and checks always rerun (seconds). A
failed step is recorded and the others go on; the job then ends with a non-zero exit.
It ends by writing ``OUT/README.md`` (a guide to every file of the tree,
:mod:`paper_checks.results_guide`) and printing the verdict table and the paths of the figures.

Progress: the LM steps run with their progress bars on (into the step's log); while such a
step runs, its sweep-wide bar (runs done, tokens, rate and ETA) is relayed here: redrawn in
place on a terminal, one line per finished run otherwise (a log file, CI); other long steps
print a heartbeat line every minute.

Presets: ``quick`` (CPU, under 25 minutes on 2 cores: LM ``cpu-quick-flan-chem`` and
``cpu-quick-flan-music``, 3 seeds each, in the paper's regime), ``full``
(CPU, hours: LM ``cpu-full``, finer theory grids), ``gpu`` (LM ``gpu-135m``).
``--dry-run`` prints the plan only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from early_exposure.cliopts import add_executor, add_version, presets_root, resolve_executor
from early_exposure.configs import check_output_dir
from early_exposure.errors import ConfigError, Parser
from early_exposure.io import atomic_write_json
from early_exposure.provenance import provenance
from early_exposure.runs import ResultsRoot

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("quick", "full", "gpu")
#: the LM pipelines of each preset. quick: the synthetic world (its models beat their n-gram
#: baselines at every stage and reach the capability: docs/synthetic_world.md); the natural-text
#: pipelines do not beat their bigram baselines within the quick budget on 2 CPU cores
#: (docs/lm_calibration.md), so they run in the longer preset (and stay runnable one by one):
#: cpu-natural-flan-music beats them at all three stages at ft lr 1e-3 (outside the envelope).
LM_PRESETS = {"quick": ("cpu-quick-synth",),
              "full": ("cpu-quick-synth", "cpu-natural-flan-music", "cpu-full", "cpu-full-flan-music"),
              "gpu": ("gpu-135m",)}
Logger = Callable[[str], None]
GRID = {"quick": 32, "full": 64, "gpu": 64}


@dataclass(frozen=True)
class Step:
    """One subprocess of the main job; ``outputs`` (relative to OUT) mark it complete."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    derived: bool = False  # figures / checks: cheap, always rerun so they match the current data
    env: dict[str, str] = field(default_factory=dict)
    progress: str | None = None  # prefix of the step's progress-bar line to relay (None: heartbeat only)


#: the LM sweep's run-wide bar (lm_experiments.runner.pipeline: ``pipeline (<executor>)``): runs done, tokens, rate, ETA
PIPELINE_BAR = "pipeline ("


class ProgressTail:
    """The newest line starting with ``prefix`` in a growing log (tqdm redraws with ``\r``)."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix, self.offset, self.rest = path, prefix, 0, ""

    def latest(self) -> str | None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                new = fh.read()
        except OSError:
            return None
        self.offset += len(new)
        text = self.rest + new.decode("utf-8", errors="replace")
        parts = text.replace("\r", "\n").split("\n")
        self.rest = parts.pop()  # an unfinished last piece waits for the next read
        found = [p.strip() for p in parts if p.strip().startswith(self.prefix)]
        return found[-1] if found else None


def _config(*candidates: str) -> str:
    """The first of ``candidates`` (clone-relative ``configs/...`` paths) that ships as a preset
    (``early_exposure.cliopts.presets_root``: the installed package data, else the clone's
    ``configs/``); each command resolves such a path to the shipped file from any directory."""
    root = presets_root()
    for c in candidates:
        if (root / Path(c).relative_to("configs")).is_file():
            return c
    return candidates[-1]


def plan(preset: str, out: Path, executor: str = "serial", curves: str | None = None) -> list[Step]:
    """The ordered steps of ``preset`` writing under ``out`` (absolute); the LM steps run with
    ``executor`` (``serial`` or ``ray``) and write training curves live when ``curves`` is set
    (``lm_experiments run --curves``)."""
    if preset not in PRESETS:
        raise ConfigError("--preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}")
    from lm_experiments.cli import curves_argv  # parsing only: no torch (the LM steps run as subprocesses)

    py = (sys.executable,)
    root = ResultsRoot(out)
    t = root.theory_root
    default = "configs/theory/default.yaml"
    n = GRID[preset]
    steps = [
        Step("theory verify", (*py, "-m", "linear_theory", "verify", "--out", str(t / "verify")),
             ("theory/verify/theorems.json",)),
        Step("theory assumptions", (*py, "-m", "linear_theory", "assumptions", "--config", default,
                                    "--out", str(t / "verify")), ("theory/verify/assumptions.json",)),
    ]
    for name, fraction in (("unmixed", 0.0), ("mixed", 0.5)):
        steps.append(Step(f"theory trajectory {name}",
                          (*py, "-m", "linear_theory", "run", "--config", default, "--set",
                           f"stages.pre.mix_fraction={fraction}", "--trajectory-stride", "5",
                           "--out", str(t / "trajectories" / name)),
                          (f"theory/trajectories/{name}/result.json", f"theory/trajectories/{name}/trajectory.csv")))
    steps += [
        Step("theory sweep", (*py, "-m", "linear_theory", "sweep", "--config",
                              _config("configs/theory/sweep_alpha_beta.yaml", default),
                              "--grid", f"mix_fraction=0:1:{n}", "--grid", f"beta=0.1:4:{n}", "--out", str(t / "sweep")),
             ("theory/sweep/sweep.parquet",)),
        Step("theory frontier", (*py, "-m", "linear_theory", "frontier", "--config",
                                 _config("configs/theory/sweep_frontier.yaml", default), "--out", str(t / "frontier")),
             ("theory/frontier/frontier.csv",)),
        Step("theory compute-matched", (*py, "-m", "linear_theory", "compute-matched", "--config",
                                        _config("configs/theory/sweep_compute_matched.yaml", default),
                                        "--out", str(t / "compute_matched")),
             ("theory/compute_matched/frontier.csv",)),
        Step("theory latent", (*py, "-m", "linear_theory", "latent", "--out", str(t / "latent")),
             ("theory/latent/latent.json",)),
        Step("theory matched", (*py, "-m", "linear_theory", "matched", "--out", str(t / "matched")),
             ("theory/matched/matched.csv",)),
        Step("theory whatwhere", (*py, "-m", "linear_theory.studies.whatwhere", "--out", str(t / "whatwhere")),
             ("theory/whatwhere/whatwhere.json",)),
    ]
    for lm in LM_PRESETS[preset]:
        tree = root.lm(lm)
        steps += [
            Step(f"LM {lm}", (*py, "-m", "lm_experiments", "run", "--config", f"configs/lm/{lm}.yaml",
                              "--out", str(tree.out), "--executor", executor, *curves_argv(curves)),
                 (tree.frontier.relative_to(out).as_posix(),), progress=PIPELINE_BAR),
            # beyond the paper: what is forgotten (items) and where (layer rollback), docs/whatwhere.md
            Step(f"LM {lm} whatwhere", (*py, "-m", "lm_experiments.analysis.whatwhere", "--results", str(tree.out)),
                 ((tree.whatwhere / "items.json").relative_to(out).as_posix(),)),
        ]
    steps += [
        Step("figures", (*py, "-m", "figures", "all", "--results", str(out), "--out", str(root.figures)),
             ("figures/figures.json",), derived=True),
        Step("paper checks", (*py, "-m", "paper_checks", "--results", str(out), "--out", str(root.report),
                              "--quiet"), ("report/report.json", "report/report.md"), derived=True),
    ]
    return steps


def _load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
    return {}


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_plan(steps: list[Step], out: Path, preset: str, log: Logger = print, heartbeat_s: float = 60.0,
             poll_s: float = 2.0, tty: bool | None = None) -> dict[str, Any]:
    """Run (or skip) every step; returns and keeps writing the ``reproduce.json`` record.

    A step with ``progress`` has its progress line relayed each time it changes (polled every
    ``poll_s``): redrawn in place when ``tty`` (default: stdout is a terminal), else one line each."""
    if tty is None:
        tty = sys.stdout.isatty()
    state_path = ResultsRoot(out).state
    prev = {s["name"]: s for s in _load_state(state_path).get("steps", [])}
    record: dict[str, Any] = {"preset": preset, "out": str(out), "steps": [], "total_wall_s": 0.0,
                              "provenance": provenance()}
    t_all = time.perf_counter()
    for i, step in enumerate(steps, 1):
        p = prev.get(step.name, {})
        done = (p.get("status") in ("ok", "skipped") and p.get("argv") == list(step.argv)
                and all((out / o).is_file() for o in step.outputs))
        entry: dict[str, Any] = {"name": step.name, "argv": list(step.argv), "outputs": list(step.outputs)}
        if done and not step.derived:
            entry.update(status="skipped", wall_s=0.0, note="already complete", log=p.get("log"),
                         previous_wall_s=p.get("wall_s") if p.get("status") == "ok" else p.get("previous_wall_s"))
            log(f"[{i}/{len(steps)}] {step.name}: already complete, skipped")
        else:
            logf = ResultsRoot(out).logs / f"{i:02d}_{step.name.replace(' ', '_')}.log"
            logf.parent.mkdir(parents=True, exist_ok=True)
            log(f"[{i}/{len(steps)}] {step.name}: running ... (log: {logf})")
            t0 = time.perf_counter()
            with open(logf, "w", encoding="utf-8") as fh:
                fh.write("$ " + " ".join(step.argv) + "\n")
                fh.flush()
                proc = subprocess.Popen(list(step.argv), cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                        env={**os.environ, **step.env})
                tail = ProgressTail(logf, step.progress) if step.progress else None
                shown, last_beat, drawn, rc = None, t0, False, None
                try:
                    while rc is None:  # relay the step's progress line; else a heartbeat while a long step runs
                        try:
                            rc = proc.wait(timeout=poll_s if tail else heartbeat_s)
                        except subprocess.TimeoutExpired:
                            pass
                        if rc is not None and tail is None:
                            break
                        line = tail.latest() if tail else None  # after the exit too: the bar's final state
                        now = time.perf_counter()
                        if line is not None and line != shown:
                            shown, last_beat = line, now
                            if tty:
                                sys.stdout.write(f"\r\033[K[{i}/{len(steps)}] {step.name}: {line}")
                                sys.stdout.flush()
                                drawn = True
                            else:
                                log(f"[{i}/{len(steps)}] {step.name}: {line}")
                        elif rc is None and now - last_beat >= heartbeat_s:
                            last_beat = now
                            if drawn:
                                sys.stdout.write("\n")
                                drawn = False
                            log(f"[{i}/{len(steps)}] {step.name}: still running, {now - t0:.0f} s elapsed")
                except BaseException:
                    proc.terminate()
                    proc.wait()
                    raise
                finally:
                    if drawn:
                        sys.stdout.write("\n")
                        sys.stdout.flush()
            wall = time.perf_counter() - t0
            missing = [o for o in step.outputs if not (out / o).is_file()]
            ok = rc == 0 and not missing
            entry.update(status="ok" if ok else "failed", returncode=rc, wall_s=round(wall, 2), log=str(logf),
                         missing_outputs=missing)
            log(f"[{i}/{len(steps)}] {step.name}: {'ok' if ok else 'FAILED'} in {wall:.1f} s"
                + ("" if ok else f" (exit {rc}, missing {missing})\n" + _tail(logf)))
        record["steps"].append(entry)
        record["total_wall_s"] = round(time.perf_counter() - t_all, 2)
        atomic_write_json(state_path, record)
    return record


def finish_tree(out: Path) -> Path:
    """After the steps: ``checkpoints.csv`` for every LM preset directory that lacks one (a
    sweep from before the index; the sweeps write their own) and the guide ``OUT/README.md``
    (:mod:`paper_checks.results_guide`); returns the guide's path."""
    from lm_experiments.engine.checkpoints import write_checkpoint_index
    from paper_checks.results_guide import write_results_guide

    root = ResultsRoot(out)
    for d in sorted(root.lm_root.glob("*")):
        tree = root.lm(d.name)
        if d.is_dir() and tree.looks_like_run_tree() and not tree.checkpoint_index.is_file():
            write_checkpoint_index(tree.out, verify=False)
    return write_results_guide(out)


def reproduce_main(argv: list[str] | None) -> int:
    from lm_experiments.cli import CURVE_CHOICES  # parsing only: no torch

    ap = Parser(prog="python -m paper_checks reproduce", description=__doc__.split("\n")[0])
    add_version(ap)
    ap.add_argument("--preset", default="quick", choices=PRESETS,
                    help=f"quick: CPU, under 25 min on 2 cores (LM {', '.join(LM_PRESETS['quick'])}); "
                         f"full: CPU, hours (LM {', '.join(LM_PRESETS['full'])}, finer theory grids); "
                         f"gpu: LM {', '.join(LM_PRESETS['gpu'])} (default: quick)")
    ap.add_argument("--out", default="results", help="results directory (resumed if it exists; default: results)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    add_executor(ap, default="auto")
    ap.add_argument("--curves", choices=CURVE_CHOICES, default=None,
                    help="the LM steps write each run's training curve while it trains (lm_experiments run "
                         "--curves): csv = <run dir>/curves.csv, tensorboard, trackio, wandb-offline; default: off")
    args = ap.parse_args(argv)
    out = check_output_dir("--out", args.out).resolve()
    executor = resolve_executor(args.executor)
    steps = plan(args.preset, out, executor, curves=args.curves)
    print(f"LM executor: {executor}")
    if args.dry_run:
        for i, s in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {s.name}: {' '.join(s.argv)}")
        return 0
    record = run_plan(steps, out, args.preset)
    guide = finish_tree(out)
    failed = [s["name"] for s in record["steps"] if s["status"] == "failed"]
    report = ResultsRoot(out).report / "report.json"
    if report.is_file() and "paper checks" not in failed:
        from paper_checks.report import print_table

        print_table(json.loads(report.read_text(encoding="utf-8")))
        print(f"report: {report} and {report.with_suffix('.md')}")
    figs = ResultsRoot(out).figures / "figures.json"
    if figs.is_file():
        listed = json.loads(figs.read_text(encoding="utf-8"))
        print("figures:")
        for f in listed.get("figures", []):
            if f.endswith(".png"):
                print(f"  {ResultsRoot(out).figures / f}")
    print(f"guide to every file of the results: {guide}")
    print(f"total wall time {record['total_wall_s']:.1f} s; record: {ResultsRoot(out).state}")
    if failed:
        print(f"FAILED steps: {', '.join(failed)} (see their logs; rerun the same command to resume)", file=sys.stderr)
        return 1
    return 0
