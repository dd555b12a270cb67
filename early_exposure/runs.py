"""The run tree of an LM results directory: every path in it, the integrity record of each
run directory, damage checks, locks, and a reader that skips (and lists) damaged runs.

:class:`RunTree` is the one place that spells out the layout (a pure function of the
output directory)::

    OUT/manifest.json                       resolved config, plan, status, data, provenance
    OUT/frontier.csv (+ .manifest.json)     the frontier table (frontier.partial.csv before)
    OUT/matched.csv                         the matched-L_im table (when the study is on)
    OUT/checkpoints.csv                     index of every run directory (hash -> stage, lambda, seed, ...)
    OUT/regime.csv                          regime diagnostics of every fine-tuning run
    OUT/baselines.json                      n-gram baselines of the data (beside regime.csv)
    OUT/upstream/pre-<pre_id>/              theta_pre: model/, result.json
    OUT/upstream/post-<upstream_id>/        theta_post: model/, result.json, eval_post.npz,
                                            trajectory/step-NNNNNN/ (matched study)
    OUT/runs/<run_id>/                      one fine-tuning run: result.json, eval.npz, model/
    OUT/trajectory/<traj_id>/               fine-tuned stage-2 checkpoints: step-NNNNNN/result.json
    OUT/whatwhere/                          the what / where analysis
    OUT/.locks/<stage>-<id>.lock            one lock per unit of work
    OUT/tensorboard/<stage>-<id>/           live training curves (``--curves tensorboard``)
    OUT/trackers/                           local tracker files (``--curves trackio|wandb-offline``)
    <run dir>/curves.csv                    live training curve (``--curves csv``; not sealed)
    OUT/.units/                             scratch of multi-process units

Every run directory (``upstream/pre-*``, ``upstream/post-*``, ``runs/*``, ``trajectory/*``)
ends with ``result.json``, written last and atomically; it carries ``integrity``: the size
and SHA-256 of every other file of the directory (the model's safetensors, config and
tokenizer, ``eval.npz`` / ``eval_post.npz``, the stage-2 trajectory checkpoints), computed
just before (:func:`sealed`, :mod:`early_exposure.integrity`). :func:`damage` checks a
directory against it; the stage functions (:mod:`lm_experiments.protocol.stages`) redo a damaged run,
readers (``paper_checks``, ``figures``, the analyses) skip it and list it (:func:`read_run`,
:class:`RunReader`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from early_exposure import integrity

#: the run directories of each stage, relative to OUT (``{id}``: the run's own id)
STAGE_DIRS = {"pre": "upstream/pre-{id}", "post": "upstream/post-{id}", "ft": "runs/{id}", "traj": "trajectory/{id}"}


class RunTree:
    """Every path of one LM results directory (``lm_experiments run --out OUT``).

    Writers (the stage functions, the runner) and readers (``paper_checks``, ``figures``,
    the analyses) take their paths from here; readers go through :meth:`read` /
    :class:`RunReader`, which check each run against its integrity record."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)

    # ---- files of the whole sweep --------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.out / "manifest.json"

    @property
    def frontier(self) -> Path:
        return self.out / "frontier.csv"

    @property
    def frontier_partial(self) -> Path:
        return self.out / "frontier.partial.csv"

    @property
    def matched(self) -> Path:
        return self.out / "matched.csv"

    @property
    def checkpoint_index(self) -> Path:
        return self.out / "checkpoints.csv"

    @property
    def regime(self) -> Path:
        """The regime table (``python -m paper_checks.lm_regime OUT``)."""
        return self.out / "regime.csv"

    @property
    def baselines(self) -> Path:
        """The n-gram baselines of the run set's data, cached beside the regime table."""
        return self.out / "baselines.json"

    @property
    def whatwhere(self) -> Path:
        return self.out / "whatwhere"

    @property
    def units(self) -> Path:
        """Scratch directory of the multi-process units (spec and outcome files)."""
        return self.out / ".units"

    @property
    def preempt_marker(self) -> Path:
        """The file a Ray driver writes on SIGTERM to tell its tasks to checkpoint and stop."""
        return self.units / "PREEMPTED"

    # ---- run directories -----------------------------------------------------------------
    def run_dir(self, stage: str, ident: str) -> Path:
        """The directory of run ``ident`` of ``stage`` (pre | post | ft | traj)."""
        return self.out / STAGE_DIRS[stage].format(id=ident)

    def pre(self, pre_id: str) -> Path:
        return self.run_dir("pre", pre_id)

    def post(self, upstream_id: str) -> Path:
        return self.run_dir("post", upstream_id)

    def ft(self, run_id: str) -> Path:
        return self.run_dir("ft", run_id)

    def traj(self, traj_id: str) -> Path:
        return self.run_dir("traj", traj_id)

    def post_eval(self, upstream_id: str) -> Path:
        """A post-training run's per-example D_post losses and correctness (``eval_post.npz``)."""
        return self.post(upstream_id) / "eval_post.npz"

    def ft_eval(self, run_id: str) -> Path:
        """A fine-tuning run's per-example losses and correctness (``eval.npz``)."""
        return self.ft(run_id) / "eval.npz"

    def model(self, stage: str, ident: str) -> Path:
        """The saved model of a run (``model/``, loadable with ``from_pretrained``)."""
        return self.run_dir(stage, ident) / "model"

    def upstream_model_links(self, pre_id: str, upstream_id: str) -> dict[str, str]:
        """theta_pre and theta_post relative to a fine-tuning run's directory (its result.json)."""
        return {"theta_pre": str(Path("..", "..", *STAGE_DIRS["pre"].format(id=pre_id).split("/"), "model")),
                "theta_post": str(Path("..", "..", *STAGE_DIRS["post"].format(id=upstream_id).split("/"), "model"))}

    @staticmethod
    def record(run_dir: Path) -> Path:
        """The ``result.json`` of a run directory (or of one step of a trajectory)."""
        return Path(run_dir) / RECORD

    @staticmethod
    def step_dir(parent: Path, step: int) -> Path:
        """One checkpoint of a trajectory: ``<post run>/trajectory/step-NNNNNN`` (saved stage-2
        models) or ``<traj run>/step-NNNNNN`` (their fine-tuning) when ``parent`` is that."""
        return Path(parent) / f"step-{step:06d}"

    @staticmethod
    def post_trajectory(post_run: Path) -> Path:
        """The saved stage-2 checkpoints of a post-training run of the matched study."""
        return Path(post_run) / "trajectory"

    # ---- training curves (lm_experiments.engine.curves) -----------------------------------
    @staticmethod
    def curves(run_dir: Path) -> Path:
        """The live training curve of a run (``--curves csv``): ``<run dir>/curves.csv``; for
        a trajectory, one per fine-tuned checkpoint (``<traj run>/step-NNNNNN/curves.csv``)."""
        return Path(run_dir) / CURVES

    def curve_name(self, run_dir: Path) -> str:
        """``<stage>-<id>`` of a run directory (``pre-<id>``, ``post-<id>``, ``ft-<id>``,
        ``traj-<id>-step-NNNNNN``): its TensorBoard directory and tracker run name."""
        rel = self.relative(run_dir)
        for stage, pattern in STAGE_DIRS.items():
            prefix = pattern.split("{id}")[0]
            if rel.startswith(prefix):
                return f"{stage}-{rel[len(prefix):].replace('/', '-')}"
        return rel.replace("/", "-")

    def tensorboard(self, run_dir: Path) -> Path:
        """The TensorBoard directory of a run (``--curves tensorboard``): ``OUT/tensorboard/<stage>-<id>``."""
        return self.out / "tensorboard" / self.curve_name(run_dir)

    @property
    def trackers(self) -> Path:
        """Local tracker files (``--curves trackio`` / ``wandb-offline``): ``OUT/trackers``."""
        return self.out / "trackers"

    def lock(self, stage: str, unit: str) -> Path:
        """The lock file of one run: ``OUT/.locks/<stage>-<id>.lock``."""
        return self.out / ".locks" / f"{stage}-{unit}.lock"

    # ---- finding runs --------------------------------------------------------------------
    def looks_like_run_tree(self) -> bool:
        """Whether OUT holds anything of an LM results directory (a table, runs, a manifest)."""
        return any(p.exists() for p in (self.frontier, self.frontier_partial, self.manifest,
                                        self.out / STAGE_DIRS["ft"].split("/")[0]))

    def run_dirs(self, stage: str) -> list[Path]:
        """Every directory of ``stage`` that holds a ``result.json`` (finished or damaged), sorted."""
        pattern = STAGE_DIRS[stage].format(id="*")
        return [p.parent for p in sorted(self.out.glob(f"{pattern}/{RECORD}"))]

    def relative(self, d: Path) -> str:
        """``d`` relative to OUT (POSIX form)."""
        return Path(d).relative_to(self.out).as_posix()


