"""Large corpora as tensorflow-datasets ``array_record`` files: random access, no TensorFlow.

:class:`DocumentCorpus` is a ``tfds.core.GeneratorBasedBuilder`` that writes a list of
:class:`~rlpt_jax.data.corpus.Document` once, with ``file_format="array_record"``.
Reading back goes through ``tfds.builder_from_directory(...).as_data_source(split)``,
which opens the ``array_record`` shards with random access (``source[i]``) and needs
neither TensorFlow nor the builder class; the data loader can therefore pick any
document by index (shuffling, resuming at a data position) without scanning the file.

Checked with tensorflow-datasets 4.9.10 and array-record 0.8.6 without TensorFlow
installed: building, preparing and ``as_data_source`` all work. Two details matter:

* ``dataset_info_from_configs`` looks for metadata files next to the builder's module
  and fails for a builder defined inside a package module, so ``_info`` builds a
  ``tfds.core.DatasetInfo`` directly.
* ``code_path`` is overridden to ``None``: the default looks up the builder's source
  file (for checksum files), which for a class in an installed package imports
  ``importlib_resources``, a package tfds does not declare.
* Text features come back as UTF-8 ``bytes``; :func:`open_corpus` decodes them.

``disable_shuffling=True`` (in the ``DatasetInfo``) keeps the records in generation
order, so index ``i`` of the stored split is the ``i``-th document written (what a
resumable data position needs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from rlpt_jax.data.corpus import Document, EmptyCorpusError

_FEATURES = ("id", "text", "source")


class DocumentCorpus(tfds.core.GeneratorBasedBuilder):
    """Writes documents, per split, to ``array_record`` shards under ``data_dir``.

    The documents are given to the constructor (this builder downloads nothing):
    ``DocumentCorpus(splits={"train": docs}, data_dir=...).download_and_prepare()``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Documents with id, text and source."}

    # tfds locates a builder's source file to find checksum/metadata files beside it;
    # for a class inside an installed package that lookup imports `importlib_resources`
    # (not a dependency of ours). This builder has no such files, so say so up front.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    def __init__(self, *, splits: Mapping[str, Iterable[Document]] | None = None, **kwargs):
        self._splits = dict(splits or {})
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Raw documents for RLPT (id, text, source).",
            disable_shuffling=True,
            features=tfds.features.FeaturesDict({name: tfds.features.Text() for name in _FEATURES}),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Nothing to download: the documents were handed in.
        if not self._splits:
            raise ValueError("DocumentCorpus needs documents: pass splits={'train': [...]}")
        return {name: self._generate_examples(docs) for name, docs in self._splits.items()}

    def _generate_examples(self, docs: Iterable[Document]) -> Iterator[tuple[int, dict]]:
        for index, doc in enumerate(docs):
            yield index, {"id": doc.id, "text": doc.text, "source": doc.source}


def write_corpus(
    documents: Iterable[Document] | Mapping[str, Iterable[Document]], data_dir: str | Path
) -> Path:
    """Writes documents (one split ``"train"``, or a ``{split: documents}`` mapping).

    Returns:
      The versioned dataset folder (``<data_dir>/document_corpus/1.0.0``) to pass to
      :func:`open_corpus`.

    Raises:
      EmptyCorpusError: a split given as a sequence is empty.
    """
    splits = dict(documents) if isinstance(documents, Mapping) else {"train": documents}
    if not splits:
        raise ValueError("write_corpus needs at least one split")
    # tfds only notices an empty split after writing it (an AssertionError); catch the
    # common case early. Iterators are not materialised, so they stream as before.
    empty = [name for name, docs in splits.items() if isinstance(docs, Sequence) and not docs]
    if empty:
        raise EmptyCorpusError(f"no documents to write for split(s) {empty}")
    builder = DocumentCorpus(splits=splits, data_dir=str(data_dir))
    builder.download_and_prepare()
    return Path(builder.data_dir)


class CorpusSource(Sequence[Document]):
    """Random-access view of one stored split; ``source[i]`` reads only record ``i``."""

    def __init__(self, data_source: Any):
        self._source = data_source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"document index {index} out of range for {len(self)} documents")
        record = self._source[index]
        return Document(**{name: _as_str(record[name]) for name in _FEATURES})


def _as_str(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def open_corpus(dataset_dir: str | Path, *, split: str = "train") -> CorpusSource:
    """Opens a split written by :func:`write_corpus` for random access.

    Args:
      dataset_dir: The versioned folder :func:`write_corpus` returned (the one holding
        ``dataset_info.json``).
      split: Split name.

    Raises:
      FileNotFoundError: no prepared dataset in ``dataset_dir``.
      KeyError: the split does not exist (the message lists the stored splits).
    """
    path = Path(dataset_dir)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"no prepared tfds corpus (dataset_info.json) in {path}")
    builder = tfds.builder_from_directory(str(path))
    if split not in builder.info.splits:
        raise KeyError(f"split {split!r} not in {path}; stored: {sorted(builder.info.splits)}")
    return CorpusSource(builder.as_data_source(split=split))
