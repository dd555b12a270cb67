"""The model card (``README.md``) of every saved checkpoint: Hugging Face front matter and
the run's lineage.

* :func:`card_extra` -- the lineage of a run, picked from its stage record (the dict that
  becomes its ``result.json``): stage, run ids, seed, mixing fraction, post-training setting,
  compute-matching, fine-tuning lr, losses, steps and tokens, the data sources the stage
  trained on, the upstream model. The stage functions pass it to
  :func:`lm_experiments.engine.evaluate.save_checkpoint` as ``extra`` (also ``extra.json``).
  Only deterministic values: a redone run saves the same bytes (no wall times).
* :func:`model_card` -- the card: YAML front matter (``license: mit``, ``library_name:
  transformers``, ``tags``, ``datasets``, ``base_model`` where there is an upstream model, and
  ``early_exposure``: the lineage as a mapping a program reads back with ``yaml``), then the
  lineage, losses and training budget in prose.

``base_model`` is a lineage id, not a Hub id: the upstream model's directory relative to the
sweep's output directory (``upstream/pre-<pre_id>/model``); push the lineage with the models
to keep it resolvable.
"""

from __future__ import annotations

import math
from typing import Any

from early_exposure.runs import STAGE_DIRS

LICENSE = "mit"  # the project's (LICENSE, pyproject.toml)
TAGS = ("early-exposure", "arxiv:2605.12705", "causal-lm")
_STAGE_WORDS = {"pre": "pretraining (stage 1)", "post": "post-training (stage 2)",
                "post-trajectory": "post-training (stage 2), intermediate checkpoint",
                "ft": "fine-tuning (stage 3)"}
#: the lineage keys a card's ``early_exposure`` mapping may hold, in order
LINEAGE_KEYS = ("stage", "pre_id", "upstream_id", "run_id", "traj_id", "method", "seed", "mix_fraction",
                "compute_matched", "setting", "ft_lr", "step", "losses", "train", "datasets", "base_model")
_TRAIN_KEYS = ("steps", "tokens", "tokens_by_source", "best_step", "stopped_early")


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("early-exposure")
    except PackageNotFoundError:  # not installed (a source checkout on PYTHONPATH)
        return None


def _dataset_id(spec: dict[str, Any] | None, role: str) -> str:
    """A data source as a dataset id: the Hub id for ``source: hf``, ``<source>:<name>`` else."""
    spec = spec or {}
    src, name = spec.get("source") or "unknown", spec.get("name") or role
    return str(name) if src == "hf" else f"{src}:{name}"


def stage_datasets(stage: str, data_config: dict[str, Any] | None, *, mix_fraction: Any = None,
                   replay: Any = None) -> list[str]:
    """The data sources a stage trained on: pretraining D_pre (and D_post when mixed in),
    post-training D_post (and D_pre when replayed), fine-tuning D_ft."""
    cfg = data_config or {}
    roles = {"pre": ["pre"] + (["post"] if float(mix_fraction or 0) > 0 else []),
             "post": ["post"] + (["pre"] if float(replay or 0) > 0 else []),
             "ft": ["ft"]}.get("post" if stage == "post-trajectory" else stage, [])
    return [_dataset_id(cfg.get(r), r) for r in roles]


def _upstream(stage: str, rec: dict[str, Any]) -> str | None:
    if stage in ("post", "post-trajectory") and rec.get("pre_id"):
        return STAGE_DIRS["pre"].format(id=rec["pre_id"]) + "/model"
    if stage in ("ft", "traj") and rec.get("upstream_id"):
        return STAGE_DIRS["post"].format(id=rec["upstream_id"]) + "/model"
    return None


