"""Raw text corpora for RLPT: documents read from disk or from the embedded assets.

A corpus is a list of :class:`Document`. Readers never crash on one bad file: a file
that is not valid UTF-8, a malformed JSON line or a record without text is skipped and
*counted* in a :class:`ReadReport`, so the caller can see (and log) what was lost. A
corpus with no documents at all is an error (:class:`EmptyCorpusError`): training on
nothing is never what was meant.

Sources (``CorpusConfig.kind``):

* ``"text_dir"``  - a folder of ``.txt`` files, one document per file (recursive).
* ``"jsonl"``     - a ``.jsonl`` file or a folder of them, one document per line.
* ``"wiki"``      - the 10,033 embedded Wikipedia intros (:mod:`rlpt_jax.assets`).
* ``"array_record"`` - a corpus written by :mod:`rlpt_jax.data.tfds_corpus`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from rlpt_jax import assets


class EmptyCorpusError(ValueError):
    """A corpus source produced no usable document."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of raw text.

    Attributes:
      id: Stable identifier, unique within the corpus (also drives the train/held-out
        split, so it must not depend on read order).
      text: The raw text.
      source: Where it came from (file path, ``"wiki"``, ...), for provenance.
    """

    id: str
    text: str
    source: str


@dataclasses.dataclass
class ReadReport:
    """What a reader did: files read and everything it skipped, by reason."""

    files_read: int = 0
    documents: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_files: list[str] = dataclasses.field(default_factory=list)

    def skip(self, reason: str, path: str | None = None) -> None:
        """Counts one skipped item; remembers the file when a whole file was skipped."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if path is not None:
            self.skipped_files.append(path)


_KINDS = ("text_dir", "jsonl", "wiki", "array_record")


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Which corpus to read.

    Attributes:
      kind: One of ``"text_dir"``, ``"jsonl"``, ``"wiki"``, ``"array_record"``.
      path: File or folder for every kind except ``"wiki"``.
      text_field: JSONL field holding the text (default ``"text"``).
      id_field: JSONL field holding the id; when absent from a record the id is
        ``"<file name>:<line number>"`` (default ``"id"``).
      split: Split to read for ``"array_record"`` corpora (default ``"train"``).
      limit: Keep only the first ``limit`` documents (``None``: all), for smoke runs.
    """

    kind: str = "wiki"
    path: str | None = None
    text_field: str = "text"
    id_field: str = "id"
    split: str = "train"
    limit: int | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"unknown corpus kind {self.kind!r}; valid kinds: {list(_KINDS)}")
        if self.kind != "wiki" and not self.path:
            raise ValueError(f"corpus kind {self.kind!r} needs a path")
        if not self.text_field:
            raise ValueError("text_field must be a non-empty field name")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be positive or None, got {self.limit}")


def _require_documents(docs: list[Document], what: str, report: ReadReport) -> None:
    if not docs:
        raise EmptyCorpusError(
            f"no documents in {what} (files read: {report.files_read}, "
            f"skipped: {report.skipped or 'none'})"
        )


def _read_utf8(path: Path, report: ReadReport) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        report.skip("non_utf8_file", str(path))
        return None
    report.files_read += 1
    return text


def read_text_dir(path: str | Path) -> tuple[list[Document], ReadReport]:
    """Reads every ``*.txt`` below ``path`` (sorted), one document per file.

    The id is the file's path relative to ``path``. Non-UTF-8 files and files that are
    empty after stripping whitespace are skipped and counted.

    Raises:
      FileNotFoundError: ``path`` is not a folder.
      EmptyCorpusError: no document was read.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"text corpus folder {root} does not exist")
    report = ReadReport()
    docs = []
    for file in sorted(root.rglob("*.txt")):
        text = _read_utf8(file, report)
        if text is None:
            continue
        if not text.strip():
            report.skip("empty_document")
            continue
        docs.append(Document(id=file.relative_to(root).as_posix(), text=text, source=str(file)))
    report.documents = len(docs)
    _require_documents(docs, f"text folder {root}", report)
    return docs, report


def read_jsonl(
    path: str | Path, *, text_field: str = "text", id_field: str = "id"
) -> tuple[list[Document], ReadReport]:
    """Reads a ``.jsonl`` file, or every ``*.jsonl`` below a folder (sorted).

    One document per line, text under ``text_field``. Skipped and counted: non-UTF-8
    files (whole file), blank lines are ignored silently (they carry nothing), lines
    that are not a JSON object (``bad_json_line``), records whose ``text_field`` is
    missing or not a string (``missing_text``) and records with blank text
    (``empty_document``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      EmptyCorpusError: no document was read.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(root.rglob("*.jsonl"))
    elif root.is_file():
        files = [root]
    else:
        raise FileNotFoundError(f"jsonl corpus {root} does not exist")
    report = ReadReport()
    docs = []
    for file in files:
        content = _read_utf8(file, report)
        if content is None:
            continue
        name = file.relative_to(root).as_posix() if root.is_dir() else file.name
        for line_no, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                report.skip("bad_json_line")
                continue
            if not isinstance(record, dict):
                report.skip("bad_json_line")
                continue
            text = record.get(text_field)
            if not isinstance(text, str):
                report.skip("missing_text")
                continue
            if not text.strip():
                report.skip("empty_document")
                continue
            doc_id = record.get(id_field)
            doc_id = str(doc_id) if doc_id is not None else f"{name}:{line_no}"
            docs.append(Document(id=doc_id, text=text, source=str(file)))
    report.documents = len(docs)
    _require_documents(docs, f"jsonl corpus {root}", report)
    return docs, report


def read_wiki_intros() -> tuple[list[Document], ReadReport]:
    """The embedded Wikipedia intros, id = article title, sorted by title."""
    report = ReadReport(files_read=1)
    docs = [
        Document(id=d["title"], text=d["text"], source="wiki") for d in assets.load_wiki_intros()
    ]
    report.documents = len(docs)
    _require_documents(docs, "the embedded Wikipedia intros", report)
    return docs, report


def _read_array_record(config: CorpusConfig) -> tuple[list[Document], ReadReport]:
    # Imported lazily: tensorflow_datasets takes a moment to import.
    from rlpt_jax.data import tfds_corpus

    source = tfds_corpus.open_corpus(config.path, split=config.split)
    count = len(source) if config.limit is None else min(len(source), config.limit)
    docs = [source[i] for i in range(count)]
    report = ReadReport(files_read=1, documents=len(docs))
    _require_documents(docs, f"array_record corpus {config.path}", report)
    return docs, report


_READERS: dict[str, Callable[[CorpusConfig], tuple[list[Document], ReadReport]]] = {
    "text_dir": lambda c: read_text_dir(c.path),
    "jsonl": lambda c: read_jsonl(c.path, text_field=c.text_field, id_field=c.id_field),
    "wiki": lambda c: read_wiki_intros(),
    "array_record": _read_array_record,
}


def load_corpus(config: CorpusConfig) -> tuple[list[Document], ReadReport]:
    """Reads the corpus that ``config`` names; see the module docstring for kinds."""
    docs, report = _READERS[config.kind](config)
    if config.limit is not None:
        docs = docs[: config.limit]
        report.documents = len(docs)
    counts = collections.Counter(d.id for d in docs)
    if len(counts) != len(docs):
        dupes = sorted(i for i, n in counts.items() if n > 1)[:5]
        raise ValueError(f"document ids must be unique; repeated ids include {dupes}")
    return docs, report
