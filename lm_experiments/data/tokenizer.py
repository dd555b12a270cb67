"""Tokenizers: a byte-level BPE trained with ``tokenizers``, a named HF tokenizer, or the
synthetic world's word-level tokenizer (``tokenizer: word``, :func:`word_level`).

The BPE (GPT-2 style byte-level pre-tokenization, no normalizer) is lossless: decoding
the ids of any text gives the text back.  It is wrapped as a
``transformers.PreTrainedTokenizerFast`` with BOS/EOS/PAD special tokens (ids 0, 1, 2)
and saved with ``save_pretrained`` so a run directory carries its own tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from early_exposure.errors import ConfigError
from lm_experiments.data.config import SECTION, SPECIAL_TOKENS


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens (3 specials + 256 bytes + merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"], SPECIAL_TOKENS["pad_token"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return wrap(tok)


def word_level(vocab: Sequence[str], unk_token: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a closed vocabulary (id = position in ``vocab``, which
    starts with the BOS, EOS, PAD specials and ``unk_token``): text is split at whitespace
    and each word is one token; decoding joins the words with single spaces."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"], SPECIAL_TOKENS["pad_token"],
                            unk_token])
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, unk_token=unk_token,
                                   **SPECIAL_TOKENS)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` around a trained ``tokenizers.Tokenizer``."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def load_named(name: str) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained(name)`` (fast), with PAD defaulting to EOS."""
    try:
        tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    except Exception as exc:  # noqa: BLE001 - hub/network/format errors come in many types
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{SECTION}.tokenizer",
                          f"cannot load tokenizer {name!r} ({type(exc).__name__}: {first}); "
                          "use tokenizer: bpe offline") from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ConfigError(f"{SECTION}.tokenizer", f"{name!r} has no fast tokenizer; use tokenizer: bpe")
    if tok.eos_token_id is None:
        raise ConfigError(f"{SECTION}.tokenizer", f"{name!r} defines no EOS token, needed between packed documents")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def encode_documents(tok: PreTrainedTokenizerFast, texts: Sequence[str], *, batch: int = 1024) -> Iterator[list[int]]:
    """Token ids of each text without special tokens, batched through the Rust backend."""
    backend = tok.backend_tokenizer
    for i in range(0, len(texts), batch):
        for enc in backend.encode_batch(list(texts[i : i + batch]), add_special_tokens=False):
            yield enc.ids
