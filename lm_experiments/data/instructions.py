"""FLAN-style instruction examples templated from real structured data.

FLAN (Wei et al. 2022; ``Muennighoff/flan``) is a mixture of NLP tasks, each rendered
through several natural-language templates into ``inputs`` / ``targets`` pairs.  No
trainable instruction set ships in a package, so the embedded ``flan_post`` and
``flan_ft`` corpora build the same thing from WordNet 3.0, chatterbot-corpus and
mendeleev's element table.  The paper post-trains and fine-tunes on different task
families; here the two corpora use disjoint families (:data:`POST_FAMILIES`,
:data:`FT_FAMILIES`).  Every example is rendered exactly like a FLAN row (see
:func:`flan_text`), so the embedded and online corpora share one format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lm_experiments.data.parsers import Synset

POST_FAMILIES: tuple[str, ...] = ("wordnet_definition", "wordnet_synonyms", "wordnet_antonyms", "chatterbot_qa")
FT_FAMILIES: tuple[str, ...] = ("wordnet_hypernym", "wordnet_usage", "wordnet_part_of", "element_facts")

_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "wordnet_definition": (
        'What does the {pos} "{word}" mean?',
        'Define the word "{word}" ({pos}).',
        'Give a dictionary definition of "{word}", used as a {pos}.',
    ),
    "wordnet_synonyms": (
        'List words that mean the same as "{word}" ({pos}).',
        'Give synonyms of the {pos} "{word}".',
        'Which words can replace "{word}" without changing the meaning?',
    ),
    "wordnet_antonyms": (
        'What is the opposite of "{word}"?',
        'Give an antonym of the {pos} "{word}".',
    ),
    "chatterbot_qa": (
        "{question}",
        "Answer the following.\n{question}",
        "Reply to this message: {question}",
    ),
    "wordnet_hypernym": (
        '"{word}" is a kind of what?',
        'Name a more general category that includes "{word}".',
        'Complete: a {word} is a type of ...',
    ),
    "wordnet_usage": (
        'Use the {pos} "{word}" in a sentence.',
        'Write an example sentence containing "{word}".',
    ),
    "wordnet_part_of": (
        'Name a part of "{word}".',
        'What is one component of a {word}?',
    ),
    "element_facts": (
        "{question}",
        "Chemistry question: {question}",
        "Answer briefly. {question}",
    ),
}


@dataclass(frozen=True)
class Example:
    """One instruction example: its task family and FLAN-style ``inputs``/``targets``."""

    family: str
    inputs: str
    targets: str

    @property
    def text(self) -> str:
        return flan_text(self.inputs, self.targets)


def flan_text(inputs: str, targets: str) -> str:
    """The document text of one FLAN row: ``inputs`` then a blank line then ``targets``."""
    return f"{inputs.strip()}\n\n{targets.strip()}"


def _pick(family: str, key: str) -> str:
    """Choose one of the family's templates deterministically from the example's key."""
    opts = TEMPLATES[family]
    h = int(hashlib.sha256(f"{family}|{key}".encode()).hexdigest()[:8], 16)
    return opts[h % len(opts)]


def _render(family: str, key: str, targets: str, **fields: str) -> Example:
    return Example(family, _pick(family, key).format(**fields), targets)


def wordnet_examples(synsets: Iterable[Synset], families: Iterable[str]) -> Iterator[Example]:
    """Instruction examples of the given WordNet families, one synset at a time.

    ``wordnet_definition``: lemma -> gloss definition.  ``wordnet_synonyms``: lemma -> the
    other lemmas of its synset.  ``wordnet_antonyms``: lemma -> antonym (``!`` pointers).
    ``wordnet_hypernym``: lemma -> lemmas of its hypernym (``@``/``@i``).
    ``wordnet_usage``: lemma -> a gloss example that contains it.  ``wordnet_part_of``:
    noun -> lemmas of its part meronyms (``%p``).
    """
    syn = list(synsets)
    fams = set(families)
    index = {s.key: s for s in syn}
    for s in syn:
        pos = _POS.get(s.pos, s.pos)
        word = s.lemmas[0]
        key = f"{s.offset}{s.pos}"
        if "wordnet_definition" in fams and s.definition:
            yield _render("wordnet_definition", key, s.definition[0].upper() + s.definition[1:] + ".",
                          word=word, pos=pos)
        if "wordnet_synonyms" in fams and len(s.lemmas) > 1:
            yield _render("wordnet_synonyms", key, ", ".join(s.lemmas[1:]), word=word, pos=pos)
        if "wordnet_antonyms" in fams:
            for sym, off, tpos, st in s.pointers:
                if sym != "!":
                    continue
                tgt = index.get((off, "a" if tpos == "s" else tpos))
                src_i, tgt_i = int(st[:2], 16), int(st[2:], 16)
                if tgt is None or not (0 < src_i <= len(s.lemmas) and 0 < tgt_i <= len(tgt.lemmas)):
                    continue
                w = s.lemmas[src_i - 1]
                yield _render("wordnet_antonyms", key + w, tgt.lemmas[tgt_i - 1], word=w, pos=pos)
        if "wordnet_hypernym" in fams:
            hyper = [index.get((off, tpos)) for sym, off, tpos, _ in s.pointers if sym in ("@", "@i")]
            names = [h.lemmas[0] for h in hyper if h is not None]
            if names:
                yield _render("wordnet_hypernym", key, " or ".join(names), word=word, pos=pos)
        if "wordnet_usage" in fams:
            for ex in s.examples:
                if word.lower() in ex.lower():
                    yield _render("wordnet_usage", key, ex[0].upper() + ex[1:], word=word, pos=pos)
                    break
        if "wordnet_part_of" in fams and s.pos == "n":
            parts = [index.get((off, tpos)) for sym, off, tpos, _ in s.pointers if sym == "%p"]
            names = [p.lemmas[0] for p in parts if p is not None]
            if names:
                yield _render("wordnet_part_of", key, ", ".join(names), word=word, pos=pos)


def chatterbot_examples(pairs: Iterable[tuple[str, str]]) -> Iterator[Example]:
    """``chatterbot_qa``: a conversational statement -> the corpus's response."""
    for q, a in pairs:
        yield _render("chatterbot_qa", q, a, question=q)


