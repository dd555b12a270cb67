"""A pipeline's prepared data: its corpora, or its offline fallback when a hub corpus cannot
be loaded (:func:`prepare`), and the sizes a plan is made from (:func:`data_sizes`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from early_exposure.configs import to_dict
from lm_experiments.config import PipelineConfig
from lm_experiments.data.prepare import prepare_data


def prepare(cfg: PipelineConfig, *, cache_root: Path | None = None, progress: bool = True,
            log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any], PipelineConfig]:
    """Prepare the data of ``cfg``, or fall back to ``cfg.data_fallback`` (with
    ``cfg.fallback_set`` applied) when a hub corpus of ``cfg.data`` cannot be loaded, e.g.
    offline. Returns ``(PreparedData, data_used, effective config)``."""
    from lm_experiments.config.pipeline import fallback_config

    primary_error = None
    try:
        prepared = prepare_data(cfg.data, cache_root=cache_root, progress=progress)
    except Exception as exc:
        uses_hub = any(getattr(cfg.data, r).source == "hf" for r in ("pre", "post", "ft"))
        if cfg.data_fallback is None or not uses_hub:
            raise
        primary_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log(f"[data] primary corpora unavailable ({primary_error}); using data_fallback"
            + (f" with {list(cfg.fallback_set)}" if cfg.fallback_set else ""))
        cfg = fallback_config(cfg)
        prepared = prepare_data(cfg.data, cache_root=cache_root, progress=progress)
    summary = {"config": to_dict(cfg.data), "fallback_used": primary_error is not None,
               "primary_error": primary_error, "fingerprint": prepared.fingerprint,
               "stats": prepared.stats, "tokenizer_vocab": len(prepared.tokenizer)}
    return prepared, {"config": cfg.data, "summary": summary}, cfg


def data_sizes(prepared: Any) -> dict[str, int]:
    """Training / validation blocks per role and the sequence length."""
    sp = prepared.splits
    return {"pre": int(sp["pre"].train.shape[0]), "post": int(sp["post"].train.shape[0]),
            "ft": int(sp["ft"].train.shape[0]), "pre_val": int(sp["pre"].val.shape[0]),
            "post_val": int(sp["post"].val.shape[0]), "ft_val": int(sp["ft"].val.shape[0]),
            "seq_len": int(sp["pre"].train.shape[1])}
