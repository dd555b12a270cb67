"""An LM results directory opened for an analysis: its config, prepared data and intact runs.

:func:`open_results` reads ``OUT/manifest.json`` for the config, prepares the same data
(checking the data fingerprint) and reads every finished run through the run tree and its
integrity check (:class:`early_exposure.runs.RunTree`, :func:`early_exposure.runs.read_run`);
damaged runs are left out and listed in ``Results.skipped``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from early_exposure.integrity import read_json
from early_exposure.runs import RunTree, read_run
from lm_experiments.config import config_from_mapping
from lm_experiments.protocol.prepared import prepare


class ResultsError(ValueError):
    """The directory is not an analysable ``lm_experiments run --out`` directory (exit 2)."""


def _read(p: Path) -> Any:
    """The JSON object in ``p``, or None when it is missing or unreadable."""
    return read_json(p)[0]


# ---- the results directory ------------------------------------------------------------------
@dataclasses.dataclass
class Results:
    out: Path
    cfg: Any
    prepared: Any
    data_used: dict[str, Any]
    ft: dict[str, dict[str, Any]]     # run_id -> result.json (finished, not diverged)
    post: dict[str, dict[str, Any]]   # upstream_id -> result.json
    pre: dict[str, dict[str, Any]]    # pre_id -> result.json
    pipeline: str
    cache_root: Path | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)  # "<dir>: <what is wrong>"

    @property
    def tree(self) -> RunTree:
        return RunTree(self.out)

    def model_dir(self, stage: str, ident: str) -> Path:
        return self.tree.model(stage, ident)


def open_results(out: Path, cache_root: Path | None = None) -> Results:
    """Open ``out`` (an ``lm_experiments run --out`` directory) for an analysis."""
    out = Path(out)
    tree = RunTree(out)
    man = _read(tree.manifest)
    if man is None or "config" not in man:
        raise ResultsError(f"{out}: no manifest.json with a config (not an lm_experiments run --out directory)")
    cfg = config_from_mapping(man["config"])
    prepared, data_used, cfg = prepare(cfg, cache_root=cache_root, progress=False, log=lambda _: None)
    if man.get("data_fingerprint") and man["data_fingerprint"] != prepared.fingerprint:
        raise ResultsError(f"{out}: data fingerprint {prepared.fingerprint} differs from the run's "
                         f"{man['data_fingerprint']} (another data cache?)")
    runs: dict[str, dict[str, dict[str, Any]]] = {"ft": {}, "post": {}, "pre": {}}
    skipped: list[str] = []
    for stage, key in (("ft", "run_id"), ("post", "upstream_id"), ("pre", "pre_id")):
        for d in tree.run_dirs(stage):
            # a fine-tuning run's model may have been removed (or never kept): the analysis re-trains it
            r, why = read_run(d, may_be_absent=("model/",) if stage == "ft" else ())
            if why is not None:
                skipped.append(f"{d}: {why}")
            elif not r.get("diverged") and (stage != "ft" or r.get("losses")):
                runs[stage][r[key]] = r
    return Results(out, cfg, prepared, data_used, runs["ft"], runs["post"], runs["pre"],
                   man.get("pipeline") or cfg.pipeline_label(), cache_root, skipped)


@functools.lru_cache(maxsize=256)
def load_checkpoint(path: Path):
    """A checkpoint in eval mode, loaded once per process (the analysis reads each model in
    the item and the rollback phases and never modifies one: rollback works on a copy)."""
    from lm_experiments.engine.checkpoints import load_model

    return load_model(path, for_training=True).eval()