#: the record every run directory ends with (written last, atomically)
RECORD = "result.json"
#: a run's live training curve (``--curves csv``); a convenience copy of ``train.history``
CURVES = "curves.csv"
class ResultsRoot:
    """The main job's results root (``python -m paper_checks reproduce --out RESULTS``): the
    theory studies' directories, one LM results directory (a :class:`RunTree`) per preset,
    figures, report and logs (docs/INTERFACES.md, "Results layout")."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def theory_root(self) -> Path:
        return self.root / "theory"

    def theory(self, study: str) -> Path:
        """``RESULTS/theory/<study>`` (verify, sweep, frontier, compute_matched, matched, latent, ...)."""
        return self.theory_root / study

    @property
    def lm_root(self) -> Path:
        """``RESULTS/lm``: one LM results directory per preset."""
        return self.root / "lm"

    def lm(self, preset: str) -> RunTree:
        """The LM results directory of ``preset``: ``RESULTS/lm/<preset>``."""
        return RunTree(self.lm_root / preset)

    def lm_trees(self) -> list[RunTree]:
        """Every LM results directory that holds a complete frontier table, sorted by preset."""
        return [RunTree(p.parent) for p in sorted(self.lm_root.glob(f"*/{RunTree('.').frontier.name}"))]

    def lm_dirs_with(self, sub: str) -> list[Path]:
        """``RESULTS/lm/*/<sub>`` that exist, sorted (e.g. ``whatwhere``)."""
        return sorted(self.lm_root.glob(f"*/{sub}"))

    @property
    def guide(self) -> Path:
        """``RESULTS/README.md``: what every file and directory of the tree is (``paper_checks.results_guide``)."""
        return self.root / "README.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        """The main job's record of its steps."""
        return self.root / "reproduce.json"


