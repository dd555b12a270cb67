"""The saved models of a sweep: their model cards, an index of every run, loading one to train.

* :func:`model_card` (:mod:`lm_experiments.engine.model_card`) -- the ``README.md`` that
  :func:`lm_experiments.engine.evaluate.save_checkpoint` writes into every checkpoint: Hub
  front matter and the run's lineage (stage, run ids, mixing fraction, post-training setting,
  seed, losses, steps and tokens, data sources, upstream model).
* :func:`write_checkpoint_index` -- ``OUT/checkpoints.csv``: one row per run directory of a
  sweep (``upstream/pre-*``, ``upstream/post-*`` and each saved stage-2 checkpoint of its
  trajectory, ``runs/*``, ``trajectory/*``) mapping the hash to what the run is (stage,
  lambda, seed, setting, compute-matching, fine-tuning lr, upstream ids, losses, model
  directory), read from the runs' ``result.json`` files; damaged runs are listed as such.
  The runner writes it at the end of every sweep (also a partial or preempted one);
  ``python -m lm_experiments.engine.checkpoints --results DIR`` rebuilds it for an existing
  results directory (an LM output directory, or a results root with ``lm/<preset>/``).
* :func:`load_model` -- ``AutoModelForCausalLM.from_pretrained`` with ``use_cache=False`` for
  training: checkpoints are saved with ``use_cache=True`` for ``generate``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from early_exposure import integrity, interventions
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.frontier import method_name
from early_exposure.io import atomic_write_text
from early_exposure.runs import STAGE_DIRS, ResultsRoot, RunTree, read_run
from lm_experiments.engine.model_card import card_extra, model_card, read_front_matter  # noqa: F401 (re-exported)

#: the columns of ``checkpoints.csv``, in order
INDEX_COLUMNS: tuple[str, ...] = (
    "stage", "id", "run_dir", "status", "pre_id", "upstream_id", "method", "mix_fraction", "seed",
    "compute_matched", "post_hparams", "ft_lr", "step", "L_im", "L_ret", "L_ft", "L_pre", "losses", "model_dir",
)
#: the four losses of the frontier, flat columns of the index where a run has them
FRONT_LOSSES = ("L_im", "L_ret", "L_ft", "L_pre")


def load_model(path: str | os.PathLike[str], device: Any = None, *, for_training: bool = True) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path)`` on ``device``; ``for_training`` turns the
    saved ``use_cache=True`` (for ``generate``) off, as :func:`lm_experiments.engine.model.build_model`
    has it (no key-value cache built in training forwards or under ``torch.compile``)."""
    from transformers import AutoModelForCausalLM

    kw = {"use_cache": False} if for_training else {}
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    return model.to(device) if device is not None else model


# ---- the index ----------------------------------------------------------------------------
def _post_method(mix_fraction: Any, setting: dict[str, Any] | None) -> str:
    s = setting or {}
    return method_name(mixed=float(mix_fraction or 0) > 0,
                       **{i.name: bool(s.get(i.name) or i.default) for i in interventions.registry()})


def _model_dir(run_dir: Path, rec: dict[str, Any], default: str | None = None) -> Path | None:
    name = rec.get("model_dir", default)
    if not name:
        return None
    d = run_dir / name
    return d if d.is_dir() else None


def _json(h: Any) -> str | None:
    return None if h is None else json.dumps(h, sort_keys=True)


def _losses(losses: Any) -> dict[str, Any]:
    """The flat loss columns and the ``losses`` column (every loss of the record, JSON)."""
    if not isinstance(losses, dict) or not losses:
        return {}
    out: dict[str, Any] = {k: losses[k] for k in FRONT_LOSSES if k in losses}
    out["losses"] = json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                for k, v in losses.items()}, sort_keys=True)
    return out


def _ident(stage: str, run_dir: Path) -> str:
    """The run id in a run directory's name (``upstream/pre-<id>`` -> ``<id>``)."""
    prefix = STAGE_DIRS[stage].format(id="").rsplit("/", 1)[-1]
    return run_dir.name.removeprefix(prefix)


def _best_row(rec: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in rec.get("rows") or [] if isinstance(r, dict)]
    best = [r for r in rows if r.get("best")]
    return (best or rows[-1:] or [{}])[0]


