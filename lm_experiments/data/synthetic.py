"""The synthetic world: generated D_pre, D_post and D_ft with a known per-token entropy floor.

Nothing is downloaded: a seeded :class:`World` (knobs: :class:`SyntheticConfig`, the
``data.synthetic`` section) holds ``E`` entities ``e0 ...``, relations ``r0 ...`` in four
blocks, values ``v0 ...`` and a small Markov grammar over words ``w0 ...``. Documents are
sequences of *segments*, drawn independently:

* a **grammar sentence** (probability ``filler_prob``): ``w_a w_b ... .`` -- first word
  from ``pi``, each next word (or the stop ``.``) from the row of a transition matrix drawn
  once from the seed;
* a **fact**, about a uniform entity ``e`` and a uniform relation ``r`` of the role, in
  one of three phrasings: ``e r is v .`` and ``r of e is v .`` (statements, each with
  probability ``(1 - query_prob) / 2``) or ``Q e r ? A v .`` (a query, ``query_prob``);
  ``v`` is the role's value of ``(e, r)``, fixed by the world.

Appendix C's feature blocks in token form (docs/synthetic_world.md):

* *invariant*: the grammar, the phrasings, and the ``shared`` relations, whose values are
  the same in all three distributions;
* *inconsistent*: the ``inconsistent`` relations occur in all three with the same inputs
  ``(e, r)`` and three different value maps (D_post's is the capability, D_ft's differs
  from it for every entity, D_pre's from both);
* *specialized*: the ``specialized`` relations occur only in D_post;
* the fine-tuning task's own ``ft`` relations occur only in D_ft.

A document is exactly ``seq_len - 1`` words (segments are drawn until it is full, then cut),
so with EOS it fills one packed block: every block starts at a document start.

**Entropy floor.** For a role, the floor is the expected per-token loss of the *Bayes
predictor that knows the world* (the value maps, the grammar's probabilities, the document
length), i.e. ``(1 / (seq_len - 1)) * sum_t E[H(x_t | x_<t)]`` over the ``seq_len - 1``
targets of a block (words 1 .. seq_len-2 and the EOS, which is certain at its position); the
first word of a block is no target. The prefix determines the generator's state (the first
word of a segment tells its kind: a grammar word, an entity, a relation or ``Q``), so
``H(x_t | x_<t)`` is the entropy of the generator's choice at that state: ``log R`` at a
relation, ``log E`` at an entity, ``H(pi)``/``H(T[w])`` in the grammar, the segment-kind
entropy at a segment start, 0 at ``is``/``of``/``?``/``A``/values/``.`` after a fact.
:func:`entropy_floor` sums these exactly by propagating the state distribution over
positions; :func:`bayes_logprobs` parses tokens and returns the Bayes predictor's log-prob
of each (a second code path), and :func:`sample_documents` records the generator's own
log-prob of every token it draws (a third). A model that has not memorised a fact pays
up to ``log V`` more at that value: the floor is what a model reaching the world's facts
and grammar exactly would pay, in nats.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from early_exposure import seeding
from lm_experiments.data.config import SPECIAL_TOKENS, SYNTHETIC_NAMES, SyntheticConfig

#: Words of the phrasings (the invariant frame): sentence stop, statement and query words.
FRAME_WORDS: tuple[str, ...] = (".", "is", "of", "Q", "?", "A")
#: Unknown-word token of the word-level tokenizer (never produced by the world).
UNK_TOKEN = "<|unk|>"
#: Relation blocks, in the order their relations are numbered.
BLOCKS: tuple[str, ...] = ("shared", "inconsistent", "specialized", "ft")
#: Blocks stated in each distribution.
ROLE_BLOCKS: dict[str, tuple[str, ...]] = {"pre": ("shared", "inconsistent"),
                                           "post": ("shared", "inconsistent", "specialized"),
                                           "ft": ("shared", "inconsistent", "ft")}
#: Blocks whose queries are each role's own capability (exact-match items).
CAPABILITY_BLOCKS: dict[str, tuple[str, ...]] = {"pre": ("shared", "inconsistent"),
                                                 "post": ("inconsistent", "specialized"),
                                                 "ft": ("inconsistent", "ft")}
#: Item phrasings: the training query phrasing (``val``) and a held-out one (``test``) that
#: no document uses (the query frame ``Q ... ? A`` around the ``r of e`` order of a statement).
PHRASINGS: dict[str, str] = {"val": "Q {e} {r} ? A", "test": "Q {r} of {e} ? A"}
#: Dirichlet concentration of the grammar's transition rows.
GRAMMAR_CONCENTRATION = 0.5


@dataclass(frozen=True, eq=False)
class World:
    """One world drawn from a :class:`SyntheticConfig` (see the module docstring).

    Attributes:
        cfg: the knobs.
        entities, values, filler: the words ``e0 ...``, ``v0 ...``, ``w0 ...``.
        relations: block -> its relation words (numbered across blocks in :data:`BLOCKS` order).
        filler_init: (F,) first-word distribution ``pi`` of a grammar sentence.
        filler_trans: (F, F + 1) next-word distribution after each word; the last column is
            the stop ``.``.
        facts: role -> {(entity, relation): value} for every relation of the role.
    """

    cfg: SyntheticConfig
    entities: tuple[str, ...]
    values: tuple[str, ...]
    filler: tuple[str, ...]
    relations: dict[str, tuple[str, ...]]
    filler_init: np.ndarray
    filler_trans: np.ndarray
    facts: dict[str, dict[tuple[str, str], str]]

    def role_relations(self, role: str) -> tuple[str, ...]:
        """Relations stated in distribution ``role`` (``pre``/``post``/``ft``)."""
        return tuple(r for b in ROLE_BLOCKS[_role(role)] for r in self.relations[b])

    def block_of(self, relation: str) -> str:
        return next(b for b in BLOCKS if relation in self.relations[b])

    @property
    def vocab(self) -> list[str]:
        """Every word, specials first (ids 0-3: BOS, EOS, PAD, UNK), in a fixed order."""
        rel = [r for b in BLOCKS for r in self.relations[b]]
        return [SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["eos_token"], SPECIAL_TOKENS["pad_token"], UNK_TOKEN,
                *FRAME_WORDS, *self.filler, *self.entities, *rel, *self.values]

    def kind_probs(self) -> dict[str, float]:
        """Probability of each segment kind: grammar sentence, two statements, query."""
        c = self.cfg
        fact = 1.0 - c.filler_prob
        return {"filler": c.filler_prob, "S1": fact * (1 - c.query_prob) / 2, "S2": fact * (1 - c.query_prob) / 2,
                "Q": fact * c.query_prob}


def _role(role: str) -> str:
    if role not in SYNTHETIC_NAMES:
        raise ValueError(f"role must be one of {SYNTHETIC_NAMES}, got {role!r}")
    return role


@functools.lru_cache(maxsize=8)
def build_world(cfg: SyntheticConfig) -> World:
    """The world of ``cfg`` (a pure function of the knobs; cached)."""
    rng = seeding.stream(cfg.seed, "synthetic", "world")
    E, V, F = cfg.entities, cfg.values, cfg.filler_words
    entities = tuple(f"e{i}" for i in range(E))
    values = tuple(f"v{i}" for i in range(V))
    filler = tuple(f"w{i}" for i in range(F))
    counts = {"shared": cfg.shared_relations, "inconsistent": cfg.inconsistent_relations,
              "specialized": cfg.specialized_relations, "ft": cfg.ft_relations}
    relations, k = {}, 0
    for b in BLOCKS:
        relations[b] = tuple(f"r{k + i}" for i in range(counts[b]))
        k += counts[b]
    filler_init = rng.dirichlet(np.ones(F))
    trans = np.empty((F, F + 1))
    trans[:, :F] = rng.dirichlet(np.full(F, GRAMMAR_CONCENTRATION), size=F) * (1.0 - cfg.sentence_stop)
    trans[:, F] = cfg.sentence_stop
    facts: dict[str, dict[tuple[str, str], str]] = {r: {} for r in SYNTHETIC_NAMES}
    for r in relations["shared"]:
        vals = rng.integers(V, size=E)
        for role in SYNTHETIC_NAMES:
            facts[role].update({(e, r): values[v] for e, v in zip(entities, vals)})
    for r in relations["inconsistent"]:
        post = rng.integers(V, size=E)
        ft = (post + rng.integers(1, V, size=E)) % V          # != post for every entity
        pick = rng.integers(V - 2, size=E)                    # pre: one of the V - 2 others
        for i, e in enumerate(entities):
            others = [v for v in range(V) if v not in (post[i], ft[i])]
            facts["pre"][(e, r)] = values[others[pick[i]]]
            facts["post"][(e, r)] = values[post[i]]
            facts["ft"][(e, r)] = values[ft[i]]
    for block, role in (("specialized", "post"), ("ft", "ft")):
        for r in relations[block]:
            vals = rng.integers(V, size=E)
            facts[role].update({(e, r): values[v] for e, v in zip(entities, vals)})
    return World(cfg, entities, values, filler, relations, filler_init, trans, facts)


# --------------------------------------------------------------------------- generator


def _draw(rng: np.random.Generator, cum: np.ndarray) -> int:
    """Index drawn from the distribution with cumulative sums ``cum``."""
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


def sample_documents(world: World, role: str, n_docs: int, doc_len: int, rng: np.random.Generator
                     ) -> tuple[list[list[str]], np.ndarray]:
    """``n_docs`` documents of ``doc_len`` words from distribution ``role``, and the
    generator's log-probability (nats) of each word given the ones before it: (n_docs,
    doc_len) float64 (column 0 is the document's first word, no target of a block)."""
    role = _role(role)
    kp = world.kind_probs()
    kinds = [k for k in ("filler", "S1", "S2", "Q") if kp[k] > 0]
    kind_cum = np.cumsum([kp[k] for k in kinds])
    init_cum = np.cumsum(world.filler_init)
    trans_cum = np.cumsum(world.filler_trans, axis=1)
    ents, rels = world.entities, world.role_relations(role)
    facts = world.facts[role]
    lE, lR = math.log(len(ents)), math.log(len(rels))
    F = len(world.filler)
    docs, logps = [], np.zeros((n_docs, doc_len))
    for d in range(n_docs):
        words: list[str] = []
        lp: list[float] = []
        while len(words) < doc_len:
            kind = kinds[_draw(rng, kind_cum)]
            if kind == "filler":
                w = _draw(rng, init_cum)
                words.append(world.filler[w])
                lp.append(math.log(kp["filler"] * world.filler_init[w]))
                while True:
                    nxt = _draw(rng, trans_cum[w])
                    lp.append(math.log(world.filler_trans[w, nxt]))
                    if nxt == F:
                        words.append(".")
                        break
                    words.append(world.filler[nxt])
                    w = nxt
                continue
            e, r = ents[int(rng.integers(len(ents)))], rels[int(rng.integers(len(rels)))]
            v = facts[(e, r)]
            if kind == "S1":
                words += [e, r, "is", v, "."]
                lp += [math.log(kp["S1"]) - lE, -lR, 0.0, 0.0, 0.0]
            elif kind == "S2":
                words += [r, "of", e, "is", v, "."]
                lp += [math.log(kp["S2"]) - lR, 0.0, -lE, 0.0, 0.0, 0.0]
            else:
                words += ["Q", e, r, "?", "A", v, "."]
                lp += [math.log(kp["Q"]), -lE, -lR, 0.0, 0.0, 0.0, 0.0]
        docs.append(words[:doc_len])
        logps[d] = lp[:doc_len]
    return docs, logps


def _n_docs(cfg: SyntheticConfig, role: str) -> int:
    return {"pre": cfg.pre_docs, "post": cfg.post_docs, "ft": cfg.ft_docs}[_role(role)]


@functools.lru_cache(maxsize=6)
def documents(cfg: SyntheticConfig, role: str, seq_len: int) -> tuple[str, ...]:
    """The corpus of distribution ``role``: ``{role}_docs`` documents of ``seq_len - 1``
    space-separated words (seeded by ``cfg.seed`` and the role; cached)."""
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 for synthetic documents, got {seq_len}")
    rng = seeding.stream(cfg.seed, "synthetic", "docs", role)
    docs, _ = sample_documents(build_world(cfg), role, _n_docs(cfg, role), seq_len - 1, rng)
    return tuple(" ".join(d) for d in docs)


# --------------------------------------------------------------------------- Bayes predictor


class _Parser:
    """The Bayes predictor of one role: tracks the generator's state from the words seen
    and gives the probability of the next word (0 for an impossible one)."""

    def __init__(self, world: World, role: str, doc_len: int) -> None:
        self.w, self.doc_len = world, doc_len
        self.kp = world.kind_probs()
        self.ents = {e: i for i, e in enumerate(world.entities)}
        self.rels = set(world.role_relations(role))
        self.fill = {w: i for i, w in enumerate(world.filler)}
        self.facts = world.facts[role]
        self.state, self.e, self.r, self.last, self.t = "start", "", "", -1, 0

    def prob(self, tok: str) -> float:
        if self.t == self.doc_len:
            return 1.0 if tok == SPECIAL_TOKENS["eos_token"] else 0.0
        s, kp, E, R = self.state, self.kp, len(self.ents), len(self.rels)
        if s == "start":
            if tok in self.fill:
                return kp["filler"] * float(self.w.filler_init[self.fill[tok]])
            if tok in self.ents:
                return kp["S1"] / E
            if tok in self.rels:
                return kp["S2"] / R
            return kp["Q"] if tok == "Q" else 0.0
        if s == "fill":
            if tok == ".":
                return float(self.w.filler_trans[self.last, -1])
            return float(self.w.filler_trans[self.last, self.fill[tok]]) if tok in self.fill else 0.0
        if s in ("S1.r", "Q.r"):
            return 1.0 / R if tok in self.rels else 0.0
        if s in ("S2.e", "Q.e"):
            return 1.0 / E if tok in self.ents else 0.0
        if s.endswith(".v"):
            return 1.0 if tok == self.facts.get((self.e, self.r)) else 0.0
        return 1.0 if tok == _FIXED[s] else 0.0

    def advance(self, tok: str) -> None:
        s = self.state
        self.t += 1
        if s == "start":
            if tok in self.fill:
                self.state, self.last = "fill", self.fill[tok]
            elif tok in self.ents:
                self.state, self.e = "S1.r", tok
            elif tok in self.rels:
                self.state, self.r = "S2.of", tok
            else:
                self.state = "Q.e"
        elif s == "fill":
            if tok == ".":
                self.state = "start"
            else:
                self.last = self.fill[tok]
        else:
            if s in ("S2.e", "Q.e"):
                self.e = tok
            elif s in ("S1.r", "Q.r"):
                self.r = tok
            self.state = _NEXT[s]


#: the word each fixed state emits, and each fact state's successor
_FIXED = {"S1.is": "is", "S1.end": ".", "S2.of": "of", "S2.is": "is", "S2.end": ".", "Q.q": "?", "Q.a": "A",
          "Q.end": "."}
_NEXT = {"S1.r": "S1.is", "S1.is": "S1.v", "S1.v": "S1.end", "S1.end": "start",
         "S2.of": "S2.e", "S2.e": "S2.is", "S2.is": "S2.v", "S2.v": "S2.end", "S2.end": "start",
         "Q.e": "Q.r", "Q.r": "Q.q", "Q.q": "Q.a", "Q.a": "Q.v", "Q.v": "Q.end", "Q.end": "start"}


def bayes_logprobs(world: World, role: str, words: Sequence[str], doc_len: int | None = None) -> np.ndarray:
    """Log-probability (nats) of ``words[t]`` given ``words[:t]`` under the Bayes predictor
    of distribution ``role`` that knows the world, for ``t = 1 .. len(words) - 1``.

    ``words`` starts at a document start (a packed block of the synthetic corpus does);
    ``doc_len`` (default: ``seq_len - 1`` of a block, i.e. ``len(words) - 1``) is where the
    EOS is certain. An impossible word gets ``-inf``.
    """
    doc_len = len(words) - 1 if doc_len is None else doc_len
    p = _Parser(world, _role(role), doc_len)
    out = np.empty(max(len(words) - 1, 0))
    if words:
        p.advance(words[0])
    for t in range(1, len(words)):
        q = p.prob(words[t])
        out[t - 1] = math.log(q) if q > 0 else -math.inf
        if q == 0:
            out[t:] = -math.inf
            break
        if t < doc_len:
            p.advance(words[t])
    return out


# --------------------------------------------------------------------------- analytic floor


def _entropy(p: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def entropy_floor(world: World, role: str, seq_len: int, *, knows_facts: bool = True) -> float:
    """Exact per-token entropy floor (nats) of a packed block of distribution ``role``:
    ``(1 / (seq_len - 1)) * sum_{t=1}^{seq_len-2} E[h(s_t)]`` (+ 0 for the certain EOS),
    with ``s_t`` the generator's state after ``t`` words (its distribution propagated
    exactly from the document start) and ``h`` the entropy of the word emitted there.

    ``knows_facts=False``: the same for a predictor that knows everything but the value
    maps (``log V`` at every value, whose marginal is uniform): the loss of a model that
    learned the grammar and phrasings and memorised no fact. The gap between the two is
    the part of the loss that only facts can remove."""
    role = _role(role)
    E, R, F = len(world.entities), len(world.role_relations(role)), len(world.filler)
    kp = world.kind_probs()
    fact_chain = {"S1": ["S1.r", "S1.is", "S1.v", "S1.end"], "S2": ["S2.of", "S2.e", "S2.is", "S2.v", "S2.end"],
                  "Q": ["Q.e", "Q.r", "Q.q", "Q.a", "Q.v", "Q.end"]}
    names = ["start"] + [f"fill{i}" for i in range(F)] + [s for ch in fact_chain.values() for s in ch]
    ix = {n: i for i, n in enumerate(names)}
    n = len(names)
    P = np.zeros((n, n))  # P[i, j] = Pr(next state j | state i)
    h = np.zeros(n)
    # the segment start: the word names the kind, then the kind's first choice
    h[0] = _entropy(np.array(list(kp.values()))) + kp["filler"] * _entropy(world.filler_init) \
        + kp["S1"] * math.log(E) + kp["S2"] * math.log(R)
    P[0, 1:1 + F] = kp["filler"] * world.filler_init
    for k, ch in fact_chain.items():
        P[0, ix[ch[0]]] += kp[k]
        for a, b in zip(ch, ch[1:] + ["start"]):
            P[ix[a], ix[b]] = 1.0
    for i in range(F):
        P[1 + i, 1:1 + F] = world.filler_trans[i, :F]
        P[1 + i, 0] = world.filler_trans[i, F]
        h[1 + i] = _entropy(world.filler_trans[i])
    h[ix["S1.r"]] = h[ix["Q.r"]] = math.log(R)
    h[ix["S2.e"]] = h[ix["Q.e"]] = math.log(E)
    if not knows_facts:
        h[ix["S1.v"]] = h[ix["S2.v"]] = h[ix["Q.v"]] = math.log(len(world.values))
    dist = np.zeros(n)
    dist[0] = 1.0
    total = 0.0
    for _ in range(1, seq_len - 1):  # states s_1 .. s_{seq_len-2}
        dist = dist @ P
        total += float(dist @ h)
    return total / (seq_len - 1)


def floors(cfg: SyntheticConfig, seq_len: int, *, knows_facts: bool = True) -> dict[str, float]:
    """:func:`entropy_floor` of each distribution, nats per token."""
    w = build_world(cfg)
    return {r: entropy_floor(w, r, seq_len, knows_facts=knows_facts) for r in SYNTHETIC_NAMES}
