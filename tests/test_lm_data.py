"""Data layer of the LM pipeline: split, packing, loaders, tokenizer, cache, errors.

Everything is offline: corpora are small files written by the tests.  References are
hand-computed cases, a second code path (``local`` vs ``hf`` loaders on the same file),
and markers embedded in the documents (so leaks are detected from decoded text, not
from the hash bookkeeping under test).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from early_exposure.configs import from_dict, to_dict
from early_exposure.errors import ConfigError
from lm_experiments.data import CorpusSpec, DataConfig, PreparedData, default_cache_root, prepare_data
from lm_experiments.data import prepare as prepare_mod
from lm_experiments.data import sources
from lm_experiments.data.packing import pack_documents
from lm_experiments.data.split import cap_documents, dedupe_sorted, is_validation, split_documents
from lm_experiments.data.tokenizer import encode_documents, train_bpe

SYL = ["ka", "lo", "mi", "tu", "re", "sa", "no", "vi", "de", "pu", "ga", "zo"]


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join("".join(rng.choice(SYL, size=rng.integers(1, 4))) for _ in range(n))


def _corpus(tag: str, n_docs: int, seed: int) -> list[str]:
    """Documents that each carry a unique marker ``<tag>#<i>`` (for leak detection)."""
    rng = np.random.default_rng(seed)
    return [f"{tag}#{i} {_words(rng, int(rng.integers(8, 40)))}." for i in range(n_docs)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpora")
    pre = _corpus("pre", 300, 0)
    post = _corpus("post", 300, 1)
    ft = _corpus("ft", 300, 2)
    (d / "pre.txt").write_text("\n\n".join(pre) + "\n")
    (d / "post.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(post)))
    # FLAN format: inputs / targets / task, like Muennighoff/flan
    flan = [{"inputs": f"Question {t.split()[0]}: what follows?", "targets": " ".join(t.split()[1:]), "task": "toy"}
            for t in ft]
    (d / "ft_flan.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flan))
    return {"dir": d, "pre": d / "pre.txt", "post": d / "post.jsonl", "ft": d / "ft_flan.jsonl"}


def _cfg(files: dict[str, Path], **kw) -> DataConfig:
    base = dict(
        pre=CorpusSpec("local", "toy-pre", path=str(files["pre"])),
        post=CorpusSpec("hf", "toy-post", path=str(files["post"])),
        ft=CorpusSpec("local", "toy-flan", path=str(files["ft"])),
        vocab_size=300, seq_len=16, val_tokens=64, val_fraction=0.1,
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def prepared(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedData, Path]:
    cache = tmp_path_factory.mktemp("cache")
    return prepare_data(_cfg(files), cache_root=cache, progress=False), cache


# --------------------------------------------------------------------------- split


def test_split_is_by_document_hash_and_stable_under_additions():
    docs = _corpus("a", 400, 3)
    texts, hashes = dedupe_sorted(docs)
    tr, va = split_documents(texts, hashes, 0.2)
    val_a = {texts[i] for i in va}
    # independent reference: the rule written out with hashlib (last 64 bits of SHA-256)
    ref = {t for t in docs if int(hashlib.sha256(t.encode()).hexdigest()[-16:], 16) < 0.2 * 2**64}
    assert val_a == ref
    assert 0.12 < len(va) / len(texts) < 0.28  # binomial(400, 0.2): 5 sigma = 0.1
    # adding documents never moves an existing one
    texts2, hashes2 = dedupe_sorted(docs + _corpus("b", 300, 4))
    tr2, va2 = split_documents(texts2, hashes2, 0.2)
    assert {texts2[i] for i in va2} & set(docs) == val_a
    assert {texts2[i] for i in tr2} & set(docs) == {texts[i] for i in tr}
    # deterministic order and exact-duplicate removal
    assert dedupe_sorted(list(reversed(docs)) + docs[:5] + ["", "  "]) == (texts, hashes)


def test_cap_keeps_leading_documents_and_split_fraction_survives_capping():
    texts, hashes = dedupe_sorted(_corpus("c", 2000, 5))
    t, h = cap_documents(texts, hashes, max_docs=None, max_chars=5000)
    assert t == texts[: len(t)] and sum(map(len, t[:-1])) < 5000 <= sum(map(len, t))
    t, h = cap_documents(texts, hashes, max_docs=7, max_chars=None)
    assert h == hashes[:7]
    # ordering (leading hash bits) and split (trailing bits) are independent
    t, h = cap_documents(texts, hashes, max_docs=500, max_chars=None)
    _, va = split_documents(t, h, 0.25)
    assert 0.17 < len(va) / 500 < 0.33
    assert all(is_validation(h[i], 0.25) for i in va)


# --------------------------------------------------------------------------- packing


def test_packing_hand_computed():
    docs = [[5, 6, 7], [8], [9, 10]]
    blocks, dropped = pack_documents(docs, eos_id=1, seq_len=3)
    np.testing.assert_array_equal(blocks, [[5, 6, 7], [1, 8, 1], [9, 10, 1]])
    assert blocks.dtype == np.int32 and dropped == 0
    blocks, dropped = pack_documents(docs, eos_id=1, seq_len=4)
    np.testing.assert_array_equal(blocks, [[5, 6, 7, 1], [8, 1, 9, 10]])
    assert dropped == 1
    blocks, dropped = pack_documents(docs, eos_id=1, seq_len=2, max_blocks=2)
    np.testing.assert_array_equal(blocks, [[5, 6], [7, 1]])
    assert dropped == 5


@pytest.mark.parametrize("seq_len", [1, 7, 32])
def test_packing_conserves_tokens_and_places_eos(seq_len: int):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(3, 50, size=int(rng.integers(0, 40))).tolist() for _ in range(60)]
    blocks, dropped = pack_documents(docs, eos_id=2, seq_len=seq_len)
    total = sum(len(d) + 1 for d in docs)
    assert blocks.shape == (total // seq_len, seq_len) and blocks.size + dropped == total
    flat = blocks.ravel()
    ends = np.cumsum([len(d) + 1 for d in docs]) - 1  # EOS positions in the stream
    kept = ends[ends < flat.size]
    np.testing.assert_array_equal(np.flatnonzero(flat == 2), kept)
    # token multiset conserved (the full stream, reference built by plain concatenation)
    stream = np.concatenate([np.r_[d, 2] for d in docs])
    np.testing.assert_array_equal(flat, stream[: flat.size])


# --------------------------------------------------------------------------- loaders


def test_txt_jsonl_and_flan_loaders_agree_across_local_and_hf_paths(files):
    # .txt: blank-line separated
    local = sources.load_documents(CorpusSpec("local", "x", path=str(files["pre"])), "data.pre", Path("/nonexistent"))
    assert local == _corpus("pre", 300, 0)
    # .jsonl through our reader and through datasets' streaming json builder
    spec_l = CorpusSpec("local", "x", path=str(files["post"]))
    spec_h = CorpusSpec("hf", "m-a-p/MusicPile", path=str(files["post"]))
    a = sources.load_documents(spec_l, "data.post", Path("/nonexistent"))
    b = list(sources.iter_hf_documents(spec_h, "data.post"))
    assert a == b == _corpus("post", 300, 1)
    # FLAN rows are templated "inputs\n\ntargets" in both paths
    spec_f = CorpusSpec("hf", "Muennighoff/flan", path=str(files["ft"]), max_docs=5)
    flan = list(sources.iter_hf_documents(spec_f, "data.ft"))
    ft = _corpus("ft", 300, 2)
    assert flan == [f"Question {t.split()[0]}: what follows?\n\n{' '.join(t.split()[1:])}" for t in ft[:5]]
    assert sources.load_documents(CorpusSpec("local", "f", path=str(files["ft"])), "data.ft", Path("/x"))[:5] == flan
    # max_chars stops the stream once reached (prefix of the stream)
    capped = list(sources.iter_hf_documents(CorpusSpec("hf", "c", path=str(files["post"]), max_chars=200), "data.post"))
    assert sum(map(len, capped[:-1])) < 200 <= sum(map(len, capped)) and capped == a[: len(capped)]


def test_directory_of_txt_files_is_one_document_per_file(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first doc\n\nstill first\n")
    (tmp_path / "sub" / "b.txt").write_text("second\n")
    (tmp_path / "c.jsonl").write_text('{"body": "third"}\n')
    docs = sources.load_documents(CorpusSpec("local", "d", path=str(tmp_path), text_field="body"), "data.pre", tmp_path)
    assert sorted(docs) == ["first doc\n\nstill first", "second", "third"]


# --------------------------------------------------------------------------- tokenizer


def test_bpe_round_trip_specials_and_save_pretrained(tmp_path: Path):
    from transformers import AutoTokenizer

    tok = train_bpe(_corpus("t", 200, 6), vocab_size=320)
    assert len(tok) == 320
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    texts = ["kalo mitu resa.", "X:1\nK:G\n|:GAB c2:|", "CC(=O)Oc1ccccc1C(=O)O", "naïve 東京 😀\t  \n\n end "]
    for s in texts:
        ids = tok(s)["input_ids"]
        assert tok.decode(ids) == s
        assert all(i > 2 for i in ids)  # no special tokens added
    assert [list(x) for x in encode_documents(tok, texts, batch=2)] == [tok(s)["input_ids"] for s in texts]
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert [again(s)["input_ids"] for s in texts] == [tok(s)["input_ids"] for s in texts]
    assert again.eos_token_id == 1 and again.decode(again(texts[3])["input_ids"]) == texts[3]


# --------------------------------------------------------------------------- prepare_data


def test_prepare_shapes_and_no_validation_document_in_any_training_stream(prepared):
    data, _ = prepared
    markers: dict[str, dict[str, set[str]]] = {}
    for role, split in data.splits.items():
        assert split.train.dtype == np.int32 and split.val.dtype == np.int32
        assert split.val.shape == (4, 16) and split.train.shape[1] == 16 and split.train.shape[0] > 20
        assert split.train_doc_hashes.isdisjoint(split.val_doc_hashes)
        markers[role] = {
            s: set(re.findall(r"\b(?:pre|post|ft)#\d+\b", data.tokenizer.decode(getattr(split, s).ravel().tolist())))
            for s in ("train", "val")
        }
        assert markers[role]["val"] and markers[role]["train"]
    all_train = set().union(*(m["train"] for m in markers.values()))
    all_val = set().union(*(m["val"] for m in markers.values()))
    assert all_train.isdisjoint(all_val)
    # the documents the markers come from are exactly the ones the split rule sends to val
    post_docs = {t.split()[0]: t for t in _corpus("post", 300, 1)}
    for m in markers["post"]["val"]:
        assert is_validation(hashlib.sha256(post_docs[m].encode()).hexdigest(), 0.1)
    # every packed position is a real token or EOS; EOS count matches document boundaries
    eos = data.tokenizer.eos_token_id
    assert data.tokenizer.pad_token_id not in np.unique(data.splits["pre"].train)
    assert (data.splits["pre"].train == eos).sum() >= data.splits["pre"].train.shape[0] * 16 // 200


def test_tokens_of_validation_documents_never_occur_in_training_blocks(prepared):
    data, _ = prepared
    docs = _corpus("pre", 300, 0)
    val_docs = [d for d in docs if is_validation(hashlib.sha256(d.encode()).hexdigest(), 0.1)]
    assert val_docs
    train = data.splits["pre"].train.ravel()
    windows = np.lib.stride_tricks.sliding_window_view(train, 8)
    for d in val_docs:
        ids = np.asarray(data.tokenizer(d)["input_ids"][:8], dtype=np.int32)
        assert not (windows == ids).all(axis=1).any(), d


def test_cache_reuse_is_fast_and_identical(prepared, files, monkeypatch):
    data, cache = prepared
    # a second call must not train, tokenize or read corpora again
    for name in ("train_bpe", "_index_roles", "_pack_split"):
        monkeypatch.setattr(prepare_mod, name, lambda *a, **k: pytest.fail("cache not used"))
    again = prepare_data(_cfg(files), cache_root=cache, progress=False)
    assert again.fingerprint == data.fingerprint and again.stats["cache_hit"]
    for role in data.splits:
        np.testing.assert_array_equal(again.splits[role].train, data.splits[role].train)
        np.testing.assert_array_equal(again.splits[role].val, data.splits[role].val)
        assert again.splits[role].val_doc_hashes == data.splits[role].val_doc_hashes
    assert (again.tokenizer_dir / "tokenizer.json").is_file()
    s = "post#3 kalo mi"
    assert again.tokenizer(s)["input_ids"] == data.tokenizer(s)["input_ids"]


def test_val_sets_fixed_across_train_caps_and_a_changed_corpus_changes_fingerprint(prepared, files, tmp_path):
    data, cache = prepared
    capped = prepare_data(_cfg(files, max_train_tokens=64), cache_root=cache, progress=False)
    assert capped.fingerprint != data.fingerprint
    assert capped.stats["eval_fingerprint"] == data.stats["eval_fingerprint"]
    for role in data.splits:
        assert capped.splits[role].train.shape == (4, 16)
        np.testing.assert_array_equal(capped.splits[role].train, data.splits[role].train[:4])
        np.testing.assert_array_equal(capped.splits[role].val, data.splits[role].val)
    changed = tmp_path / "pre.txt"
    changed.write_text(files["pre"].read_text() + "\n\nan added document\n")
    cfg = _cfg(files)
    other = prepare_data(DataConfig(**{**cfg.__dict__, "pre": CorpusSpec("local", "toy-pre", path=str(changed))}),
                         cache_root=cache, progress=False)
    assert other.fingerprint != data.fingerprint


def test_default_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EARLY_EXPOSURE_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("EARLY_EXPOSURE_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "early_exposure"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"post": {"source": "embedded", "name": "jazz"}}, "data.post.name"),
        ({"ft": {"source": "local", "name": "x"}}, "data.ft.path"),
        ({"pre": {"source": "local", "name": "x", "path": "/no/such/file.txt"}}, None),
        ({"pre": {"source": "embedded", "name": "general", "max_docs": 0}}, "data.pre.max_docs"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 0.9}, "data.val_fraction"),
        ({"vocab_size": 100}, "data.vocab_size"),
        ({"seq_len": 1}, "data.seq_len"),
        ({"val_tokens": 8}, "data.val_tokens"),
        ({"max_train_tokens": 3}, "data.max_train_tokens"),
        ({"pre": {"source": "web", "name": "x"}}, "data.pre.source"),
        ({"colour": "red"}, "data.colour"),
    ],
)
def test_bad_config_names_the_field(section, field):
    base = {"pre": {"source": "embedded", "name": "general"}, "post": {"source": "embedded", "name": "music"},
            "ft": {"source": "embedded", "name": "chem"}}
    merged = {**base, **section}
    if field is None:  # a missing local path is found when the corpus is read
        cfg = from_dict(DataConfig, merged, path="data")
        with pytest.raises(ConfigError) as exc:
            sources.corpus_identity(cfg.pre, "data.pre", Path("/nonexistent"))
        assert exc.value.field == "data.pre.path" and "not found" in exc.value.message
        return
    with pytest.raises(ConfigError) as exc:
        from_dict(DataConfig, merged, path="data")
    assert exc.value.field == field


def test_runtime_errors_name_the_field(files, tmp_path):
    # a field that the rows do not have
    bad = _cfg(files, pre=CorpusSpec("local", "p", path=str(files["post"]), text_field="body"))
    with pytest.raises(ConfigError) as exc:
        prepare_data(bad, cache_root=tmp_path, progress=False)
    assert exc.value.field == "data.pre.text_field" and "text" in exc.value.message
    # validation documents too small for val_tokens
    with pytest.raises(ConfigError) as exc:
        prepare_data(_cfg(files, val_tokens=16 * 4000), cache_root=tmp_path, progress=False)
    assert exc.value.field == "data.val_tokens"
    # unsupported file suffix
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(ConfigError) as exc:
        prepare_data(_cfg(files, ft=CorpusSpec("local", "c", path=str(tmp_path / "x.csv"))), cache_root=tmp_path,
                     progress=False)
    assert exc.value.field == "data.ft.path"


def test_unreachable_hub_dataset_is_a_config_error(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    spec = CorpusSpec("hf", "allenai/c4", hf_config="en", max_docs=3)
    with pytest.raises(ConfigError) as exc:
        sources.corpus_identity(spec, "data.pre", tmp_path)
    assert exc.value.field == "data.pre.name" and "embedded" in exc.value.message


def test_named_tokenizer_from_a_local_directory_and_offline_failure(prepared, files, tmp_path, monkeypatch):
    import huggingface_hub

    data, cache = prepared
    named = prepare_data(_cfg(files, tokenizer=str(data.tokenizer_dir)), cache_root=tmp_path, progress=False)
    assert named.fingerprint != data.fingerprint
    for role in data.splits:  # same tokenizer, same documents -> the same blocks
        np.testing.assert_array_equal(named.splits[role].val, data.splits[role].val)
        np.testing.assert_array_equal(named.splits[role].train, data.splits[role].train)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as exc:
        prepare_data(_cfg(files, tokenizer="no-such-org/no-such-tokenizer"), cache_root=tmp_path, progress=False)
    assert exc.value.field == "data.tokenizer" and "bpe" in exc.value.message


def test_cli_prepare_writes_stats_and_bad_input_exits_2(prepared, files, tmp_path, capsys):
    from early_exposure.errors import cli_main
    from lm_experiments.data.__main__ import main

    data, cache = prepared
    cfg_path = tmp_path / "cfg.yaml"
    cfg = _cfg(files)
    cfg_path.write_text(yaml.safe_dump({"data": to_dict(cfg)}))
    out = tmp_path / "out" / "stats.json"
    assert cli_main(main, ["prepare", "--config", str(cfg_path), "--cache-root", str(cache), "--quiet",
                           "--json", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["fingerprint"] == data.fingerprint and stats["roles"]["post"]["val"]["tokens"] == 64
    capsys.readouterr()
    bad = tmp_path / "bad" / "stats.json"
    rc = cli_main(main, ["prepare", "--config", str(cfg_path), "--cache-root", str(cache), "--quiet",
                         "--set", "data.val_fraction=0.7", "--json", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: data.val_fraction:")
    assert not bad.parent.exists()
