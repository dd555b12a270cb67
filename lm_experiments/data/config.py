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
from typing import Any, Literal

from early_exposure.errors import ConfigError

#: The config section that holds a :class:`DataConfig` (in the errors of data preparation;
#: construction checks name fields relative to the section, the loader adds where it sits).
SECTION = "data"
#: Roles of the three-stage protocol, in pipeline order.
ROLES: tuple[str, ...] = ("pre", "post", "ft")
#: Names accepted by ``source: embedded`` (built from text shipped inside packages).
EMBEDDED_NAMES: tuple[str, ...] = ("general", "music", "chem", "flan_post", "flan_ft")
#: Names accepted by ``source: synthetic``: which of the synthetic world's three
#: distributions the role reads (:mod:`lm_experiments.data.synthetic`).
SYNTHETIC_NAMES: tuple[str, ...] = ("pre", "post", "ft")
#: ``tokenizer:`` value of the synthetic world's word-level tokenizer (one word = one token).
WORD_TOKENIZER = "word"
#: File suffixes accepted by ``source: local``.
LOCAL_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl")
#: Special tokens of the byte-level BPE tokenizer (ids 0, 1, 2 in this order).
SPECIAL_TOKENS: dict[str, str] = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


@dataclass(frozen=True)
class CorpusSpec:
    """Where one role's documents come from.

    Attributes:
        source: ``"embedded"`` (offline default built from package contents), ``"hf"``
            (a Hugging Face dataset, streamed), ``"local"`` (.txt / .jsonl files) or
            ``"synthetic"`` (generated from ``DataConfig.synthetic``, no files).
        name: embedded: one of :data:`EMBEDDED_NAMES`; hf: the dataset id (e.g.
            ``"allenai/c4"``); local: a free label; synthetic: one of
            :data:`SYNTHETIC_NAMES`, the world's distribution the role reads.
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

    source: Literal["embedded", "hf", "local", "synthetic"]
    name: str
    path: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    text_field: str = "text"
    max_docs: int | None = None
    max_chars: int | None = None

    def validate(self, where: str) -> None:
        """Raise ``ConfigError`` naming ``{where}.{field}`` if this spec cannot be used."""
        if self.source not in ("embedded", "hf", "local", "synthetic"):
            raise ConfigError(f"{where}.source",
                              f"must be 'embedded', 'hf', 'local' or 'synthetic', got {self.source!r}")
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
        if self.source == "synthetic":
            if self.name not in SYNTHETIC_NAMES:
                raise ConfigError(f"{where}.name", f"unknown synthetic distribution {self.name!r}; allowed: "
                                  f"{', '.join(SYNTHETIC_NAMES)}")
            if self.path is not None:
                raise ConfigError(f"{where}.path", "synthetic corpora take no path (knobs: data.synthetic)")
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
class SyntheticConfig:
    """Knobs of the synthetic world (``data.synthetic``; docs/synthetic_world.md).

    The same knobs (and seed) give the same world and the same documents, token for
    token. A world is ``entities`` entities, each with one value (of ``values``) per
    relation, in four relation blocks (Appendix C's feature blocks in token form):

    Attributes:
        seed: root seed of the world (facts, grammar) and of each role's documents.
        entities: entities ``e0 ...``; every role states facts about all of them.
        shared_relations: invariant block: relations stated with the same values in
            D_pre, D_post and D_ft.
        inconsistent_relations: inconsistent block: relations stated in all three
            distributions, with a different value map in each (D_post's values are the
            capability; D_ft rewrites every one of them).
        specialized_relations: specialized block: relations whose tokens occur only in
            D_post (mixing is the only way pretraining sees them).
        ft_relations: the fine-tuning task's own relations (only in D_ft).
        values: answer vocabulary ``v0 ...`` (>= 3: the three inconsistent maps differ).
        filler_words: words ``w0 ...`` of the invariant grammar (a Markov chain whose
            transition probabilities are drawn once from the seed).
        filler_prob: probability that a segment is a grammar sentence (else a fact).
        query_prob: probability that a fact segment is a query ``Q e r ? A v .``
            (else one of the two statement phrasings, equally likely).
        sentence_stop: probability that a grammar sentence ends after each word.
        pre_docs, post_docs, ft_docs: documents generated for D_pre, D_post, D_ft; each
            is ``seq_len - 1`` words, so one document + EOS fills one packed block.
    """

    seed: int = 0
    entities: int = 64
    shared_relations: int = 4
    inconsistent_relations: int = 2
    specialized_relations: int = 2
    ft_relations: int = 2
    values: int = 16
    filler_words: int = 16
    filler_prob: float = 0.3
    query_prob: float = 0.4
    sentence_stop: float = 0.25
    pre_docs: int = 8000
    post_docs: int = 1500
    ft_docs: int = 1500

    def __post_init__(self) -> None:
        _int_range("seed", self.seed, 0, 2**63 - 1, "root seed of the world")
        _int_range("entities", self.entities, 2, 1_000_000, "entities of the world")
        for f in ("shared_relations", "inconsistent_relations", "specialized_relations", "ft_relations"):
            _int_range(f, getattr(self, f), 0, 100_000, "relations in this block")
        if self.inconsistent_relations + self.specialized_relations < 1:
            raise ConfigError("specialized_relations", "inconsistent_relations + specialized_relations must be >= 1 "
                              "(the post-trained capability is queries on those relations)")
        if self.shared_relations + self.inconsistent_relations < 1:
            raise ConfigError("shared_relations", "shared_relations + inconsistent_relations must be >= 1 "
                              "(D_pre states facts of those relations only)")
        _int_range("values", self.values, 3, 1_000_000, "three inconsistent value maps must differ")
        _int_range("filler_words", self.filler_words, 1, 1_000_000, "words of the invariant grammar")
        for f, lo_open, hi_open in (("filler_prob", False, True), ("query_prob", False, False),
                                    ("sentence_stop", True, False)):
            v = getattr(self, f)
            bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                (0.0 < v if lo_open else 0.0 <= v) and (v < 1.0 if hi_open else v <= 1.0))
            if bad:
                rng = f"{'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"
                raise ConfigError(f, f"must be a probability in {rng}, got {v!r}")
        for f in ("pre_docs", "post_docs", "ft_docs"):
            _int_range(f, getattr(self, f), 1, 10**9, "documents of this distribution")


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
        synthetic: knobs of the synthetic world read by ``source: synthetic`` roles
            (:class:`SyntheticConfig`; None = its defaults when the roles are synthetic,
            and must stay None otherwise); such a config needs ``tokenizer: word`` (one
            word = one token, built from the world's closed vocabulary) and every role
            synthetic. Absent from :meth:`identity` unless the roles are synthetic, so
            the other configs keep their keys.
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
    # a mapping is accepted too and validated in __post_init__, so a bad knob's error names
    # it (data.synthetic.entities); after construction this is a SyntheticConfig or None
    synthetic: SyntheticConfig | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for role in ROLES:
            spec = getattr(self, role)
            if not isinstance(spec, CorpusSpec):
                raise ConfigError(role, f"expected a corpus mapping (CorpusSpec), got {type(spec).__name__}")
            spec.validate(role)
        if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
            raise ConfigError("tokenizer", "must be 'bpe' or a Hugging Face tokenizer name")
        synth = [r for r in ROLES if getattr(self, r).source == "synthetic"]
        if isinstance(self.synthetic, dict):
            from early_exposure.configs import from_dict

            object.__setattr__(self, "synthetic", from_dict(SyntheticConfig, self.synthetic, path="synthetic"))
        if self.synthetic is not None and not isinstance(self.synthetic, SyntheticConfig):
            raise ConfigError("synthetic", f"expected a mapping of knobs, got {type(self.synthetic).__name__}")
        if synth and len(synth) < len(ROLES):
            other = next(r for r in ROLES if r not in synth)
            raise ConfigError(f"{other}.source", f"roles {', '.join(synth)} are synthetic: the synthetic world "
                              "needs all three roles synthetic (its word tokenizer knows only its own words)")
        if synth and self.tokenizer != WORD_TOKENIZER:
            raise ConfigError("tokenizer", f"synthetic corpora need tokenizer: {WORD_TOKENIZER} (one word = one "
                              f"token, so the entropy floor is per token), got {self.tokenizer!r}")
        if not synth and (self.tokenizer == WORD_TOKENIZER or self.synthetic is not None):
            raise ConfigError("tokenizer" if self.tokenizer == WORD_TOKENIZER else "synthetic",
                              "only for source: synthetic corpora (set pre/post/ft source: synthetic)")
        if synth and self.synthetic is None:  # the defaults, recorded in the config and its identity
            object.__setattr__(self, "synthetic", SyntheticConfig())
        if synth and self.max_doc_chars is not None:
            raise ConfigError("max_doc_chars", "must be null for synthetic corpora (a document is one block)")
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
        """The config as it enters cache keys and the data fingerprint: the test-split,
        document-cutting and synthetic fields only when set, so configs without them keep
        their keys."""
        from early_exposure.configs import to_dict

        d = to_dict(self)
        for k, default in (("test_fraction", 0.0), ("test_tokens", None), ("max_doc_chars", None)):
            if d.get(k) == default:
                d.pop(k, None)
        if not self.is_synthetic:
            d.pop("synthetic", None)
        return d

    @property
    def is_synthetic(self) -> bool:
        """True when the roles read the synthetic world (then all three do)."""
        return self.pre.source == "synthetic"


def _int_range(field: str, value: object, lo: int, hi: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ConfigError(field, f"must be an integer in [{lo}, {hi}] ({why}), got {value!r}")
