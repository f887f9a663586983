"""Raw text corpora for RLPT: documents read from disk or from the embedded assets.

A corpus is a list of :class:`Document`. Readers never crash on one bad document, and
one bad document never costs more than itself: a ``.txt`` file that is not valid UTF-8,
a jsonl line that is not UTF-8 or not JSON, or a record without text is skipped,
*counted* by reason in a :class:`ReadReport` and announced in one warning with the first
examples (file, line, reason). A corpus with no documents at all is an error
(:class:`EmptyCorpusError`): training on nothing is never what was meant.

Sources (``CorpusConfig.kind``):

* ``"text_dir"``  - a folder of ``.txt`` files, one document per file (recursive).
* ``"jsonl"``     - a ``.jsonl`` file or a folder of them, one document per line.
* ``"wiki"``      - the 10,033 embedded Wikipedia intros (:mod:`rlpt_jax.assets`).
* ``"array_record"`` - a corpus written by :mod:`rlpt_jax.data.tfds_corpus`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from pathlib import Path

from rlpt_jax import assets
from rlpt_jax.data.jsonl import BadLine, SkipLog, numbered_lines, parse_json_line


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
    """What a reader did: files read, documents kept and everything it skipped."""

    files_read: int = 0
    documents: int = 0
    skips: SkipLog = dataclasses.field(default_factory=SkipLog)

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped documents (or lines) per reason."""
        return self.skips.counts


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
            f"skipped: {report.skips.summary()})"
        )


def _finish(docs: list[Document], what: str, report: ReadReport) -> None:
    """Records the document count, fails on an empty corpus, warns about skips."""
    report.documents = len(docs)
    _require_documents(docs, what, report)
    report.skips.warn(f"{what} ({len(docs)} documents read)", stacklevel=4)


def _text_document(file: Path) -> str:
    """The UTF-8 text of a one-document file; ``BadLine`` when it cannot be used."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine("not_utf8", f"byte 0x{data[e.start]:02x} at offset {e.start}") from None
    if not text.strip():
        raise BadLine("empty_document")
    return text


def read_text_dir(path: str | Path) -> tuple[list[Document], ReadReport]:
    """Reads every ``*.txt`` below ``path`` (sorted), one document per file.

    The id is the file's path relative to ``path``. Files that are not UTF-8
    (``not_utf8``) or are empty after stripping whitespace (``empty_document``) are
    skipped, counted and announced in a warning.

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
        report.files_read += 1
        try:
            text = _text_document(file)
        except BadLine as e:
            report.skips.add(e, file)
            continue
        docs.append(Document(id=file.relative_to(root).as_posix(), text=text, source=str(file)))
    _finish(docs, f"text folder {root}", report)
    return docs, report


def read_jsonl(
    path: str | Path, *, text_field: str = "text", id_field: str = "id"
) -> tuple[list[Document], ReadReport]:
    """Reads a ``.jsonl`` file, or every ``*.jsonl`` below a folder (sorted).

    One document per line, text under ``text_field``. Blank lines are ignored (they
    carry nothing). Skipped, counted and announced in a warning, each costing its own
    line only: lines that are not UTF-8 (``not_utf8``), not JSON (``bad_json``) or not
    an object (``not_object``), records whose ``text_field`` is missing or not a string
    (``missing_text``) and records with blank text (``empty_document``).

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
        report.files_read += 1
        name = file.relative_to(root).as_posix() if root.is_dir() else file.name
        for line_no, raw in numbered_lines(file):
            if not raw.strip():
                continue
            try:
                record = parse_json_line(raw, line_no)
                text = _record_text(record, text_field)
            except BadLine as e:
                report.skips.add(e, file, line_no)
                continue
            doc_id = record.get(id_field)
            doc_id = str(doc_id) if doc_id is not None else f"{name}:{line_no}"
            docs.append(Document(id=doc_id, text=text, source=str(file)))
    _finish(docs, f"jsonl corpus {root}", report)
    return docs, report


def _record_text(record: object, text_field: str) -> str:
    """The document text of one parsed jsonl record; ``BadLine`` when there is none."""
    if not isinstance(record, dict):
        raise BadLine("not_object")
    text = record.get(text_field)
    if not isinstance(text, str):
        raise BadLine("missing_text", f"no string field {text_field!r}")
    if not text.strip():
        raise BadLine("empty_document")
    return text


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
