"""Evaluable items on the held-out test documents, and their transitions between checkpoints.

The paper compares mean losses; two models with the same mean can have forgotten different
things. Following Harmon et al. 2025 ("Mapping Post-Training Forgetting in Language Models
at Scale", arXiv 2510.17776) this module turns the test split of every role into *items*
that are either right or wrong for a checkpoint, so forgetting is counted item by item.

Instruction corpora (``flan_post`` / ``flan_ft``, :mod:`lm_experiments.data.instructions`):
a document is ``inputs + "\\n\\n" + targets`` (:func:`~lm_experiments.data.instructions.flan_text`);
the prompt is everything up to and including the blank line, the answer is ``targets``.
Each test document becomes one :class:`Item` whose family is recognised from its template
(:func:`family_of`). Two forms are scored, both from one forward pass per option:

* **exact match** (EM): the greedy continuation of ``[EOS] + prompt`` equals ``answer + [EOS]``.
  Computed by teacher forcing: greedy decoding reproduces a reference token sequence exactly
  iff at every position of the reference the argmax of the next-token distribution given the
  reference prefix is the reference token (induction over positions; torch's argmax and
  greedy ``generate`` break ties the same way, by the lowest token id). The closing EOS is
  part of the reference, so a model that continues past the answer is wrong.
* **k-way multiple choice** (MC): the answer against ``k - 1`` distractors, the answers of
  other test items of the same family (distinct texts, drawn with a seeded stream from the
  item's document hash), each scored by the *total* log-likelihood of ``option + [EOS]``
  after ``[EOS] + prompt`` (:func:`sequence_scores`); the item is correct when the answer's
  score is the largest (:func:`choose`; the answer sits at a seeded position among the
  options, so an exact tie is broken at random rather than in the answer's favour).
  Sequences longer than the model's context (``seq_len``) keep their last ``seq_len`` tokens
  (the prompt is cut from the left); an item whose answer does not fit is left out and counted.

Beside them, the per-document rule below applied to the answer: ``answer`` items, correct
when the teacher-forced top-1 accuracy of the answer tokens (``answer + [EOS]``) is above
the threshold (informative where a small model is at chance on the k-way form).

Other corpora (music, chemistry, general text): **per-document items** on the packed test
blocks, scored exactly where the reported losses are (:func:`block_token_correct`): the
document's mean top-1 next-token accuracy over its target tokens in the test blocks
(:func:`document_accuracy`; documents are delimited by the EOS tokens of the packed stream,
the EOS that ends a document belongs to it; a document with fewer than ``min_tokens``
targets is left out). The item is correct when that accuracy is strictly above a
threshold ``tau``, fixed once per pipeline and role for every checkpoint (so before and
after are judged by the same bar; :mod:`lm_experiments.analysis.whatwhere` uses the median of the
item accuracies pooled over every checkpoint it evaluates unless a number is given, and
writes the value it used).
The test blocks themselves (``seq_len`` tokens each, pieces of documents) give a finer
companion, **per-block items**, with the same rule.

Transitions between a checkpoint before (b) and after (a) a stage, :func:`item_metrics`:
counts of ``1->0`` (forgotten), ``0->1`` (gained), ``1->1``, ``0->0``; with n items,
acc_b and acc_a the accuracies:

* absolute forgetting ``F = #(1->0) / n``, relative ``F / acc_b``; backward transfer
  ``B = #(0->1) / n``, relative ``B / (1 - acc_b)``;
* chance-adjusted, for k-way items only::

      F_c = max(0, #(1->0)/n - (1 - acc_b)(1 - acc_a) / (k - 1))
      B_c = max(0, #(0->1)/n - (1 - acc_b)(1 - acc_a) / (k - 1))

  Why this chance term c = (1 - acc_b)(1 - acc_a)/(k - 1): a model that does not know an
  item still picks the right option with probability 1/k, so some 1->0 and 0->1 flips are
  luck, not knowledge. For a pure guesser at both checkpoints (acc_b = acc_a = 1/k) the
  expected rate of each flip is (1/k)(1 - 1/k), and c equals exactly that, so its adjusted
  rates are 0; a model that knows every item at either checkpoint (acc = 1) gets c = 0, no
  correction. In between c scales with the product of the two error rates, the share of
  items that can be guessed at both checkpoints; the same term is subtracted from both
  flips because under guessing they are equally likely. Clipping at 0 keeps a rate a rate.
  This is the formula of Harmon et al. and of :func:`early_exposure.forgetting.forgetting_metrics`,
  which :func:`item_metrics` calls (one implementation).
* agreement across seeds, :func:`agreement`: an item counts only when the transition holds
  in every seed (same items, one row per seed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from early_exposure.forgetting import forgetting_metrics, transition_counts
from early_exposure.seeding import stream
from lm_experiments.data import instructions

__all__ = ["Item", "MCSet", "family_of", "parse_document", "build_mc", "sequence_scores", "choose", "score_mc",
           "block_token_correct", "document_ids", "document_accuracy", "item_metrics", "chance_term", "agreement",
           "INSTRUCTION_CORPORA", "DEFAULT_K", "TRANSITIONS"]

#: embedded corpus name -> its task families (instruction items); other corpora get per-document items
INSTRUCTION_CORPORA: dict[str, tuple[str, ...]] = {"flan_post": instructions.POST_FAMILIES,
                                                   "flan_ft": instructions.FT_FAMILIES}
DEFAULT_K = 4
TRANSITIONS = ("1->0", "0->1", "1->1", "0->0")


# ---- instruction items ----------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One instruction test document: family, prompt text (``inputs``), answer (``targets``),
    and the SHA-256 of the document (its identity across checkpoints and seeds)."""

    family: str
    inputs: str
    targets: str
    doc: str


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    body = "".join(".+?" if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts)
    return re.compile(rf"\A{body}\Z", re.S)


