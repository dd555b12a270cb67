"""Typed, validated configuration of the LM pipeline's data layer.

Three corpora play the paper's three roles (Sec. 3 of arXiv 2605.12705): ``pre`` (the
pretraining corpus D_pre, C4 in the paper), ``post`` (post-training data D_post, e.g.
MusicPile) and ``ft`` (fine-tuning data D_ft, e.g. ChemPile or FLAN).  Each role is
described by a :class:`CorpusSpec`; :class:`DataConfig` adds the tokenizer and the
packing/splitting settings.  Both are frozen dataclasses that map 1:1 onto the ``data``
section of a pipeline config file (``early_exposure.configs.from_dict``).

Validation errors raise :class:`early_exposure.errors.ConfigError` with the field path as
it appears in a config file, e.g. ``data.post.name`` (the section is called ``data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from early_exposure.errors import ConfigError

#: The config section that holds a :class:`DataConfig` (in the errors of data preparation;
#: construction checks name fields relative to the section, the loader adds where it sits).
SECTION = "data"
#: Roles of the three-stage protocol, in pipeline order.
ROLES: tuple[str, ...] = ("pre", "post", "ft")
#: Names accepted by ``source: embedded`` (built from text shipped inside packages).
EMBEDDED_NAMES: tuple[str, ...] = ("general", "music", "chem", "flan_post", "flan_ft")
#: File suffixes accepted by ``source: local``.
LOCAL_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl")
#: Special tokens of the byte-level BPE tokenizer (ids 0, 1, 2 in this order).
SPECIAL_TOKENS: dict[str, str] = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


@dataclass(frozen=True)
class CorpusSpec:
    """Where one role's documents come from.

    Attributes:
        source: ``"embedded"`` (offline default built from package contents), ``"hf"``
            (a Hugging Face dataset, streamed) or ``"local"`` (.txt / .jsonl files).
        name: embedded: one of :data:`EMBEDDED_NAMES`; hf: the dataset id (e.g.
            ``"allenai/c4"``); local: a free label.
        path: local: a .txt/.jsonl file or a directory of them.  hf: optional local data
            files in the dataset's own format (.jsonl/.json/.parquet/.csv/.txt); when set,
            ``datasets.load_dataset`` reads them instead of the hub (offline use, tests).
        hf_config: dataset configuration, e.g. ``"en"`` for ``allenai/c4``.
        hf_split: dataset split to stream.
        text_field: field holding the text (jsonl / hf).  Rows without it but with
            FLAN's ``inputs``/``targets`` fields are templated as ``inputs\\n\\ntargets``.
        max_docs: keep at most this many documents (streaming sources stop after it).
        max_chars: keep documents (in stable hash order) until this many characters.
    """

    source: Literal["embedded", "hf", "local"]
    name: str
    path: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    text_field: str = "text"
    max_docs: int | None = None
    max_chars: int | None = None

    def validate(self, where: str) -> None:
        """Raise ``ConfigError`` naming ``{where}.{field}`` if this spec cannot be used."""
        if self.source not in ("embedded", "hf", "local"):
            raise ConfigError(f"{where}.source", f"must be 'embedded', 'hf' or 'local', got {self.source!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"{where}.name", "must be a non-empty string")
        if self.source == "embedded":
            if self.name not in EMBEDDED_NAMES:
                raise ConfigError(
                    f"{where}.name",
                    f"unknown embedded corpus {self.name!r}; allowed: {', '.join(EMBEDDED_NAMES)}",
                )
            if self.path is not None:
                raise ConfigError(f"{where}.path", "embedded corpora take no path; use source: local for files")
        if self.source == "local" and not self.path:
            raise ConfigError(f"{where}.path", "source: local needs path: a .txt/.jsonl file or a directory of them")
        if not self.text_field:
            raise ConfigError(f"{where}.text_field", "must be a non-empty field name")
        if not self.hf_split:
            raise ConfigError(f"{where}.hf_split", "must be a non-empty split name, e.g. 'train'")
        for fld in ("max_docs", "max_chars"):
            val = getattr(self, fld)
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
                raise ConfigError(f"{where}.{fld}", f"must be a positive integer or null, got {val!r}")


@dataclass(frozen=True)
class DataConfig:
    """Corpora, tokenizer and packing for one pipeline (validated on construction).

    Attributes:
        pre, post, ft: the corpora of the three roles (D_pre, D_post, D_ft).
        tokenizer: ``"bpe"`` trains a byte-level BPE with ``tokenizers`` on the union of
            the three corpora's training documents; any other value is a Hugging Face
            tokenizer name loaded with ``AutoTokenizer.from_pretrained`` (needs network
            or a local copy).
        vocab_size: BPE vocabulary size (ignored for a named tokenizer).
        seq_len: tokens per packed block.
        val_tokens: tokens in each role's fixed held-out evaluation set.
        val_fraction: fraction of documents sent to validation (by content hash): the set
            early stopping selects on (and, without a test split, the reported losses).
        test_fraction: fraction of documents sent to the test split (by the same hash,
            the interval ``[val_fraction, val_fraction + test_fraction)``, so validation
            membership does not move): the reported losses L_im, L_ret, L_ft, L_pre are
            measured there, on documents no selection has seen. 0 = no test split.
        test_tokens: tokens in each role's test set (default: ``val_tokens``).
        max_doc_chars: documents longer than this are cut, at blank lines (else at line
            ends, else hard), into pieces of at most this many characters before hashing:
            a corpus of a few long books then gives enough held-out documents for a
            per-document bootstrap. None = documents as the source gives them.
        max_train_tokens: cap on each role's training tokens (None = all).
        bpe_sample_chars: per-role character budget of the BPE training sample.
    """

    pre: CorpusSpec
    post: CorpusSpec
    ft: CorpusSpec
    tokenizer: str = "bpe"
    vocab_size: int = 4096
    seq_len: int = 128
    val_tokens: int = 40960
    val_fraction: float = 0.05
    max_train_tokens: int | None = None
    bpe_sample_chars: int = 2_000_000
    test_fraction: float = 0.0
    test_tokens: int | None = None
    max_doc_chars: int | None = None

    def __post_init__(self) -> None:
        for role in ROLES:
            spec = getattr(self, role)
            if not isinstance(spec, CorpusSpec):
                raise ConfigError(role, f"expected a corpus mapping (CorpusSpec), got {type(spec).__name__}")
            spec.validate(role)
        if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
            raise ConfigError("tokenizer", "must be 'bpe' or a Hugging Face tokenizer name")
        _int_range("vocab_size", self.vocab_size, 260, 1_000_000, "a byte-level BPE needs 256 bytes + 3 specials")
        _int_range("seq_len", self.seq_len, 2, 1_000_000, "tokens per packed block")
        _int_range("val_tokens", self.val_tokens, self.seq_len, 10**10, f"at least one block of seq_len={self.seq_len}")
        _int_range("bpe_sample_chars", self.bpe_sample_chars, 1000, 10**10, "characters per role for BPE training")
        vf = self.val_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not (0.0 < float(vf) <= 0.5):
            raise ConfigError("val_fraction", f"must be in (0, 0.5], got {vf!r}")
        tf = self.test_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not (0.0 <= float(tf) <= 0.5):
            raise ConfigError("test_fraction", f"must be in [0, 0.5] (0 = no test split), got {tf!r}")
        if float(vf) + float(tf) >= 1.0:
            raise ConfigError("test_fraction", f"val_fraction + test_fraction must be < 1, got {vf!r} + {tf!r}")
        if self.test_tokens is not None:
            _int_range("test_tokens", self.test_tokens, self.seq_len, 10**10, f"null or >= seq_len={self.seq_len}")
            if not tf:
                raise ConfigError("test_tokens", "set test_fraction > 0 too (test_tokens sizes the test split)")
        if self.max_doc_chars is not None:
            _int_range("max_doc_chars", self.max_doc_chars, 200, 10**12, "characters per document piece")
        if self.max_train_tokens is not None:
            _int_range("max_train_tokens", self.max_train_tokens, self.seq_len, 10**13, f"null or >= seq_len={self.seq_len}")

    @property
    def num_val_blocks(self) -> int:
        """Blocks in each fixed validation set: ``val_tokens // seq_len``."""
        return self.val_tokens // self.seq_len

    @property
    def num_test_blocks(self) -> int:
        """Blocks in each fixed test set (0 without a test split)."""
        if not self.test_fraction:
            return 0
        return (self.test_tokens if self.test_tokens is not None else self.val_tokens) // self.seq_len

    def identity(self) -> dict:
        """The config as it enters cache keys and the data fingerprint: the test-split and
        document-cutting fields only when set, so configs without them keep their keys."""
        from early_exposure.configs import to_dict

        d = to_dict(self)
        for k, default in (("test_fraction", 0.0), ("test_tokens", None), ("max_doc_chars", None)):
            if d.get(k) == default:
                d.pop(k, None)
        return d


def _int_range(field: str, value: object, lo: int, hi: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ConfigError(field, f"must be an integer in [{lo}, {hi}] ({why}), got {value!r}")
