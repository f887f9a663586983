"""Question-answering data: FlashRAG jsonl, an embedded Wikipedia QA set, FanOutQA dev.

Every source yields :class:`QAExample` ``(id, question, golden_answers, dataset)``;
``golden_answers`` are alternatives (any match is correct, as in the EM reward of
:mod:`rlpt_jax.rewards.qa`).

* :func:`load_qa_jsonl` / :func:`write_qa_jsonl` — FlashRAG's format, one JSON object
  per line with ``question`` and ``golden_answers``. Malformed lines (including bytes that
  are not UTF-8) are skipped, counted by reason in a :class:`QALoadReport` and reported in
  one warning with the first examples; a file with no usable line is an error.
* :func:`build_embedded_qa` / :func:`embedded_qa` — questions made from the first
  sentence of the embedded Wikipedia intros, the article title masked as ``___``,
  answerable with the BM25 search tool over the same intros (see
  :func:`embedded_question` for the exact recipe). Built once, seeded, and cached as
  jsonl under ``cache_dir()/embedded_qa-v1/``.
* :func:`embedded_pairs` — two questions of one split of the embedded set asked at once
  (name both articles), so that a trajectory needs a search per sentence: the CPU stand-in
  for multi-hop questions, on which AT²PO's trees branch mid-trajectory.
* :func:`fanoutqa_dev` — the 310 FanOutQA dev questions (multi-hop, list- and
  table-valued answers), read from the installed ``fanoutqa`` package's JSON file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlpt_jax.data.jsonl import BadLine, SkipLog, numbered_lines, parse_json_line
from rlpt_jax.rewards.qa import normalize_answer

__all__ = [
    "QAExample",
    "QALoadReport",
    "QADataError",
    "load_qa_jsonl",
    "write_qa_jsonl",
    "SPLITS",
    "MASK",
    "QUESTION_TEMPLATE",
    "EMBEDDED_DATASET",
    "DEFAULT_NUM",
    "MIN_WORDS",
    "SEARCH_TOPK",
    "RejectedArticle",
    "EmbeddedQASet",
    "embedded_question",
    "masked_sentence",
    "build_embedded_qa",
    "embedded_qa",
    "PAIRS_DATASET",
    "PAIR_TEMPLATE",
    "MAX_PAIR_ANSWERS",
    "pair_question",
    "embedded_pairs",
    "FANOUTQA_DATASET",
    "fanoutqa_answer_text",
    "fanoutqa_answer_parts",
    "fanoutqa_dev",
]


class QADataError(ValueError):
    """A QA source yielded no usable example, or a cached set is inconsistent."""


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question with its accepted answers.

    Attributes:
      id: Unique within its dataset.
      question: Non-empty question text.
      golden_answers: Non-empty tuple of non-empty alternative answers (a list given
        here is stored as a tuple).
      dataset: Name of the source, e.g. ``"hotpotqa"``, ``"embedded_wiki"``.
    """

    id: str
    question: str
    golden_answers: tuple[str, ...]
    dataset: str
    # The single-search questions a multi-search one is made of (the embedded pairs'
    # two), in the order their answers are joined; empty otherwise. Not in the jsonl.
    parts: tuple[QAExample, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.golden_answers, list):
            object.__setattr__(self, "golden_answers", tuple(self.golden_answers))
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"QAExample.id must be a non-empty str, got {self.id!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"QAExample {self.id}: question must be a non-empty str")
        if not isinstance(self.golden_answers, tuple) or not self.golden_answers:
            raise ValueError(f"QAExample {self.id}: golden_answers must be a non-empty tuple")
        for a in self.golden_answers:
            if not isinstance(a, str) or not a.strip():
                raise ValueError(f"QAExample {self.id}: bad golden answer {a!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"QAExample {self.id}: dataset must be a non-empty str")

    def to_json(self) -> dict[str, Any]:
        """The FlashRAG-style record written by :func:`write_qa_jsonl`."""
        return {
            "id": self.id,
            "question": self.question,
            "golden_answers": list(self.golden_answers),
            "dataset": self.dataset,
        }


# --------------------------------------------------------------------------- jsonl

# Keys accepted for the answers, in order of preference (FlashRAG first).
_ANSWER_KEYS = ("golden_answers", "answers", "answer")
# FlashRAG keeps ``<dataset>/<split>.jsonl``; for those stems the folder names the dataset.
_SPLIT_STEMS = frozenset({"train", "dev", "test", "val", "valid", "validation"})


@dataclasses.dataclass(frozen=True)
class QALoadReport:
    """What :func:`load_qa_jsonl` read.

    Attributes:
      path: The file.
      dataset: Dataset name given to the examples.
      lines_read: Lines looked at (fewer than the file's when ``limit`` stopped early).
      loaded: Examples returned.
      skipped: Count per reason for skipped lines: ``"empty"`` (blank line),
        ``"not_utf8"``, ``"bad_json"``, ``"not_object"``, ``"no_question"`` (missing,
        not a string or blank), ``"no_answers"`` (no answer key, or no non-blank
        answer), ``"bad_answers"`` (an answer that is not a string or number).
      skipped_lines: 1-based line numbers of the skipped lines (first 100).
      examples: The first skipped lines as ``"<file>:<line>: <reason> (<detail>)"``.
    """

    path: str
    dataset: str
    lines_read: int
    loaded: int
    skipped: Mapping[str, int]
    skipped_lines: tuple[int, ...]
    examples: tuple[str, ...] = ()

    @property
    def num_skipped(self) -> int:
        """Total skipped lines."""
        return sum(self.skipped.values())


def _default_dataset_name(path: Path) -> str:
    if path.stem.lower() in _SPLIT_STEMS and path.parent.name:
        return path.parent.name
    return path.stem


def _answer_strings(value: Any) -> tuple[str, ...]:
    """Answers from a string, a number or a list of them; blanks and repeats dropped."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        # bool is an int subclass, but True is no answer text.
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise BadLine("bad_answers")
        text = str(item).strip()
        if text and text not in out:
            out.append(text)
    if not out:
        raise BadLine("no_answers")
    return tuple(out)


def _parse_line(raw: bytes, line_no: int, dataset: str) -> QAExample:
    if not raw.strip():
        raise BadLine("empty")
    record = parse_json_line(raw, line_no)
    if not isinstance(record, dict):
        raise BadLine("not_object")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadLine("no_question")
    key = next((k for k in _ANSWER_KEYS if record.get(k) is not None), None)
    if key is None:
        raise BadLine("no_answers")
    answers = _answer_strings(record[key])
    raw_id = record.get("id")
    has_id = isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id)
    example_id = str(raw_id) if has_id else f"{dataset}-{line_no}"
    return QAExample(example_id, question.strip(), answers, dataset)


def load_qa_jsonl(
    path: str | os.PathLike[str], dataset_name: str | None = None, limit: int | None = None
) -> tuple[list[QAExample], QALoadReport]:
    """Read a FlashRAG-style QA jsonl file.

    Each line is a JSON object with ``question`` (string) and ``golden_answers`` (a
    list of strings or a single string; ``answers`` and ``answer`` are accepted
    instead, in that order of preference; numbers become strings). ``id`` is optional:
    without it the id is ``"<dataset>-<line>"`` (1-based line number). Malformed lines,
    and lines that are not UTF-8, are skipped: counted by reason in the report and
    announced in one :class:`~rlpt_jax.data.jsonl.SkippedDataWarning` with the first
    examples (file, line, reason), so a mostly broken file is never mistaken for a small
    dataset.

    Args:
      path: The jsonl file (UTF-8).
      dataset_name: Name stored in every example; default the file's stem, or the
        folder's name for FlashRAG's ``<dataset>/<split>.jsonl`` layout.
      limit: Stop after this many good examples (``None``: read everything).

    Returns:
      ``(examples, report)``.

    Raises:
      QADataError: No line yielded an example.
      ValueError: ``limit`` < 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    path = Path(path)
    dataset = dataset_name or _default_dataset_name(path)
    examples: list[QAExample] = []
    skips = SkipLog()
    skipped_lines: list[int] = []
    lines_read = 0
    for line_no, raw in numbered_lines(path):
        if limit is not None and len(examples) >= limit:
            break
        lines_read = line_no
        try:
            examples.append(_parse_line(raw, line_no, dataset))
        except BadLine as e:
            skips.add(e, path, line_no)
            if len(skipped_lines) < 100:
                skipped_lines.append(line_no)
    if not examples:
        raise QADataError(
            f"{path}: no usable QA example in {lines_read} lines (skipped: {skips.summary()}); "
            "each line needs a UTF-8 JSON object with 'question' and 'golden_answers'"
        )
    skips.warn(f"QA file {path} ({len(examples)} questions loaded from {lines_read} lines)")
    report = QALoadReport(
        str(path),
        dataset,
        lines_read,
        len(examples),
        dict(skips.counts),
        tuple(skipped_lines),
        tuple(skips.examples),
    )
    return examples, report


def write_qa_jsonl(examples: Iterable[QAExample], path: str | os.PathLike[str]) -> Path:
    """Write examples as FlashRAG jsonl (``id``, ``question``, ``golden_answers``,
    ``dataset``), UTF-8, replacing ``path`` atomically; parent folders are created.

    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- embedded

SPLITS = ("train", "dev", "test")
MASK = "___"
QUESTION_TEMPLATE = (
    'Which Wikipedia article begins with this sentence, where ___ replaces its title? "{sentence}"'
)
EMBEDDED_DATASET = "embedded_wiki"
DEFAULT_NUM = 2000
MIN_WORDS = 6  # words left in the masked sentence, the mask not counted
SEARCH_TOPK = 3  # the search tool shows the top 3 pages (AT2PO protocol)
# Only the start of an intro is segmented (pysbd is slow); an opening sentence that
# runs past it is rejected as "long_sentence".
_PREFIX_CHARS = 500
_SPLIT_EDGES = (0.8, 0.9)  # train < 0.8 <= dev < 0.9 <= test, by a hash of the title
_CACHE_VERSION = "embedded_qa-v1"
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)\s*$")


class RejectedArticle(ValueError):
    """An article gives no embedded question; ``reason`` says why (counted by builds)."""

    def __init__(self, reason: str, title: str):
        super().__init__(f"{title!r}: {reason}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class EmbeddedQASet:
    """A built embedded QA set.

    Attributes:
      splits: ``{"train": (...), "dev": (...), "test": (...)}`` in selection order.
      num: Questions requested (= the total across splits).
      seed: Seed of the article selection.
      rejected: Articles looked at and rejected, per reason (see
        :func:`embedded_question`, plus ``"not_retrieved"`` for the BM25 check).
      corpus_fingerprint: SHA-256 of the intros the set was built from.
    """

    splits: Mapping[str, tuple[QAExample, ...]]
    num: int
    seed: int
    rejected: Mapping[str, int]
    corpus_fingerprint: str


def _title_variants(title: str) -> list[str]:
    """The title, and without a trailing parenthetical (``"Canna (plant)"`` → ``"Canna"``)."""
    variants = [title]
    bare = _PARENTHETICAL.sub("", title).strip()
    if bare and bare != title:
        variants.append(bare)
    return variants


def _title_pattern(variants: Sequence[str]) -> re.Pattern[str]:
    # Whole words, any case, with an optional leading "the" and plural "s"/"es": the
    # intros say "The Holy Grail is ..." and "Proteins are ..." for "Holy Grail" and
    # "Protein (nutrient)". Longest variant first so the full title wins.
    alternatives = "|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:the\s+)?(?:{alternatives})(?:e?s)?(?!\w)", re.IGNORECASE)


def _first_sentence(text: str, segmenter: Any) -> str | None:
    prefix = text[:_PREFIX_CHARS]
    sentences = [s.strip() for s in segmenter.segment(prefix) if s.strip()]
    if not sentences:
        return None
    if len(sentences) == 1 and len(text) > _PREFIX_CHARS:
        return None  # the first sentence may continue past the prefix
    return sentences[0]


def _contains_phrase(haystack: str, needle: str) -> bool:
    """Whether normalised ``needle`` occurs as whole tokens in normalised ``haystack``."""
    n = normalize_answer(needle)
    return bool(n) and f" {n} " in f" {normalize_answer(haystack)} "


def _segmenter() -> Any:
    import pysbd  # deferred: only building the embedded set needs it

    return pysbd.Segmenter(language="en", clean=False)


def embedded_question(title: str, text: str, segmenter: Any | None = None) -> QAExample:
    """The embedded question for one Wikipedia intro (without the retrieval check).

    Recipe: the intro's first sentence (pysbd); every occurrence of the title, or of
    the title without a trailing parenthetical, is replaced by ``___`` (whole words,
    any case, with a preceding "the" and a plural "s"/"es" included); the question is
    :data:`QUESTION_TEMPLATE` around the masked sentence. Golden answers: the title,
    the title without its parenthetical, and each distinct masked surface form
    (``"Proteins"``), deduplicated after SQuAD normalisation. The id is
    ``"wiki-"`` + the first 12 hex digits of SHA-256(title). Other names of the subject
    ("also known as ...") stay in the sentence: they are clues, not the title.

    Raises:
      RejectedArticle: with ``reason`` one of ``"no_sentence"``, ``"long_sentence"``
        (runs past the segmented prefix), ``"title_not_in_sentence"``,
        ``"too_short"`` (fewer than :data:`MIN_WORDS` words besides the mask),
        ``"title_leaks"`` (an answer still occurs in the normalised question).
    """
    if not text.strip():
        raise RejectedArticle("no_sentence", title)
    sentence = _first_sentence(text, segmenter or _segmenter())
    if sentence is None:
        raise RejectedArticle("long_sentence", title)
    variants = _title_variants(title)
    pattern = _title_pattern(variants)
    surfaces = [m.group(0) for m in pattern.finditer(sentence)]
    if not surfaces:
        raise RejectedArticle("title_not_in_sentence", title)
    masked = " ".join(pattern.sub(MASK, sentence).split())
    if sum(1 for w in masked.split() if MASK not in w) < MIN_WORDS:
        raise RejectedArticle("too_short", title)
    golds: list[str] = []
    for candidate in [*variants, *surfaces]:
        if normalize_answer(candidate) not in {normalize_answer(g) for g in golds}:
            golds.append(candidate)
    question = QUESTION_TEMPLATE.format(sentence=masked)
    if any(_contains_phrase(question, g) for g in golds):
        raise RejectedArticle("title_leaks", title)
    example_id = "wiki-" + hashlib.sha256(title.encode("utf-8")).hexdigest()[:12]
    return QAExample(example_id, question, tuple(golds), EMBEDDED_DATASET)


def masked_sentence(example: QAExample) -> str:
    """The masked sentence inside an embedded question (the BM25 check's query, with
    the mask removed)."""
    return " ".join(_quoted_sentence(example).replace(MASK, " ").split())


def _quoted_sentence(example: QAExample) -> str:
    """The sentence an embedded question quotes, mask included."""
    prefix, _, rest = QUESTION_TEMPLATE.partition("{sentence}")
    if not example.question.startswith(prefix) or not example.question.endswith(rest):
        raise ValueError(f"{example.id} is not an embedded question: {example.question!r}")
    return example.question[len(prefix) : len(example.question) - len(rest)]


def _split_of(title: str) -> str:
    digest = hashlib.sha256(("embedded_qa-split\0" + title).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return SPLITS[0] if u < _SPLIT_EDGES[0] else SPLITS[1] if u < _SPLIT_EDGES[1] else SPLITS[2]


def _corpus_fingerprint(docs: Sequence[Mapping[str, str]]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d["title"].encode("utf-8", "replace") + b"\0")
        h.update(d["text"].encode("utf-8", "replace") + b"\0")
    return h.hexdigest()


def build_embedded_qa(
    num: int = DEFAULT_NUM,
    seed: int = 0,
    docs: Sequence[Mapping[str, str]] | None = None,
    search: Any | None = None,
    batch_size: int = 256,
) -> EmbeddedQASet:
    """Build ``num`` embedded questions from the Wikipedia intros, deterministically.

    Articles are visited in a ``random.Random(seed)`` shuffle of the title-sorted
    intros; each gets :func:`embedded_question`, then is kept only if BM25 over the
    intros ranks it in the top :data:`SEARCH_TOPK` for the masked sentence (so the
    search tool can find it), until ``num`` are kept. The split (80/10/10
    train/dev/test) is a hash of the title, independent of ``seed`` and ``num``, so
    an article never changes split between builds.

    Args:
      num: Questions to keep (all splits together).
      seed: Seed of the article order.
      docs: ``{"title", "text"}`` documents (default: the embedded intros).
      search: A :class:`rlpt_jax.envs.search.BM25Search` over ``docs`` (default: built
        here, a few seconds); pass one to share its index.
      batch_size: Queries per BM25 call.

    Raises:
      QADataError: The documents give fewer than ``num`` questions.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1, got {num}, {batch_size}")
    if docs is None:
        from rlpt_jax.assets import load_wiki_intros

        docs = load_wiki_intros()
    if search is None:
        from rlpt_jax.envs.search import BM25Search

        search = BM25Search(docs)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    segmenter = _segmenter()
    rejected: Counter[str] = Counter()
    kept: list[tuple[str, QAExample]] = []
    start = 0
    while len(kept) < num and start < len(order):
        batch: list[tuple[str, QAExample]] = []
        for i in order[start : start + batch_size]:
            title = docs[i]["title"]
            try:
                batch.append((title, embedded_question(title, docs[i]["text"], segmenter)))
            except RejectedArticle as e:
                rejected[e.reason] += 1
        start += batch_size
        results = search.search([masked_sentence(ex) for _, ex in batch], SEARCH_TOPK)
        for (title, ex), passages in zip(batch, results, strict=True):
            if len(kept) == num:
                break
            if title in {p.title for p in passages}:
                kept.append((title, ex))
            else:
                rejected["not_retrieved"] += 1
    if len(kept) < num:
        raise QADataError(
            f"only {len(kept)} embedded questions from {len(docs)} documents, {num} asked "
            f"(rejected: {dict(rejected)})"
        )
    by_split: dict[str, list[QAExample]] = {s: [] for s in SPLITS}
    for title, ex in kept:
        by_split[_split_of(title)].append(ex)
    return EmbeddedQASet(
        splits={s: tuple(v) for s, v in by_split.items()},
        num=num,
        seed=seed,
        rejected=dict(rejected),
        corpus_fingerprint=_corpus_fingerprint(docs),
    )


def _cache_folder(root: Path, num: int, seed: int, fingerprint: str) -> Path:
    # The corpus fingerprint is in the name, so new intros never reuse a stale set.
    return root / f"n{num}-seed{seed}-{fingerprint[:12]}"


def _write_cache(qa_set: EmbeddedQASet, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for split in SPLITS:
            write_qa_jsonl(qa_set.splits[split], tmp / f"{split}.jsonl")
        meta = {
            "num": qa_set.num,
            "seed": qa_set.seed,
            "counts": {s: len(qa_set.splits[s]) for s in SPLITS},
            "rejected": dict(qa_set.rejected),
            "corpus_fingerprint": qa_set.corpus_fingerprint,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        try:
            tmp.rename(folder)  # atomic: readers see a complete folder or none
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
            # another process finished the same build first; its files are identical
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def embedded_qa(
    split: str,
    num: int = DEFAULT_NUM,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
) -> list[QAExample]:
    """One split of the embedded QA set, built by :func:`build_embedded_qa` on first use.

    The set is cached as ``{split}.jsonl`` files plus ``meta.json`` (counts, rejection
    reasons, corpus fingerprint) under ``cache/n{num}-seed{seed}-{fingerprint}/``;
    ``cache`` defaults to ``cache_dir()/embedded_qa-v1``.

    Raises:
      ValueError: Unknown split.
      QADataError: The cached files disagree with their ``meta.json``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    from rlpt_jax.assets import cache_dir, load_wiki_intros

    root = Path(cache) if cache is not None else cache_dir() / _CACHE_VERSION
    docs = load_wiki_intros()
    folder = _cache_folder(root, num, seed, _corpus_fingerprint(docs))
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        _write_cache(build_embedded_qa(num=num, seed=seed, docs=docs), folder)
    expected = json.loads(meta_path.read_text(encoding="utf-8"))["counts"][split]
    if expected == 0:
        return []
    examples, report = load_qa_jsonl(folder / f"{split}.jsonl", dataset_name=EMBEDDED_DATASET)
    if report.num_skipped or len(examples) != expected:
        raise QADataError(
            f"{folder}: {split}.jsonl has {len(examples)} examples and {report.num_skipped} "
            f"bad lines, meta.json says {expected}; delete the folder to rebuild"
        )
    return examples


# --------------------------------------------------------------------------- pairs

PAIRS_DATASET = "embedded_pairs"
PAIR_TEMPLATE = (
    "Which two Wikipedia articles begin with these sentences, where ___ replaces each "
    'title? Answer "<first title> and <second title>". 1: "{first}" 2: "{second}"'
)
MAX_PAIR_ANSWERS = 16  # accepted spellings of a pair (products of each part's answers)


def pair_question(first: QAExample, second: QAExample) -> QAExample:
    """One question asking for both articles of two embedded questions.

    Golden answers: ``"<a> and <b>"`` for the answers ``a`` of ``first`` and ``b`` of
    ``second`` (their first answers first, at most :data:`MAX_PAIR_ANSWERS`). The id is
    ``"pair-"`` + both ids' hex digits; ``parts`` holds the two questions.
    """
    sentences = [_quoted_sentence(q) for q in (first, second)]
    golds = [f"{a} and {b}" for a in first.golden_answers for b in second.golden_answers]
    return QAExample(
        id=f"pair-{first.id.removeprefix('wiki-')}-{second.id.removeprefix('wiki-')}",
        question=PAIR_TEMPLATE.format(first=sentences[0], second=sentences[1]),
        golden_answers=tuple(golds[:MAX_PAIR_ANSWERS]),
        dataset=PAIRS_DATASET,
        parts=(first, second),
    )


def embedded_pairs(split: str, seed: int = 0) -> list[QAExample]:
    """The embedded questions of ``split`` in pairs (:func:`pair_question`).

    The split's questions are shuffled with ``seed`` and paired in that order, each
    used at most once, so a split of ``n`` questions gives about ``n // 2`` pairs drawn
    from that split only: the test pairs share no article with the train ones. A
    question whose answer the other's sentence would give away (``"___ is a river in
    France"`` next to the article ``France``) is dropped instead.
    """
    questions = embedded_qa(split)
    order = random.Random(f"pairs-{split}-{seed}").sample(questions, len(questions))
    pairs: list[QAExample] = []
    pending: QAExample | None = None
    for q in order:
        if pending is None:
            pending = q
            continue
        pair = pair_question(pending, q)
        if not any(
            _contains_phrase(pair.question, g) for g in (*pending.golden_answers, *q.golden_answers)
        ):
            pairs.append(pair)
            pending = None
    return pairs


# --------------------------------------------------------------------------- FanOutQA

FANOUTQA_DATASET = "fanoutqa"


def _fanout_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def fanoutqa_answer_text(answer: Any) -> str:
    """A FanOutQA answer as one string, by the rule of FanOutQA's own string metrics
    (``fanoutqa.eval.utils.str_answer``): a list is its items one per line, a dict is
    ``"key - value"`` lines in file order, ``True``/``False`` are ``"yes"``/``"no"``,
    numbers are ``str(x)`` (``61.6``, ``1604898``). Nested values follow the same rule.
    """
    if isinstance(answer, list):
        return "\n".join(fanoutqa_answer_text(a) for a in answer)
    if isinstance(answer, dict):
        return "\n".join(f"{k} - {fanoutqa_answer_text(v)}" for k, v in answer.items())
    return _fanout_scalar(answer)


def fanoutqa_answer_parts(answer: Any) -> tuple[str, ...]:
    """The strings FanOutQA's loose accuracy looks for in a response
    (``fanoutqa.eval.string.answer_in_text``): a scalar itself, every item of a list,
    every key then every value of a dict (recursively), booleans as ``"yes"``/``"no"``.
    Useful for a partial-credit metric; :func:`fanoutqa_dev` keeps only the joined text.
    """
    if isinstance(answer, list):
        return tuple(p for a in answer for p in fanoutqa_answer_parts(a))
    if isinstance(answer, dict):
        return tuple(
            p for a in [*answer.keys(), *answer.values()] for p in fanoutqa_answer_parts(a)
        )
    return (_fanout_scalar(answer),)


def fanoutqa_dev(path: str | os.PathLike[str] | None = None) -> list[QAExample]:
    """The FanOutQA dev questions (310 in ``fanoutqa==1.1.1``), dataset ``"fanoutqa"``.

    FanOutQA answers are strings, numbers, booleans, lists (every item is needed) or
    dicts (one value per entity, e.g. ``{"Pat Burrell": "Right", ...}``). A list or dict
    is a conjunction, not a set of alternatives, so each question gets exactly one
    golden answer: :func:`fanoutqa_answer_text` (a one-item list becomes that item).
    Exact match is therefore only realistic for scalar answers; use
    :func:`fanoutqa_answer_parts` on the raw answer for FanOutQA's loose accuracy.
    The ids are FanOutQA's. The decompositions are not kept.

    Args:
      path: The dev JSON file (default: the one inside the installed ``fanoutqa``
        package, read without importing the package).

    Raises:
      QADataError: A question without text or with an empty answer.
    """
    if path is None:
        from rlpt_jax.assets import package_dir

        path = package_dir("fanoutqa", "fanoutqa") / "data" / "fanout-final-dev.json"
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    examples = []
    for i, record in enumerate(records):
        question = str(record.get("question") or "").strip()
        answer = fanoutqa_answer_text(record.get("answer")).strip()
        if not question or not answer:
            raise QADataError(f"{path}: FanOutQA question {i} ({record.get('id')}) is incomplete")
        examples.append(
            QAExample(
                str(record.get("id") or f"fanoutqa-{i}"), question, (answer,), FANOUTQA_DATASET
            )
        )
    return examples