def family_of(inputs: str, families: Sequence[str]) -> str | None:
    """The family among ``families`` whose template renders ``inputs`` (templates with fixed
    words are tried before the bare ``{question}`` template, which matches anything)."""
    cands = []
    for fam in families:
        for t in instructions.TEMPLATES[fam]:
            fixed = len(re.sub(r"\{\w+\}", "", t))
            cands.append((fixed, fam, _template_regex(t)))
    for _, fam, rx in sorted(cands, key=lambda c: -c[0]):
        if rx.match(inputs.strip()):
            return fam
    return None


def parse_document(text: str, families: Sequence[str], doc: str = "") -> Item | None:
    """The :class:`Item` of one FLAN-format document (None when it has no blank line or no
    family's template renders its prompt)."""
    if "\n\n" not in text:
        return None
    inputs, targets = text.split("\n\n", 1)
    fam = family_of(inputs, families)
    if fam is None or not targets.strip():
        return None
    return Item(fam, inputs.strip(), targets.strip(), doc)


@dataclass
class MCSet:
    """Tokenised k-way items. Row ``i * k + j`` of ``seqs``/``starts`` is option ``j`` of item
    ``i``; ``answer[i]`` is the option holding the answer; ``starts[r]`` the index in
    ``seqs[r]`` of the first continuation token (everything from there on is scored)."""

    items: list[Item]
    k: int
    seqs: list[np.ndarray]
    starts: np.ndarray
    answer: np.ndarray
    dropped: int = 0   # items left out (answer too long for the context, or too few distractors)

    @property
    def n(self) -> int:
        return len(self.items)

    def families(self) -> np.ndarray:
        return np.asarray([it.family for it in self.items])


