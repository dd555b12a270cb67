"""Data layer of the LM pipeline: corpora, tokenizer, document-level split and packing.

Public API::

    from lm_experiments.data import CorpusSpec, DataConfig, prepare_data
    cfg = DataConfig(pre=CorpusSpec("embedded", "general"), post=CorpusSpec("embedded", "music"),
                     ft=CorpusSpec("embedded", "chem", max_chars=2_000_000))
    data = prepare_data(cfg)          # cached under default_cache_root()
    data.splits["post"].val           # int32 (num_val_blocks, seq_len): the L_im eval set
"""

from typing import Any

from lm_experiments.data.config import EMBEDDED_NAMES, ROLES, SPECIAL_TOKENS, CorpusSpec, DataConfig

#: imported on first use (PEP 562): :mod:`lm_experiments.data.prepare` brings in transformers and
#: torch (seconds), which loading a config (``lm_experiments.config``) and ``--dry-run`` do not need
_LAZY = ("PreparedData", "TokenSplit", "default_cache_root", "prepare_data")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lm_experiments.data import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMBEDDED_NAMES",
    "ROLES",
    "SPECIAL_TOKENS",
    "CorpusSpec",
    "DataConfig",
    "PreparedData",
    "TokenSplit",
    "default_cache_root",
    "prepare_data",
]