def element_examples(elements: Iterable[dict]) -> Iterator[Example]:
    """``element_facts``: questions about mendeleev element properties (symbol, atomic
    number, period/group/block, electron configuration, atomic weight, discovery)."""
    for el in elements:
        name, sym = el["name"], el["symbol"]
        facts: list[tuple[str, str]] = [
            (f"What is the chemical symbol of {name}?", sym),
            (f"Which element has the symbol {sym}?", name),
            (f"What is the atomic number of {name}?", str(el["atomic_number"])),
            (f"Which element has atomic number {el['atomic_number']}?", name),
        ]
        if el.get("period"):
            facts.append((f"In which period of the periodic table is {name}?", f"Period {el['period']}."))
        if el.get("group_id"):
            facts.append((f"Which group of the periodic table contains {name}?", f"Group {el['group_id']}."))
        if el.get("block"):
            facts.append((f"In which block of the periodic table is {name}?", f"The {el['block']}-block."))
        if el.get("electronic_configuration"):
            facts.append((f"Give the ground-state electron configuration of {name}.", str(el["electronic_configuration"])))
        if el.get("atomic_weight"):
            facts.append((f"What is the standard atomic weight of {name}?", f"{float(el['atomic_weight']):.4g}"))
        if el.get("discoverers"):
            year = f" ({el['discovery_year']})" if el.get("discovery_year") else ""
            facts.append((f"Who discovered {name}?", f"{str(el['discoverers']).strip()}{year}."))
        for q, a in facts:
            yield _render("element_facts", q, a, question=q)