def build_mc(items: Sequence[Item], encode: Callable[[str], list[int]], eos_id: int, seq_len: int, *,
             k: int = DEFAULT_K, seed: int = 0) -> MCSet:
    """The k-way form of ``items`` (module docstring). ``encode`` maps text to token ids
    without special tokens; context = ``[eos] + encode(inputs + "\\n\\n")``, continuation =
    ``encode(option) + [eos]``; sequences longer than ``seq_len`` keep their last ``seq_len``
    tokens. Distractors: other items of the same family with a different answer text whose
    continuation fits, drawn by ``stream(seed, "mc", item.doc)``."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    cont = {}
    for it in items:
        if it.targets not in cont:
            cont[it.targets] = list(encode(it.targets)) + [eos_id]
    fits = {t: len(c) <= seq_len - 1 for t, c in cont.items()}
    pool: dict[str, list[str]] = {}
    for it in items:
        if fits[it.targets] and it.targets not in pool.setdefault(it.family, []):
            pool[it.family].append(it.targets)
    kept, seqs, starts, answer = [], [], [], []
    dropped = 0
    for it in items:
        others = [t for t in pool.get(it.family, []) if t != it.targets]
        if not fits[it.targets] or len(others) < k - 1:
            dropped += 1
            continue
        rng = stream(seed, "mc", it.doc or it.inputs)
        picks = [others[i] for i in rng.choice(len(others), size=k - 1, replace=False)]
        pos = int(rng.integers(0, k))
        options = picks[:pos] + [it.targets] + picks[pos:]
        ctx = [eos_id] + list(encode(it.inputs + "\n\n"))
        for opt in options:
            c = cont[opt]
            s = (ctx + c)[-seq_len:]
            seqs.append(np.asarray(s, dtype=np.int64))
            starts.append(len(s) - len(c))
        kept.append(it)
        answer.append(pos)
    return MCSet(kept, k, seqs, np.asarray(starts, dtype=np.int64), np.asarray(answer, dtype=np.int64), dropped)


def sequence_scores(model, seqs: Sequence[np.ndarray], starts: np.ndarray, *, batch_size: int = 32,
                    device=None, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every sequence r: the total log-likelihood (float64, natural log) of its tokens
    ``seqs[r][starts[r]:]`` given their prefixes, whether every one of them is the argmax of
    its predicted distribution (greedy reproduces the continuation), and the share of them
    that are (teacher-forced top-1 accuracy of the continuation).

    ``model(input_ids=x).logits`` (b, t, V) is read at the positions that predict the
    continuation; sequences are batched by length and right-padded (causal attention:
    padding after a sequence cannot change the logits of its own positions). ``starts[r]``
    must be >= 1 (a continuation token needs a prefix). Small batches are faster on a CPU
    (measured: 32 sequences per batch 0.41 s, 256 0.69 s for 536 sequences of tiny-1m, the
    difference being page faults of the large logits tensors)."""
    import torch

    n = len(seqs)
    ll = np.zeros(n, dtype=np.float64)
    greedy = np.zeros(n, dtype=bool)
    acc = np.zeros(n, dtype=np.float64)
    if n == 0:
        return ll, greedy, acc
    lens = np.asarray([len(s) for s in seqs])
    if (np.asarray(starts) < 1).any() or (np.asarray(starts) >= lens).any():
        raise ValueError("every continuation needs a prefix and at least one token (1 <= start < len)")
    order = np.argsort(lens, kind="stable")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                t = int(lens[idx].max())
                x = np.full((len(idx), t), pad_id, dtype=np.int64)
                for j, r in enumerate(idx):
                    x[j, :lens[r]] = seqs[r]
                xt = torch.as_tensor(x, device=device)
                logits = model(input_ids=xt).logits
                # positions p predict token p + 1: gather rows (row, p) for p in [start - 1, len - 1)
                rows, pos = [], []
                for j, r in enumerate(idx):
                    p = np.arange(starts[r] - 1, lens[r] - 1)
                    rows.append(np.full(len(p), j))
                    pos.append(p)
                rr = torch.as_tensor(np.concatenate(rows), device=logits.device)
                pp = torch.as_tensor(np.concatenate(pos), device=logits.device)
                lg = logits[rr, pp].float()                       # (m, V)
                tgt = xt[rr, pp + 1]                              # (m,)
                lp = torch.log_softmax(lg, dim=-1).gather(1, tgt[:, None])[:, 0].double().cpu().numpy()
                hit = (lg.argmax(dim=-1) == tgt).cpu().numpy()
                seg = np.cumsum([0] + [len(p) for p in pos])
                for j, r in enumerate(idx):
                    ll[r] = lp[seg[j]:seg[j + 1]].sum()
                    greedy[r] = bool(hit[seg[j]:seg[j + 1]].all())
                    acc[r] = float(hit[seg[j]:seg[j + 1]].mean())
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return ll, greedy, acc


def choose(scores: np.ndarray) -> np.ndarray:
    """The chosen option of each item: argmax over the last axis of (n, k) scores."""
    return np.asarray(scores).argmax(axis=-1)


def score_mc(model, mc: MCSet, *, batch_size: int = 32, device=None, subset: np.ndarray | None = None,
             mc_items: int | None = None) -> dict[str, np.ndarray]:
    """Score ``mc`` (or the items ``subset``, int indices) with ``model``: bool ``mc`` (k-way
    correct), bool ``em`` (exact match of the answer), float ``answer_ll`` (total
    log-likelihood of the answer continuation), float ``answer_acc`` (its teacher-forced
    top-1 token accuracy, for per-document items) and int ``choice``, one entry per item.
    ``mc_items``: score the distractors only of items with index < ``mc_items`` (the k-way
    form costs k forward passes, the answer one); ``mc`` / ``choice`` of the others are False
    / -1 and ``mc_scored`` says which are real."""
    items = np.arange(mc.n) if subset is None else np.asarray(subset, dtype=np.int64)
    k = mc.k
    scored = np.ones(len(items), dtype=bool) if mc_items is None else items < mc_items
    ans = mc.answer[items]
    rows = np.where(scored[:, None], items[:, None] * k + np.arange(k)[None, :], -1)
    rows[~scored, 0] = items[~scored] * k + ans[~scored]        # the answer alone
    flat = rows[rows >= 0]
    ll_f, greedy_f, acc_f = sequence_scores(model, [mc.seqs[r] for r in flat], mc.starts[flat],
                                            batch_size=batch_size, device=device)
    ll = np.full(rows.shape, -np.inf)
    greedy = np.zeros(rows.shape, dtype=bool)
    acc = np.zeros(rows.shape)
    ll[rows >= 0], greedy[rows >= 0], acc[rows >= 0] = ll_f, greedy_f, acc_f
    col = np.where(scored, ans, 0)                               # where each item's answer row sits
    ar = np.arange(len(items))
    choice = np.where(scored, choose(ll), -1)
    return {"mc": scored & (choice == ans), "em": greedy[ar, col], "answer_ll": ll[ar, col],
            "answer_acc": acc[ar, col], "choice": choice, "mc_scored": scored}


