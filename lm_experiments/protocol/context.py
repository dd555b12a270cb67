"""What every stage function works with: :class:`StageContext` (config, prepared data,
device, the run tree) and :class:`StageResult`, plus the helpers the stages share.

Losses are reported on the test split when the data config has one (which no selection
sees); early stopping selects on the validation split. Every optimizer is built by
:func:`optim_for` from the stage's ``optim`` section. A finished run is returned as it is
once its directory matches the integrity record in its ``result.json``
(:func:`finished`; :mod:`early_exposure.runs`): a damaged run is reported in one line and
redone.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from early_exposure import integrity
from early_exposure.configs import to_dict
from early_exposure.io import atomic_write_bytes, atomic_write_json
from early_exposure.provenance import provenance
from early_exposure.runs import RunTree, read_run, sealed
from lm_experiments.config import OptimSection, PipelineConfig
from lm_experiments.protocol.prepared import prepare
from lm_experiments.engine import distributed
from lm_experiments.engine.distributed import main_first, main_process_only
from lm_experiments.protocol.plan import post_subset
from lm_experiments.protocol.schedules import PlannedSource

# under torchrun only rank 0 writes files (lm_experiments.engine.distributed); unchanged in one process
atomic_write_json = main_process_only(atomic_write_json)
atomic_write_bytes = main_process_only(atomic_write_bytes)
remove_train_state = main_process_only(lambda d: shutil.rmtree(d / "train_state", ignore_errors=True))


@dataclass(frozen=True)
class StageResult:
    """What a stage function returns: where the run lives and what ``result.json`` says."""

    stage: str                # "pre" | "post" | "ft"
    run_dir: Path
    diverged: bool
    losses: dict[str, float]
    record: dict[str, Any]    # the run's result.json


@dataclass
class StageContext:
    """Everything a stage needs besides its record: config, prepared data, device, output dir.

    ``data_used`` is the summary of :func:`lm_experiments.protocol.prepared.prepare` (which corpora,
    whether the fallback was used); ``cfg`` is the *effective* config (fallback applied).
    ``curves``: write every run's training curve live (:data:`lm_experiments.engine.curves.CURVE_KINDS`;
    None, the default: no curves).
    """

    cfg: PipelineConfig
    prepared: Any
    out: Path
    device: Any
    data_used: dict[str, Any]
    progress: bool = True
    curves: str | None = None

    def __post_init__(self) -> None:
        sp = self.prepared.splits
        self.pools = {role: sp[role].train for role in ("pre", "post", "ft")}
        self.val = {role: sp[role].val for role in ("pre", "post", "ft")}        # early stopping
        # reported losses: the test split (validation without one), or validation for calibration runs
        self.report_set = {role: sp[role].val if self.cfg.eval.report_split == "val" else sp[role].report
                           for role in ("pre", "post", "ft")}
        self.seq_len = int(sp["pre"].train.shape[1])
        self.post_idx = post_subset(int(sp["post"].train.shape[0]), self.cfg.post.post_train_tokens, self.seq_len)
        self.pipeline = self.cfg.pipeline_label(self.data_used["config"])
        self.provenance = provenance()
        self.config_dict = to_dict(self.cfg)
        self.tree = RunTree(self.out)  # every path of the results directory

    @classmethod
    def open(cls, cfg: PipelineConfig, out: Path, *, cache_root: Path | None = None,
             progress: bool = False, curves: str | None = None) -> StageContext:
        """Build the context in a fresh process from the config alone (data from the cache)."""
        from lm_experiments.engine.device import resolve_device

        with main_first():  # under torchrun rank 0 fills the data cache, the others then read it
            prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=progress, log=lambda _: None)
        return cls(cfg, prepared, Path(out), resolve_device(cfg.device), data_used, progress, curves)

    # ---- helpers ----------------------------------------------------------------------
    def evaluate(self, model: Any, role: str, *, correct: bool = False, split: str = "report") -> Any:
        """Loss of ``model`` on ``role``'s held-out blocks: ``split="report"`` the test split
        (the validation split when the data config has none, or with ``eval.report_split:
        val``), ``"val"`` the validation split that early stopping selects on."""
        from lm_experiments.engine.evaluate import evaluate

        blocks = self.val[role] if split == "val" else self.report_set[role]
        return evaluate(model, blocks, batch_size=self.cfg.eval.batch_size, device=self.device,
                        precision=self.cfg.precision, return_correct=correct)

    def load(self, path: Path) -> Any:
        from lm_experiments.engine.checkpoints import load_model

        return load_model(path, self.device)  # use_cache off for training (saved on, for generate)

    @main_process_only
    def save_model(self, model: Any, path: Path, extra: dict[str, Any]) -> None:
        from lm_experiments.engine.evaluate import save_checkpoint

        save_checkpoint(model, self.prepared.tokenizer, path, extra)

    def train(self, model: Any, source: PlannedSource, optim: Any, *, ckpt_dir: Path, seed: int, desc: str,
              checkpoint_every: int, eval_fn: Any = None, eval_every: int = 0, patience: int | None = None,
              on_eval: Any = None) -> Any:
        from lm_experiments.engine import train as engine

        _log_training(self.tree, ckpt_dir)
        sink = self.curve_sink(Path(ckpt_dir).parent)
        try:
            return engine.train(model, source, optim=optim, ckpt_dir=ckpt_dir, device=self.device,
                                precision=self.cfg.precision, speed=self.cfg.train,
                                stopping=engine.EarlyStop(eval_fn, eval_every, patience, on_eval=on_eval),
                                checkpoint_every=checkpoint_every, desc=desc, seed=seed,
                                micro_batch=self.cfg.micro_batch, progress=self.progress, curves=sink)
        finally:
            if sink is not None:
                sink.close()

    def curve_sink(self, run_dir: Path) -> Any:
        """The live curve of the run in ``run_dir`` (None without ``curves`` or off rank 0):
        ``<run dir>/curves.csv``, ``OUT/tensorboard/<stage>-<id>/`` or a local tracker run."""
        if self.curves is None or not distributed.is_main():
            return None
        from lm_experiments.engine.curves import open_curves

        return open_curves(self.curves, csv_path=self.tree.curves(run_dir), tensorboard_dir=self.tree.tensorboard(run_dir),
                           tracker_root=self.tree.trackers, name=self.tree.curve_name(run_dir))


def optim_for(section: OptimSection, *, steps: int, **overrides: Any) -> Any:
    """The engine's optimizer settings of one run of ``steps`` steps: ``section`` with a
    sweep's ``overrides`` (``lr=...``), its floor at that lr, warmup capped at 10% of the
    run (short compute-matched runs keep a real decay)."""
    from lm_experiments.engine.optim import OptimConfig

    sec = dataclasses.replace(section, **overrides) if overrides else section
    return OptimConfig(lr=sec.lr, min_lr=sec.floor(sec.lr), warmup_steps=min(sec.warmup_steps, steps // 10),
                       weight_decay=sec.weight_decay)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


_sealed_main = main_process_only(sealed)


def write_result(d: Path, result: dict[str, Any]) -> None:
    """``result.json`` of run directory ``d`` with the integrity record of its files, last."""
    atomic_write_json(RunTree.record(d), {**result, "integrity": _sealed_main(d)})


def finished(stage: str, d: Path) -> StageResult | None:
    """The finished run in ``d``; None when it is not finished or damaged (reported in one
    line on rank 0: the caller then redoes it)."""
    if not RunTree.record(d).exists():
        return None
    rec, why = read_run(d)
    if why is not None:
        if distributed.is_main():
            integrity.report(why, f"redoing {stage} run {d.name}")
        return None
    return StageResult(stage, d, bool(rec["diverged"]), rec.get("losses", {}), rec)


def train_summary(res: Any, source: PlannedSource | None, optim: Any) -> dict[str, Any]:
    """A run's training record: steps, tokens (seen, by source), throughput, early stopping."""
    optim_d = dataclasses.asdict(optim) if optim is not None else {}
    if res is None:
        return {"steps": 0, "tokens": 0, "tokens_by_source": {}, "wall_s": 0.0, "tokens_per_s": None,
                "diverged": False, "stopped_early": False, "optim": optim_d}
    planned = source.tokens_by_source() if source is not None else {}
    seen = {}  # tokens actually seen by source, when training stopped before the plan's end
    if source is not None:
        n_slots = min(res.steps * source.batch_size, source.num_slots)
        codes = np.bincount(source.sources[:n_slots].astype(np.int64), minlength=3)
        seen = {name: int(codes[c]) * source.seq_len for c, name in ((0, "pre"), (1, "post"), (2, "ft"))
                if codes[c]}
    return {"steps": res.steps, "tokens": res.tokens, "tokens_by_source": seen,
            "planned_tokens_by_source": planned, "wall_s": res.wall_s, "eval_s": res.eval_s,
            "tokens_per_s": res.tokens_per_s, "diverged": res.diverged, "stopped_early": res.stopped_early,
            "best_step": res.best_step, "best_val": res.best_val, "resumed_from": res.resumed_from,
            "planned_steps": len(source) if source is not None else 0, "optim": optim_d,
            **res.compute_summary(), "history": res.history}


def _log_training(tree: RunTree, ckpt_dir: Path) -> None:
    """Testing hook: with ``LM_EXPERIMENTS_TRAINING_LOG=<path>`` every training started appends
    ``<run dir relative to OUT> <pid>`` to that file (the tests count trainings per unit)."""
    path = os.environ.get("LM_EXPERIMENTS_TRAINING_LOG")
    if path and distributed.is_main():
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{tree.relative(Path(ckpt_dir).parent)} {os.getpid()}\n")