def card_extra(record: dict[str, Any], data_config: dict[str, Any] | None = None, *,
               stage: str | None = None, **more: Any) -> dict[str, Any]:
    """The lineage of a run for its checkpoint (``extra`` of ``save_checkpoint``), read from
    its stage record: the keys of :data:`LINEAGE_KEYS` it has (``setting`` from ``setting`` or,
    for fine-tuning, ``post_hparams``; ``train`` the deterministic part of its training
    summary), ``datasets`` from ``data_config`` (the ``config`` of the data summary), the
    upstream model as ``base_model``; ``more`` adds or overrides entries (e.g. ``step``)."""
    rec = {**record, **more}
    st = stage or rec.get("stage") or ("ft" if rec.get("run_id") else None)
    out: dict[str, Any] = {"stage": st}
    for k in ("pre_id", "upstream_id", "run_id", "traj_id", "method", "seed", "mix_fraction", "compute_matched"):
        if rec.get(k) is not None:
            out[k] = rec[k]
    setting = rec.get("setting", rec.get("post_hparams"))
    if setting is not None:
        out["setting"] = setting
    for k in ("ft_lr", "step"):
        if rec.get(k) is not None:
            out[k] = rec[k]
    if isinstance(rec.get("losses"), dict):
        out["losses"] = dict(rec["losses"])
    train = rec.get("train")
    if isinstance(train, dict):
        out["train"] = {k: train[k] for k in _TRAIN_KEYS if train.get(k) is not None}
    if data_config is not None and st:
        out["datasets"] = stage_datasets(st, data_config, mix_fraction=rec.get("mix_fraction"),
                                         replay=(setting or {}).get("replay") if isinstance(setting, dict) else None)
    up = _upstream(st or "", rec)
    if up:
        out["base_model"] = up
    return out


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "null"
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) or "(defaults)"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _yaml_value(v: Any) -> Any:
    """JSON-safe (YAML-safe) copy: non-finite floats become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _yaml_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_yaml_value(x) for x in v]
    return v


def front_matter(extra: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter (Hub metadata + the ``early_exposure`` lineage mapping)."""
    meta: dict[str, Any] = {"license": LICENSE, "library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": list(TAGS) + ([f"stage-{extra['stage']}"] if extra.get("stage") else [])}
    if extra.get("datasets"):
        meta["datasets"] = list(extra["datasets"])
    if extra.get("base_model"):
        meta["base_model"] = extra["base_model"]
        meta["base_model_relation"] = "finetune"
    lineage = {k: _yaml_value(extra[k]) for k in LINEAGE_KEYS if k in extra}
    version = _version()
    if version:
        lineage["package_version"] = version
    meta["early_exposure"] = lineage
    return meta


def model_card(extra: dict[str, Any], *, config: Any = None, special_ids: dict[str, int | None] | None = None) -> str:
    """A short, factual model card (Markdown with Hugging Face front matter) for a checkpoint
    saved with ``extra`` (its lineage, :func:`card_extra`; other scalar entries are listed as
    they are, nested ones are left to ``extra.json``)."""
    import yaml

    stage = str(extra.get("stage") or "") or None
    meta = front_matter(extra)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, default_flow_style=None, width=100).rstrip(), "---", "",
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
    for k in LINEAGE_KEYS:
        if k in extra and k not in ("stage", "losses", "train"):
            lines.append(f"- {k}: {_fmt(extra[k])}")
    for k, v in extra.items():
        if k in LINEAGE_KEYS or isinstance(v, (dict, list, tuple)):
            continue
        lines.append(f"- {k}: {_fmt(v)}")
    if meta["early_exposure"].get("package_version"):
        lines.append(f"- early-exposure version: {meta['early_exposure']['package_version']}")
    losses = extra.get("losses")
    if isinstance(losses, dict) and losses:
        lines += ["", "## Losses (mean token cross-entropy, nats, held-out sets)", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in losses.items()]
    train = extra.get("train")
    if isinstance(train, dict) and train:
        lines += ["", "## Training", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in train.items()]
    if special_ids:
        ids = ", ".join(f"{k.removesuffix('_token_id')}={v}" for k, v in special_ids.items() if v is not None)
        if ids:
            lines += ["", f"Special tokens: {ids} (`generate` stops at EOS)."]
    lines += ["", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/directory\")",
              "tok = AutoTokenizer.from_pretrained(\"path/to/this/directory\")",
              "```", "", "The full record of the run is in `extra.json` (and the run's `result.json`); "
              "`base_model` is the upstream model relative to the sweep's output directory.", ""]
    return "\n".join(lines)


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``{}`` when it has none)."""
    import yaml

    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---\n", 4)
    return {} if end < 0 else (yaml.safe_load(text[4:end]) or {})


__all__ = ["LICENSE", "TAGS", "LINEAGE_KEYS", "card_extra", "stage_datasets", "front_matter", "model_card",
           "read_front_matter"]
