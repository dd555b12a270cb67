"""The saved models of a sweep: their model cards, an index of them, loading one to train.

* :func:`model_card` -- the ``README.md`` that :func:`lm_experiments.engine.evaluate.save_checkpoint`
  writes into every checkpoint: architecture and lineage (stage, run ids, mixing fraction,
  post-training setting, seed, losses) from the ``extra`` dict it is given.
* :func:`write_checkpoint_index` -- ``OUT/checkpoints.csv``: one row per saved model of a
  sweep's output directory (``upstream/pre-*``, ``upstream/post-*`` and their stage-2
  trajectory, ``runs/*`` when fine-tuned models were kept), read from the runs'
  ``result.json`` files (:mod:`lm_experiments.protocol.stages`).
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

from early_exposure import interventions
from early_exposure.frontier import method_name
from early_exposure.io import atomic_write_text
from early_exposure.runs import RunTree, read_run

#: the columns of ``checkpoints.csv``, in order
INDEX_COLUMNS: tuple[str, ...] = (
    "stage", "id", "pre_id", "upstream_id", "method", "mix_fraction", "post_hparams", "seed", "compute_matched",
    "ft_lr", "step", "L_im", "model_dir",
)

_STAGE_WORDS = {"pre": "pretraining (stage 1)", "post": "post-training (stage 2)",
                "post-trajectory": "post-training (stage 2), intermediate checkpoint",
                "ft": "fine-tuning (stage 3)"}
_LINEAGE_KEYS = ("pre_id", "upstream_id", "run_id", "traj_id", "seed", "mix_fraction", "compute_matched", "setting",
                 "post_hparams", "ft_lr", "step")


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "null"
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or "(defaults)"
    return str(v)


def model_card(extra: dict[str, Any], *, config: Any = None, special_ids: dict[str, int | None] | None = None) -> str:
    """A short, factual model card (Markdown with Hugging Face front matter) for a checkpoint
    saved with ``extra`` (its lineage: ``stage``, ``pre_id`` / ``upstream_id`` / ``run_id``,
    ``mix_fraction``, ``setting``, ``seed``, ``losses`` when present; other scalar entries
    are listed as they are, nested ones are left to ``extra.json``)."""
    stage = str(extra.get("stage", "")) or None
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [early-exposure, arxiv:2605.12705]", "---", "",
             f"# {_capital(_STAGE_WORDS.get(stage, stage or 'model'))} checkpoint", ""]
    if config is not None:
        arch = getattr(config, "architectures", None) or [getattr(config, "model_type", "causal LM")]
        lines.append(f"A {arch[0]} ({getattr(config, 'num_hidden_layers', '?')} layers, hidden size "
                     f"{getattr(config, 'hidden_size', '?')}, vocabulary {getattr(config, 'vocab_size', '?')}, "
                     f"context {getattr(config, 'max_position_embeddings', '?')} tokens) trained by the "
                     "early-exposure pipeline (a reproduction of arXiv 2605.12705: pretraining with a fraction "
                     "of the post-training data mixed in, post-training, then fine-tuning on a new task).")
        lines.append("")
    lines += ["## Lineage", ""]
    if stage:
        lines.append(f"- stage: `{stage}`" + (f", {_STAGE_WORDS[stage]}" if stage in _STAGE_WORDS else ""))
    for k in _LINEAGE_KEYS:
        if k in extra:
            lines.append(f"- {k}: {_fmt(extra[k])}")
    for k, v in extra.items():
        if k in _LINEAGE_KEYS or k in ("stage", "losses") or isinstance(v, (dict, list, tuple)):
            continue
        lines.append(f"- {k}: {_fmt(v)}")
    losses = extra.get("losses")
    if isinstance(losses, dict) and losses:
        lines += ["", "## Losses (mean token cross-entropy, nats, held-out sets)", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in losses.items()]
    if special_ids:
        ids = ", ".join(f"{k.removesuffix('_token_id')}={v}" for k, v in special_ids.items() if v is not None)
        if ids:
            lines += ["", f"Special tokens: {ids} (`generate` stops at EOS)."]
    lines += ["", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/directory\")",
              "tok = AutoTokenizer.from_pretrained(\"path/to/this/directory\")",
              "```", "", "The full record of the run is in `extra.json` (and the run's `result.json`).", ""]
    return "\n".join(lines)


def load_model(path: str | os.PathLike[str], device: Any = None, *, for_training: bool = True) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path)`` on ``device``; ``for_training`` turns the
    saved ``use_cache=True`` (for ``generate``) off, as :func:`lm_experiments.engine.model.build_model`
    has it (no key-value cache built in training forwards or under ``torch.compile``)."""
    from transformers import AutoModelForCausalLM

    kw = {"use_cache": False} if for_training else {}
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    return model.to(device) if device is not None else model


