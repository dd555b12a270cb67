"""The synthetic world's post-trained capability: exact-match queries with one right answer
(:func:`synthetic_items`; ``val`` = the training phrasing, ``test`` = a held-out phrasing no
document contains) and their scorer (:func:`exact_match`, greedy decoding; :func:`item_scores`,
rates per split and block). The world itself: :mod:`lm_experiments.data.synthetic`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lm_experiments.data.synthetic import CAPABILITY_BLOCKS, PHRASINGS, World, _role

@dataclass(frozen=True)
class Item:
    """One exact-match query: ``prompt`` words, the one right ``answer`` word(s)."""

    prompt: tuple[str, ...]
    answer: tuple[str, ...]
    entity: str
    relation: str
    block: str
    phrasing: str


def synthetic_items(world: World, split: str, role: str = "post") -> list[Item]:
    """Queries ``(e, r)`` over every entity and every relation of the role's capability
    blocks (:data:`CAPABILITY_BLOCKS`; for ``post``: inconsistent and specialized), answered
    with the role's values. ``split``: ``val`` uses the training query phrasing, ``test`` a
    held-out phrasing no document contains (:data:`PHRASINGS`)."""
    if split not in PHRASINGS:
        raise ValueError(f"split must be one of {sorted(PHRASINGS)}, got {split!r}")
    role = _role(role)
    out = []
    for b in CAPABILITY_BLOCKS[role]:
        for r in world.relations[b]:
            for e in world.entities:
                prompt = tuple(PHRASINGS[split].format(e=e, r=r).split())
                out.append(Item(prompt, (world.facts[role][(e, r)],), e, r, b, split))
    return out


def _ids(tokenizer: object) -> Callable[[Sequence[str]], list[int]]:
    vocab = tokenizer if isinstance(tokenizer, Mapping) else tokenizer.get_vocab()  # type: ignore[attr-defined]
    return lambda words: [int(vocab[w]) for w in words]


def exact_match(model_or_fn: object, items: Sequence[Item], tokenizer: object, *, batch: int = 256) -> np.ndarray:
    """Greedy-decode ``len(answer)`` tokens after each prompt; 1 where they equal the
    answer, else 0 (int array, one per item).

    ``model_or_fn``: a ``torch.nn.Module`` called as ``model(input_ids=(b, t))`` returning
    logits (b, t, V) or an object with ``.logits`` (a causal LM, evaluated in ``eval()``
    mode without gradients), or a function ``ids -> logits (t, V)`` of one sequence.
    ``tokenizer``: a ``{word: id}`` mapping or anything with ``get_vocab()``.
    """
    to_ids = _ids(tokenizer)
    out = np.zeros(len(items), dtype=np.int64)
    try:
        import torch
        is_module = isinstance(model_or_fn, torch.nn.Module)
    except ImportError:  # pragma: no cover - torch is a dependency of the LM half
        is_module = False
    if not is_module:
        for i, it in enumerate(items):
            ids = to_ids(it.prompt)
            for _ in it.answer:
                ids.append(int(np.argmax(np.asarray(model_or_fn(list(ids)))[-1])))
            out[i] = int(ids[len(it.prompt):] == to_ids(it.answer))
        return out
    model = model_or_fn
    was_training = model.training
    model.eval()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((len(it.prompt), len(it.answer)), []).append(i)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else None
    try:
        with torch.no_grad():
            for (_, n_ans), idx in groups.items():
                for s in range(0, len(idx), batch):
                    part = idx[s:s + batch]
                    x = torch.tensor([to_ids(items[i].prompt) for i in part], dtype=torch.long, device=device)
                    for _ in range(n_ans):
                        res = model(input_ids=x)
                        logits = res.logits if hasattr(res, "logits") else res
                        x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                    got = x[:, -n_ans:].cpu().tolist()
                    for row, i in zip(got, part):
                        out[i] = int(row == to_ids(items[i].answer))
    finally:
        model.train(was_training)
    return out


def item_scores(model_or_fn: object, world: World, tokenizer: object, role: str = "post") -> dict[str, dict[str, float]]:
    """Exact-match rate of ``role``'s items per split (``val``: training phrasing, ``test``:
    held-out phrasing) and per block, plus ``all``: ``{split: {block | "all": rate}}``."""
    out: dict[str, dict[str, float]] = {}
    for split in PHRASINGS:
        items = synthetic_items(world, split, role)
        hits = exact_match(model_or_fn, items, tokenizer)
        rates = {b: float(np.mean([h for h, it in zip(hits, items) if it.block == b]))
                 for b in CAPABILITY_BLOCKS[_role(role)] if world.relations[b]}
        out[split] = {**rates, "all": float(hits.mean())}
    return out