#: what a run directory's integrity record leaves out: the record itself, the engine's checkpoint,
#: the live training curve (a view of the record's history: editing or deleting it never redoes a run)
NOT_SEALED = (RECORD, "train_state", CURVES)


def sealed(d: Path) -> dict[str, Any]:
    """The size and SHA-256 of every file of run directory ``d`` but :data:`NOT_SEALED`."""
    return integrity.records(d, integrity.tree_files(d, exclude=NOT_SEALED))


def damage(d: Path) -> str | None:
    """What is wrong with the finished run directory ``d`` (None: intact, or not finished):
    an unreadable ``result.json``, or a file that differs from its integrity record (a
    directory written before records existed gets the structural checks instead)."""
    return read_run(d)[1] if (Path(d) / RECORD).exists() else None


def read_run(d: Path, *, strict: bool = True, may_be_absent: tuple[str, ...] = ()
             ) -> tuple[dict[str, Any] | None, str | None]:
    """``(result.json record, None)`` of an intact finished run directory, else
    ``(None, what is wrong)`` (one line naming the file). ``strict``: the record must be a
    stage's (hold ``diverged``); readers of hand-made trees pass False (any JSON object).
    ``may_be_absent``: relative path prefixes a reader can do without (e.g. ``model/`` for an
    analysis that re-trains a run whose saved model was removed); present files still match."""
    d = Path(d)
    p = d / RECORD
    rec, why = integrity.read_json(p)
    if why is None and (not isinstance(rec, dict) or (strict and "diverged" not in rec)):
        why = f"{p} is not a run record"
    if why is None:
        why = (integrity.check_records(d, rec["integrity"], may_be_absent) if rec.get("integrity") is not None
               else integrity.check_tree(d, integrity.tree_files(d, exclude=NOT_SEALED)))
    return (None, why) if why is not None else (rec, None)


class RunReader:
    """Reads run directories for an analysis, remembering which were damaged.

    ``reader.run(d)`` is the record of an intact run, None for a missing or damaged one;
    ``reader.skipped`` lists ``"<dir>: <what is wrong>"`` for every damaged one met (each
    once), for the report."""

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self._seen: dict[Path, dict[str, Any] | None] = {}

    def run(self, d: Path) -> dict[str, Any] | None:
        d = Path(d)
        if d not in self._seen:
            rec, why = (None, None) if not (d / RECORD).exists() else read_run(d, strict=False)
            if why is not None:
                self.skipped.append(f"{d}: {why}")
            self._seen[d] = rec
        return self._seen[d]

    def damaged(self, what: Path | str, why: str) -> None:
        """Record a damaged file found by the caller (e.g. an array that does not load)."""
        self.skipped.append(f"{what}: {why}")

    def file(self, d: Path, name: str) -> Path | None:
        """``d/name`` when the run in ``d`` is intact and holds it, else None."""
        p = Path(d) / name
        return p if self.run(d) is not None and p.is_file() else None


__all__ = ["STAGE_DIRS", "RECORD", "RunTree", "ResultsRoot", "NOT_SEALED", "sealed", "damage", "read_run", "RunReader"]