# ---- the index ----------------------------------------------------------------------------
def _read(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None


def _post_method(mix_fraction: Any, setting: dict[str, Any] | None) -> str:
    s = setting or {}
    return method_name(mixed=float(mix_fraction or 0) > 0,
                       **{i.name: bool(s.get(i.name) or i.default) for i in interventions.registry()})


def _model_dir(run_dir: Path, rec: dict[str, Any]) -> Path | None:
    name = rec.get("model_dir")
    if not name:
        return None
    d = run_dir / name
    return d if d.is_dir() else None


def _hparams(h: Any) -> str:
    return "" if h is None else json.dumps(h, sort_keys=True)


def checkpoint_rows(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of :func:`write_checkpoint_index` (dicts over :data:`INDEX_COLUMNS`; None
    where a value does not apply). Damaged run directories (:mod:`early_exposure.runs`)
    are left out."""
    out = Path(out_dir)
    tree = RunTree(out)
    rows: list[dict[str, Any]] = []

    def row(**kw: Any) -> None:
        r = dict.fromkeys(INDEX_COLUMNS)
        r.update(kw)
        r["model_dir"] = Path(os.path.relpath(kw["model_dir"], out)).as_posix()
        rows.append(r)

    for d_run in tree.run_dirs("pre"):
        rec = read_run(d_run, strict=False)[0]  # None: damaged (redone by the next run), left out
        if rec is None:
            continue
        d = _model_dir(d_run, rec)
        if d is None or rec.get("diverged"):
            continue
        row(stage="pre", id=rec.get("pre_id"), pre_id=rec.get("pre_id"), method=method_name(
            mixed=float(rec.get("mix_fraction") or 0) > 0), mix_fraction=rec.get("mix_fraction"),
            seed=rec.get("seed"), model_dir=d)
    for d_run in tree.run_dirs("post"):
        rec = read_run(d_run, strict=False)[0]  # None: damaged (redone by the next run), left out
        if rec is None:
            continue
        if rec.get("diverged"):
            continue
        common = dict(pre_id=rec.get("pre_id"), upstream_id=rec.get("upstream_id"),
                      method=_post_method(rec.get("mix_fraction"), rec.get("setting")),
                      mix_fraction=rec.get("mix_fraction"), post_hparams=_hparams(rec.get("setting")),
                      seed=rec.get("seed"), compute_matched=rec.get("compute_matched"))
        d = _model_dir(d_run, rec)
        if d is not None:
            row(stage="post", id=rec.get("upstream_id"), L_im=(rec.get("losses") or {}).get("L_im"), model_dir=d,
                **common)
        for m in sorted(RunTree.post_trajectory(d_run).glob("step-*/meta.json")):  # the matched-L_im study's checkpoints
            if (m.parent / "model").is_dir():
                meta = _read(m)
                row(stage="post-trajectory", id=rec.get("upstream_id"), step=meta.get("step"), L_im=meta.get("L_im"),
                    model_dir=m.parent / "model", **common)
    for d_run in tree.run_dirs("ft"):
        rec = read_run(d_run, strict=False)[0]  # None: damaged (redone by the next run), left out
        if rec is None:
            continue
        d = d_run / "model"
        if not d.is_dir() or rec.get("diverged"):
            continue
        row(stage="ft", id=rec.get("run_id"), pre_id=rec.get("pre_id"), upstream_id=rec.get("upstream_id"),
            method=rec.get("method"), mix_fraction=rec.get("mix_fraction"),
            post_hparams=_hparams(rec.get("post_hparams")), seed=rec.get("seed"),
            compute_matched=rec.get("compute_matched"), ft_lr=rec.get("ft_lr"),
            L_im=(rec.get("losses") or {}).get("L_im"), model_dir=d)
    return rows


def write_checkpoint_index(out_dir: str | os.PathLike[str]) -> Path:
    """Write ``out_dir/checkpoints.csv`` (atomically) listing every saved model of a sweep
    and return its path.

    One row per model directory that exists: ``upstream/pre-*`` (stage ``pre``),
    ``upstream/post-*`` (``post``) and its ``trajectory/step-*`` checkpoints
    (``post-trajectory``, with ``step``), ``runs/*`` (``ft``, present when ``ft.save_checkpoints``
    was on); diverged runs have none. Columns :data:`INDEX_COLUMNS`: ``id`` is the run's own id
    (pre_id / upstream_id / run_id), ``post_hparams`` the post-training setting as JSON (empty
    for pretraining), ``L_im`` the post-training loss where known (stage 2 and later),
    ``model_dir`` the model directory relative to ``out_dir``. An empty sweep gives a header-only
    file. Call it on one process (rank 0 under ``torchrun``).
    """
    out = Path(out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in checkpoint_rows(out):
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return atomic_write_text(RunTree(out).checkpoint_index, buf.getvalue())