def checkpoint_rows(out_dir: str | os.PathLike[str], *, verify: bool = True) -> list[dict[str, Any]]:
    """The rows of :func:`write_checkpoint_index`: dicts over :data:`INDEX_COLUMNS`, None
    where a value does not apply; one per run directory (stages ``pre``, ``post``, ``ft``,
    ``traj``, in that order, each sorted by directory) and one per saved stage-2 checkpoint
    of a post-training trajectory (``post-trajectory``, after its run). ``status``: ``ok``,
    ``diverged`` or ``damaged`` (its ``result.json`` does not match the directory,
    :mod:`early_exposure.runs`: only its id is given). ``verify=False`` reads each
    ``result.json`` without checking the directory's files against it (no hashing of the
    models: what the runner does right after the sweep checked them); damaged then means an
    unreadable ``result.json``."""
    out = Path(out_dir)
    tree = RunTree(out)
    rows: list[dict[str, Any]] = []

    def row(stage: str, ident: Any, run_dir: Path, model: Path | None, **kw: Any) -> None:
        r = dict.fromkeys(INDEX_COLUMNS)
        r.update(kw, stage=stage, id=ident, run_dir=tree.relative(run_dir),
                 model_dir=None if model is None else Path(os.path.relpath(model, out)).as_posix())
        rows.append(r)

    for stage in ("pre", "post", "ft", "traj"):
        for d_run in tree.run_dirs(stage):
            rec, _ = read_run(d_run, strict=False) if verify else integrity.read_json(RunTree.record(d_run))
            rec = rec if isinstance(rec, dict) else None
            if rec is None:
                row(stage, _ident(stage, d_run), d_run, None, status="damaged")
                continue
            status = "diverged" if rec.get("diverged") else "ok"
            common = dict(status=status, pre_id=rec.get("pre_id"), seed=rec.get("seed"),
                          mix_fraction=rec.get("mix_fraction"))
            if stage == "pre":
                row("pre", rec.get("pre_id"), d_run, _model_dir(d_run, rec),
                    method=method_name(mixed=float(rec.get("mix_fraction") or 0) > 0), **common,
                    **_losses(rec.get("losses")))
            elif stage == "post":
                common.update(upstream_id=rec.get("upstream_id"), compute_matched=rec.get("compute_matched"),
                              method=_post_method(rec.get("mix_fraction"), rec.get("setting")),
                              post_hparams=_json(rec.get("setting")))
                row("post", rec.get("upstream_id"), d_run, _model_dir(d_run, rec), **common,
                    **_losses(rec.get("losses")))
                for m in sorted(RunTree.post_trajectory(d_run).glob("step-*/meta.json")):  # matched-L_im study
                    meta = integrity.read_json(m)[0]
                    if (m.parent / "model").is_dir() and isinstance(meta, dict):  # unreadable: left out
                        row("post-trajectory", rec.get("upstream_id"), m.parent, m.parent / "model", **common,
                            step=meta.get("step"), L_im=meta.get("L_im"))
            elif stage == "ft":
                row("ft", rec.get("run_id"), d_run, _model_dir(d_run, {}, "model"), **common,
                    upstream_id=rec.get("upstream_id"), method=rec.get("method"),
                    compute_matched=rec.get("compute_matched"), post_hparams=_json(rec.get("post_hparams")),
                    ft_lr=rec.get("ft_lr"), **_losses(rec.get("losses")))
            else:  # the fine-tuning of a trajectory's checkpoints: the early-stopping checkpoint's losses
                best = _best_row(rec)
                row("traj", rec.get("traj_id"), d_run, None, **common, upstream_id=rec.get("upstream_id"),
                    method=rec.get("method"), ft_lr=rec.get("ft_lr"), step=best.get("post_step"),
                    **_losses({k: best[k] for k in FRONT_LOSSES if k in best}))
    return rows


def index_csv(rows: list[dict[str, Any]]) -> str:
    """``checkpoints.csv``'s text for ``rows`` (empty cells for None)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def write_checkpoint_index(out_dir: str | os.PathLike[str], *, verify: bool = True) -> Path:
    """Write ``out_dir/checkpoints.csv`` (atomically): one row per run directory of a sweep
    (:func:`checkpoint_rows`) and return its path.

    Columns :data:`INDEX_COLUMNS`: ``id`` is the run's own id (pre_id / upstream_id / run_id /
    traj_id: the hash in its directory name), ``run_dir`` its directory relative to
    ``out_dir``, ``status`` ok | diverged | damaged, ``mix_fraction`` lambda,
    ``post_hparams`` the post-training setting as JSON (empty for pretraining), ``L_im`` ..
    ``L_pre`` the frontier's losses where the run has them and ``losses`` all of its losses
    (JSON), ``model_dir`` the saved model relative to ``out_dir`` (empty when none was kept:
    fine-tuned models only with ``ft.save_checkpoints``; diverged runs have none). An empty
    sweep gives a header-only file. ``verify``: see :func:`checkpoint_rows`. Call it on one
    process (rank 0 under ``torchrun``).
    """
    out = Path(out_dir)
    return atomic_write_text(RunTree(out).checkpoint_index, index_csv(checkpoint_rows(out, verify=verify)))


def index_results(results: str | os.PathLike[str]) -> list[Path]:
    """Rebuild ``checkpoints.csv`` for an existing results directory: an LM output directory
    (``lm_experiments run --out``), or a results root (``python -m paper_checks reproduce
    --out``: every ``lm/<preset>/``). Returns the files written; ConfigError when ``results``
    holds neither."""
    p = Path(results)
    if not p.is_dir():
        raise ConfigError("--results", f"{p}: not a directory")
    if RunTree(p).looks_like_run_tree():
        return [write_checkpoint_index(p)]
    trees = [RunTree(d) for d in sorted((ResultsRoot(p).root / "lm").glob("*")) if RunTree(d).looks_like_run_tree()]
    if not trees:
        raise ConfigError("--results", f"{p}: no LM results directory (manifest.json, frontier table or runs/) "
                          "in it or under its lm/")
    return [write_checkpoint_index(t.out) for t in trees]


def _main(argv: list[str] | None) -> int:
    ap = Parser(prog="python -m lm_experiments.engine.checkpoints",
                description="Rebuild checkpoints.csv (the index of every run directory: hash -> stage, lambda, "
                            "seed, setting, losses, model) of an existing results directory.")
    ap.add_argument("--results", required=True,
                    help="an LM output directory (lm_experiments run --out) or a results root (reproduce --out)")
    a = ap.parse_args(argv)
    for p in index_results(a.results):
        n = p.read_text(encoding="utf-8").count("\n") - 1
        print(f"{p}: {n} run(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lm_experiments.engine.checkpoints --results DIR``; exit 2 with one line on bad input."""
    return cli_main(_main, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
