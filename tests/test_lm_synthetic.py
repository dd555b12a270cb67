"""The synthetic world (lm_experiments.data.synthetic): floors, determinism, blocks, items.

References are independent of the code under test: closed forms and a recursion written
here for degenerate worlds, Monte-Carlo estimates from the generator's own draws, facts
re-parsed from the document *text* with regular expressions, hand-built scorers whose
right answers are counted here, and the word count of each document for the tokenizer.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from early_exposure import seeding
from early_exposure.configs import from_dict
from early_exposure.errors import ConfigError
from lm_experiments.data import CorpusSpec, DataConfig, prepare_data
from lm_experiments.data import synthetic as S
from lm_experiments.data import synthetic_items as SI
from lm_experiments.data.config import SyntheticConfig

EOS = "<|endoftext|>"
SMALL = SyntheticConfig(entities=12, shared_relations=2, inconsistent_relations=2, specialized_relations=2,
                        ft_relations=1, values=5, filler_words=4, pre_docs=600, post_docs=400, ft_docs=400)


def _world(cfg: SyntheticConfig) -> S.World:
    return S.build_world.__wrapped__(cfg)  # uncached: determinism is tested, not the cache


def _synthetic_data(**kw) -> dict:
    d = {r: {"source": "synthetic", "name": r} for r in ("pre", "post", "ft")}
    d.update({"tokenizer": "word", "seq_len": 32, "val_tokens": 32 * 8, "val_fraction": 0.1})
    d.update(kw)
    return d


# --------------------------------------------------------------------------- (a) the floor


def test_floor_closed_form_queries_only():
    """query_prob 1, no grammar: every segment is ``Q e r ? A v .`` (7 words). Words at
    offsets 1 and 2 of a segment cost log E and log R, the rest 0 (the kind is certain)."""
    cfg = replace(SMALL, filler_prob=0.0, query_prob=1.0)
    w = _world(cfg)
    E, R = cfg.entities, cfg.shared_relations + cfg.inconsistent_relations + cfg.specialized_relations
    seq_len = 16  # targets: words 1..14 and EOS -> 15; entities at 1, 8; relations at 2, 9
    expected = (2 * math.log(E) + 2 * math.log(R)) / 15
    assert S.entropy_floor(w, "post", seq_len) == pytest.approx(expected, rel=1e-12)
    # without the facts: + log V at the values (offsets 5: words 5 and 12)
    assert S.entropy_floor(w, "post", seq_len, knows_facts=False) == pytest.approx(
        expected + 2 * math.log(cfg.values) / 15, rel=1e-12)
    R_pre = cfg.shared_relations + cfg.inconsistent_relations
    assert S.entropy_floor(w, "pre", seq_len) == pytest.approx((2 * math.log(E) + 2 * math.log(R_pre)) / 15, rel=1e-12)


def test_floor_recursion_mixed_kinds():
    """One grammar word and sentence_stop 1: a segment is ``w0 .`` (prob 1/2) or a query
    (prob 1/2). Reference: a recursion over segment starts, written independently here."""
    cfg = replace(SMALL, filler_words=1, filler_prob=0.5, query_prob=1.0, sentence_stop=1.0)
    w = _world(cfg)
    E, R = cfg.entities, cfg.shared_relations + cfg.inconsistent_relations + cfg.ft_relations
    seq_len = 40
    n = seq_len - 1  # words 0..n-1; targets are words 1..n-1 (+ the certain EOS)

    from functools import lru_cache

    @lru_cache(None)
    def f(t: int) -> float:  # expected entropy of target words t..n-1 when a segment starts at t
        if t >= n:
            return 0.0
        start = math.log(2) if t >= 1 else 0.0
        filler = f(t + 2)                                           # "w0" certain given the kind; "." certain
        query = sum(c for k, c in ((1, math.log(E)), (2, math.log(R))) if t + k < n) + f(t + 7)
        return start + 0.5 * filler + 0.5 * query

    assert S.entropy_floor(w, "ft", seq_len) == pytest.approx(f(0) / n, rel=1e-12)


@pytest.mark.parametrize("role", ["pre", "post", "ft"])
def test_floor_matches_monte_carlo_and_bayes(role):
    """Default knobs: the analytic floor vs (i) the mean of the generator's own -log p over
    sampled documents and (ii) the Bayes predictor's loss on the same documents (parsed
    from the words alone), within 4 standard errors; (ii) equals the draws token by token."""
    cfg = SyntheticConfig()
    w = S.build_world(cfg)
    seq_len = 64
    docs, lp = S.sample_documents(w, role, 3000, seq_len - 1, seeding.stream(123, "mc", role))
    per_doc = -lp[:, 1:].sum(1) / (seq_len - 1)  # the EOS target costs 0
    floor = S.entropy_floor(w, role, seq_len)
    se = per_doc.std(ddof=1) / math.sqrt(len(per_doc))
    assert abs(per_doc.mean() - floor) < 4 * se, (per_doc.mean(), floor, se)
    bayes = np.array([S.bayes_logprobs(w, role, d + [EOS]) for d in docs[:1000]])
    assert bayes.shape == (1000, seq_len - 1)
    np.testing.assert_allclose(bayes[:, :-1], lp[:1000, 1:], atol=1e-12)
    assert np.all(bayes[:, -1] == 0.0)  # EOS certain at its position
    per_doc_b = -bayes.sum(1) / (seq_len - 1)
    se_b = per_doc_b.std(ddof=1) / math.sqrt(len(per_doc_b))
    assert abs(per_doc_b.mean() - floor) < 4 * se_b


def test_bayes_predictor_rejects_impossible_words():
    """A wrong value costs -inf (the predictor knows the world); EOS before the end too."""
    w = _world(SMALL)
    e, r = "e3", w.relations["specialized"][0]
    right = w.facts["post"][(e, r)]
    wrong = next(v for v in w.values if v != right)
    ok = S.bayes_logprobs(w, "post", [e, r, "is", right, ".", EOS], doc_len=5)
    assert np.isfinite(ok).all() and ok[-1] == 0.0
    assert ok[0] == pytest.approx(-math.log(len(w.role_relations("post"))))
    assert S.bayes_logprobs(w, "post", [e, r, "is", wrong, "."])[2] == -math.inf
    assert S.bayes_logprobs(w, "pre", [e, r, "is", right, "."])[0] == -math.inf  # specialized: not in D_pre
    assert S.bayes_logprobs(w, "post", ["Q", e, EOS], doc_len=5)[1] == -math.inf


# --------------------------------------------------------------------------- (b) seeds


def test_same_seed_same_world_other_seed_differs():
    a, b, c = _world(SMALL), _world(SyntheticConfig(**vars(SMALL))), _world(replace(SMALL, seed=1))
    assert a.facts == b.facts and np.array_equal(a.filler_trans, b.filler_trans)
    assert a.facts != c.facts and not np.array_equal(a.filler_trans, c.filler_trans)
    for role in ("pre", "post", "ft"):
        d1 = S.documents.__wrapped__(SMALL, role, 32)
        assert d1 == S.documents.__wrapped__(replace(SMALL), role, 32)
        assert d1 != S.documents.__wrapped__(replace(SMALL, seed=1), role, 32)
    assert S.documents.__wrapped__(SMALL, "pre", 32) != S.documents.__wrapped__(SMALL, "post", 32)


# --------------------------------------------------------------------------- (c) blocks

_FACT = [re.compile(r"(?:^|\. )(e\d+) (r\d+) is (v\d+) \."), re.compile(r"(?:^|\. )(r\d+) of (e\d+) is (v\d+) \."),
         re.compile(r"Q (e\d+) (r\d+) \? A (v\d+) \.")]


def _parsed_facts(docs: tuple[str, ...]) -> dict[tuple[str, str], set[str]]:
    """Facts read back from the text: (entity, relation) -> the values stated for it."""
    out: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        for i, pat in enumerate(_FACT):
            for m in pat.finditer(d):
                e, r, v = (m.group(2), m.group(1), m.group(3)) if i == 1 else m.groups()
                out.setdefault((e, r), set()).add(v)
    return out


def test_block_structure_in_the_text():
    cfg = SMALL
    w = _world(cfg)
    docs = {r: S.documents(cfg, r, 48) for r in ("pre", "post", "ft")}
    words = {r: set(" ".join(d).split()) for r, d in docs.items()}
    facts = {r: _parsed_facts(d) for r, d in docs.items()}
    rel = {r: {k[1] for k in facts[r]} for r in facts}
    for r in facts:  # one value per input inside each distribution
        assert all(len(v) == 1 for v in facts[r].values())
    spec, inc, shared, ftr = (set(w.relations[b]) for b in ("specialized", "inconsistent", "shared", "ft"))
    # specialized: only in D_post
    assert spec <= words["post"] and not spec & words["pre"] and not spec & words["ft"]
    assert ftr <= words["ft"] and not ftr & (words["pre"] | words["post"])
    assert rel["pre"] == shared | inc and rel["post"] == shared | inc | spec and rel["ft"] == shared | inc | ftr
    # inconsistent: the same inputs in D_post and D_ft, a different target for every one
    common = {k for k in facts["post"] if k[1] in inc} & set(facts["ft"])
    assert len(common) > 0.8 * cfg.entities * cfg.inconsistent_relations
    assert all(facts["post"][k] != facts["ft"][k] for k in common)
    assert all(facts["pre"][k] != facts["post"][k] for k in common if k in facts["pre"])
    # invariant: shared relations agree wherever two distributions state them
    for a, b in (("pre", "post"), ("post", "ft"), ("pre", "ft")):
        both = {k for k in facts[a] if k[1] in shared} & set(facts[b])
        assert both and all(facts[a][k] == facts[b][k] for k in both)
    # the grammar's words and its bigrams occur in all three
    bigrams = {r: {b for doc in d for b in re.findall(r"(?=(w\d+ w\d+))", doc)} for r, d in docs.items()}
    assert bigrams["pre"] & bigrams["post"] & bigrams["ft"]
    assert all(set(w.filler) <= words[r] for r in words)
    # the held-out item phrasing never occurs in any document; the training one does
    for r, d in docs.items():
        assert not any(re.search(r"Q r\d+ of", doc) for doc in d)
    assert re.search(r"Q e\d+ r\d+ \? A", " ".join(docs["post"]))


# --------------------------------------------------------------------------- (d) exact match


def test_items_cover_the_capability():
    w = _world(SMALL)
    items = SI.synthetic_items(w, "val")
    n_rel = SMALL.inconsistent_relations + SMALL.specialized_relations
    assert len(items) == SMALL.entities * n_rel
    assert {it.block for it in items} == {"inconsistent", "specialized"}
    test = SI.synthetic_items(w, "test")
    assert [it.answer for it in test] == [it.answer for it in items]
    it = test[0]
    assert it.prompt == ("Q", it.relation, "of", it.entity, "?", "A")
    assert items[0].prompt == ("Q", items[0].entity, items[0].relation, "?", "A")


def test_exact_match_on_hand_set_outputs():
    w = _world(SMALL)
    items = SI.synthetic_items(w, "test")
    vocab = {t: i for i, t in enumerate(w.vocab)}
    # a function scorer: right for even entities, a wrong value for odd ones
    def fn(ids):
        words = [w.vocab[i] for i in ids]
        e, r = words[3], words[1]  # "Q r of e ? A"
        v = w.facts["post"][(e, r)] if int(e[1:]) % 2 == 0 else next(x for x in w.values if x != w.facts["post"][(e, r)])
        logits = np.zeros((len(ids), len(vocab)))
        logits[-1, vocab[v]] = 5.0
        return logits
    got = SI.exact_match(fn, items, vocab)
    by_hand = sum(1 for it in items if int(it.entity[1:]) % 2 == 0)
    assert got.dtype.kind == "i" and set(np.unique(got)) <= {0, 1} and got.sum() == by_hand
    assert all(g == (int(it.entity[1:]) % 2 == 0) for g, it in zip(got, items))

    # per split and block: right for the even half of the entities (6 of 12) in each
    def fn_any(ids):
        words = [w.vocab[i] for i in ids]
        e = next(x for x in words if x.startswith("e"))
        r = next(x for x in words if x.startswith("r"))
        v = w.facts["post"][(e, r)] if int(e[1:]) % 2 == 0 else next(x for x in w.values if x != w.facts["post"][(e, r)])
        logits = np.zeros((len(ids), len(vocab)))
        logits[-1, vocab[v]] = 5.0
        return logits
    rates = SI.item_scores(fn_any, w, vocab)
    assert rates == {s: {"inconsistent": 0.5, "specialized": 0.5, "all": 0.5} for s in ("val", "test")}

    # a torch module: always answers "v0" -> right exactly where the value is v0
    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            out = torch.zeros(*input_ids.shape, len(vocab))
            out[..., vocab["v0"]] = 1.0
            return out

    m = Const().train()
    got = SI.exact_match(m, items, vocab, batch=7)
    assert got.sum() == sum(1 for it in items if it.answer == ("v0",)) and m.training

    # a two-word answer decoded greedily: the second step sees the first
    two = [SI.Item(("Q",), ("v1", "v2"), "", "", "", ""), SI.Item(("Q",), ("v1", "v3"), "", "", "", "")]

    def chain(ids):
        logits = np.zeros((len(ids), len(vocab)))
        logits[-1, vocab["v1"] if w.vocab[ids[-1]] == "Q" else vocab["v2"]] = 1.0
        return logits

    assert SI.exact_match(chain, two, vocab).tolist() == [1, 0]


# --------------------------------------------------------------------------- (e) the data layer


def test_prepare_synthetic_into_blocks(tmp_path):
    synth = {"entities": 12, "shared_relations": 2, "inconsistent_relations": 1, "specialized_relations": 1,
             "ft_relations": 1, "values": 5, "filler_words": 4, "pre_docs": 400, "post_docs": 300, "ft_docs": 300}
    cfg = from_dict(DataConfig, _synthetic_data(synthetic=synth, test_fraction=0.1, test_tokens=32 * 8), path="data")
    data = prepare_data(cfg, cache_root=tmp_path, progress=False)
    tok, w = data.tokenizer, S.build_world(cfg.synthetic)
    assert len(tok) == len(w.vocab) == 4 + 6 + 4 + 12 + 5 + 5
    eos = tok.eos_token_id
    for role in ("pre", "post", "ft"):
        docs = S.documents(cfg.synthetic, role, 32)
        for d in docs[:50]:  # one word = one token, losslessly
            ids = tok(d, add_special_tokens=False).input_ids
            assert len(ids) == len(d.split()) == 31 and tok.decode(ids) == d
        st = data.stats["roles"][role]
        assert st["documents"] == {"pre": 400, "post": 300, "ft": 300}[role]  # no duplicate was dropped
        sp = data.splits[role]
        for blocks in (sp.train, sp.val, sp.test):
            b = np.asarray(blocks)
            assert b.shape[1] == 32 and np.all(b[:, -1] == eos) and np.all((b == eos).sum(1) == 1)
        texts = set(docs)
        assert all(tok.decode(list(map(int, row[:-1]))) in texts for row in np.asarray(sp.train)[:20])
        # the Bayes predictor's loss on the reported blocks vs the floor (within 4 SE)
        rows = [tok.convert_ids_to_tokens(list(map(int, row))) for row in np.asarray(sp.report)]
        per = np.array([-S.bayes_logprobs(w, role, r).mean() for r in rows])
        assert np.isfinite(per).all()
        floor = S.entropy_floor(w, role, 32)
        assert abs(per.mean() - floor) < 4 * per.std(ddof=1) / math.sqrt(len(per)) + 1e-9
    again = prepare_data(cfg, cache_root=tmp_path, progress=False)
    assert again.stats["cache_hit"] and again.fingerprint == data.fingerprint
    other = from_dict(DataConfig, _synthetic_data(synthetic={**synth, "seed": 1}, test_fraction=0.1,
                                                  test_tokens=32 * 8), path="data")
    assert prepare_data(other, cache_root=tmp_path, progress=False).fingerprint != data.fingerprint


def test_other_sources_keep_their_identity():
    """A non-synthetic config's identity (fingerprint input) has exactly the keys it had
    before the synthetic source existed."""
    cfg = DataConfig(pre=CorpusSpec("embedded", "general"), post=CorpusSpec("embedded", "music"),
                     ft=CorpusSpec("embedded", "chem"))
    assert list(cfg.identity()) == ["pre", "post", "ft", "tokenizer", "vocab_size", "seq_len", "val_tokens",
                                    "val_fraction", "max_train_tokens", "bpe_sample_chars"]
    assert cfg.synthetic is None
    synth = from_dict(DataConfig, _synthetic_data(), path="data")
    assert synth.synthetic == SyntheticConfig() and "synthetic" in synth.identity()


# --------------------------------------------------------------------------- (f) bad knobs


@pytest.mark.parametrize("override, field", [
    ({"synthetic": {"entities": 1}}, "data.synthetic.entities"),
    ({"synthetic": {"values": 2}}, "data.synthetic.values"),
    ({"synthetic": {"filler_prob": 1.0}}, "data.synthetic.filler_prob"),
    ({"synthetic": {"query_prob": -0.1}}, "data.synthetic.query_prob"),
    ({"synthetic": {"sentence_stop": 0.0}}, "data.synthetic.sentence_stop"),
    ({"synthetic": {"post_docs": 0}}, "data.synthetic.post_docs"),
    ({"synthetic": {"inconsistent_relations": 0, "specialized_relations": 0}}, "data.synthetic.specialized_relations"),
    ({"synthetic": {"shared_relations": 0, "inconsistent_relations": 0}}, "data.synthetic.shared_relations"),
    ({"synthetic": {"entity": 3}}, "data.synthetic.entity"),
    ({"tokenizer": "bpe"}, "data.tokenizer"),
    ({"post": {"source": "synthetic", "name": "music"}}, "data.post.name"),
    ({"ft": {"source": "embedded", "name": "chem"}}, "data.ft.source"),
    ({"max_doc_chars": 4000}, "data.max_doc_chars"),
])
def test_bad_knobs_name_the_field(override, field):
    with pytest.raises(ConfigError) as exc:
        from_dict(DataConfig, _synthetic_data(**override), path="data")
    assert exc.value.field == field


def test_word_tokenizer_and_knobs_need_synthetic_roles():
    base = {r: {"source": "embedded", "name": n} for r, n in (("pre", "general"), ("post", "music"), ("ft", "chem"))}
    with pytest.raises(ConfigError) as exc:
        from_dict(DataConfig, {**base, "tokenizer": "word"}, path="data")
    assert exc.value.field == "data.tokenizer"
    with pytest.raises(ConfigError) as exc:
        from_dict(DataConfig, {**base, "synthetic": {"entities": 9}}, path="data")
    assert exc.value.field == "data.synthetic"


def test_preset_loads_and_override_errors_name_the_field():
    from lm_experiments.config import load_config

    cfg = load_config("configs/lm/cpu-quick-synth.yaml")
    assert cfg.data.is_synthetic and cfg.data.seq_len == 32  # calibrated 2026-12-06 (docs/lm_calibration.md; was 64)
    from lm_experiments.engine.model import MODEL_PRESETS
    assert MODEL_PRESETS[cfg.model.preset]["num_hidden_layers"] >= 4
    from lm_experiments.config import config_from_mapping, config_to_dict
    for other in (cfg, load_config("configs/lm/cpu-quick-flan-chem.yaml")):  # what executors and workers do
        assert config_from_mapping(config_to_dict(other)) == other
    with pytest.raises(ConfigError) as exc:
        load_config("configs/lm/cpu-quick-synth.yaml", ["data.synthetic.entities=0"])
    assert exc.value.field == "data.synthetic.entities"


def test_data_cli_prints_the_floors(tmp_path, capsys):
    import yaml

    from lm_experiments.data.__main__ import run

    synth = {"entities": 6, "values": 4, "filler_words": 3, "pre_docs": 120, "post_docs": 120, "ft_docs": 120}
    cfg_path = tmp_path / "synth.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": _synthetic_data(synthetic=synth, val_tokens=64)}))
    assert run(["prepare", "--config", str(cfg_path), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    out = capsys.readouterr().out
    w = S.build_world(SyntheticConfig(**synth))
    for role in ("pre", "post", "ft"):
        line = next(x for x in out.splitlines() if x.startswith(f"{role:<5} entropy floor"))
        assert float(line.split()[3]) == pytest.approx(S.entropy_floor(w, role, 32), abs=1e-4)


# --------------------------------------------------------------------------- bigram baseline


def test_bigram_sits_between_the_floors_and_log_vocab(tmp_path):
    """On the synthetic world the bigram cannot know which entity and relation a value
    belongs to, nor the grammar beyond one word: measured ~0.3 nats above the no-facts
    floor here (an empirical check, not a bound), and below log(vocabulary)."""
    from lm_experiments.analysis.ngram import baselines

    synth = {"entities": 12, "values": 5, "filler_words": 4, "pre_docs": 400, "post_docs": 400, "ft_docs": 400}
    cfg = from_dict(DataConfig, _synthetic_data(synthetic=synth), path="data")
    data = prepare_data(cfg, cache_root=tmp_path, progress=False)
    w = S.build_world(cfg.synthetic)
    base = baselines(data)
    for role in ("pre", "post", "ft"):
        assert S.entropy_floor(w, role, 32, knows_facts=False) < base[role]["bigram"] < math.log(len(data.tokenizer))