# ---- per-document items -----------------------------------------------------------------------
def block_token_correct(model, blocks: np.ndarray, *, batch_size: int = 16, device=None) -> np.ndarray:
    """bool (num_blocks, seq_len - 1): top-1 next-token correctness on the packed blocks, the
    reported losses' evaluation (:func:`lm_experiments.engine.evaluate.evaluate`)."""
    import torch

    from lm_experiments.engine.evaluate import evaluate

    dev = device if device is not None else torch.device("cpu")
    return evaluate(model, np.asarray(blocks), batch_size=batch_size, device=dev, return_correct=True,
                    shard=False).correct


def document_ids(blocks: np.ndarray, eos_id: int) -> np.ndarray:
    """int (num_blocks, seq_len - 1): the document of every target token (``blocks[:, 1:]``)
    in the packed stream, numbered from 0; the EOS that ends a document belongs to it."""
    b = np.asarray(blocks)
    flat = b.reshape(-1)
    before = np.concatenate([[0], np.cumsum(flat == eos_id)[:-1]])  # EOS strictly before each position
    return before.reshape(b.shape)[:, 1:]


def document_accuracy(correct: np.ndarray, doc_ids: np.ndarray, *, min_tokens: int = 8
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(documents, accuracy): the documents with at least ``min_tokens`` target tokens and
    each one's mean top-1 accuracy over them."""
    c = np.asarray(correct, dtype=np.float64).reshape(-1)
    d = np.asarray(doc_ids).reshape(-1)
    counts = np.bincount(d)
    sums = np.bincount(d, weights=c, minlength=len(counts))
    docs = np.flatnonzero(counts >= min_tokens)
    return docs, sums[docs] / counts[docs]


# ---- transitions ----------------------------------------------------------------------------------
def chance_term(acc_b: float, acc_a: float, k: int) -> float:
    """(1 - acc_b)(1 - acc_a) / (k - 1): the expected chance share of each flip (module docstring)."""
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    return (1.0 - acc_b) * (1.0 - acc_a) / (k - 1)


def item_metrics(before: np.ndarray, after: np.ndarray, k: int | None = None) -> dict[str, float]:
    """The four transition counts (keys ``n_1->0`` ...) and the rates of
    :func:`early_exposure.forgetting.forgetting_metrics` (with the chance-adjusted
    ``forgetting_chance_adjusted`` / ``backward_transfer_chance_adjusted`` when ``k``)."""
    c = transition_counts(before, after)
    out = {f"n_{t}": float(c[t]) for t in TRANSITIONS}
    out.update(forgetting_metrics(before, after, k=k))
    return out


def agreement(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Transitions that hold in every seed: ``before``/``after`` are (seeds, n) correctness
    of the same n items; returns for each transition the number of items showing it in
    every seed (``all_1->0`` ...) and that number over n (``all_1->0_rate``)."""
    b = np.asarray(before, dtype=bool)
    a = np.asarray(after, dtype=bool)
    if b.shape != a.shape or b.ndim != 2:
        raise ValueError(f"need two (seeds, n) arrays of one shape, got {b.shape} and {a.shape}")
    masks = {"1->0": b & ~a, "0->1": ~b & a, "1->1": b & a, "0->0": ~b & ~a}
    n = b.shape[1]
    out: dict[str, float] = {"n": float(n), "seeds": float(b.shape[0])}
    for t, m in masks.items():
        cnt = int(m.all(axis=0).sum())
        out[f"all_{t}"] = float(cnt)
        out[f"all_{t}_rate"] = cnt / n if n else float("nan")
    return out


def documents_of(texts: Iterable[tuple[str, str]], families: Sequence[str]) -> tuple[list[Item], int]:
    """Items of ``(doc_hash, text)`` pairs (in the given order) and the number that did not parse."""
    out, bad = [], 0
    for h, t in texts:
        it = parse_document(t, families, h)
        if it is None:
            bad += 1
        else:
            out.append(it)
    return out, bad
