"""Data layer of the LM pipeline: corpora, tokenizer, document-level split and packing.

Public API::

    from lm_experiments.data import CorpusSpec, DataConfig, prepare_data
    cfg = DataConfig(pre=CorpusSpec("embedded", "general"), post=CorpusSpec("embedded", "music"),
                     ft=CorpusSpec("embedded", "chem", max_chars=2_000_000))
    data = prepare_data(cfg)          # cached under default_cache_root()
    data.splits["post"].val           # int32 (num_val_blocks, seq_len): the L_im eval set
"""

from lm_experiments.data.config import EMBEDDED_NAMES, ROLES, SPECIAL_TOKENS, CorpusSpec, DataConfig
from lm_experiments.data.prepare import PreparedData, TokenSplit, default_cache_root, prepare_data

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
