"""Search backends for the search-QA environment, and formatting of their results.

Two backends implement :class:`SearchBackend`:

* :class:`BM25Search` — lexical BM25 (``bm25s``) over any list of ``{"title", "text"}``
  documents, by default the embedded Wikipedia intros; runs offline on a laptop.
* :class:`HttpRetriever` — a client for a Search-R1-compatible retrieval server (the
  paper serves an e5-base-v2 dense index over the 2018 Wikipedia dump this way).

Results reach the model as ``" <result>\\nPage 1: …\\nPage 2: …\\n</result>"`` with the
top 3 passages each cut to 1000 characters (:func:`format_results`, both configurable).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rlpt_jax import net

__all__ = [
    "Passage",
    "SearchBackend",
    "RetrievalError",
    "format_results",
    "BM25Config",
    "BM25Search",
    "HttpRetrieverConfig",
    "HttpRetriever",
]


@dataclass(frozen=True)
class Passage:
    """One retrieved passage."""

    title: str
    text: str
    score: float


@runtime_checkable
class SearchBackend(Protocol):
    """Anything that answers a batch of queries with ranked passages."""

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """One ranked list (best first, at most ``topk``) per query, in query order."""
        ...


class RetrievalError(RuntimeError):
    """A backend failed to answer; ``attempts`` says how many tries were made."""

    def __init__(self, message: str, attempts: int = 1):
        super().__init__(message)
        self.attempts = attempts


def format_results(passages: Sequence[Passage], topk: int = 3, max_chars: int = 1000) -> str:
    """Tool output inserted after ``</search>``: the top ``topk`` passages, numbered.

    Each page is ``"{title}\\n{text}"`` cut to ``max_chars`` characters. The leading
    space keeps the tag from fusing with the preceding ``</search>`` token.
    """
    if topk < 1 or max_chars < 1:
        raise ValueError(f"topk and max_chars must be >= 1, got {topk}, {max_chars}")
    pages = [
        f"Page {i}: {(p.title + chr(10) + p.text)[:max_chars]}\n"
        for i, p in enumerate(passages[:topk], start=1)
    ]
    body = "".join(pages) if pages else "No results found.\n"
    return f" <result>\n{body}</result>"


# --------------------------------------------------------------------------- BM25


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters (``bm25s`` defaults, Lucene variant)."""

    k1: float = 1.5
    b: float = 0.75
    stopwords: str = "en"

    def __post_init__(self):
        if self.k1 <= 0:
            raise ValueError(f"BM25Config.k1 must be > 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"BM25Config.b must be in [0, 1], got {self.b}")


class BM25Search:
    """BM25 over ``docs`` (default: the embedded Wikipedia intros).

    The index covers ``title + "\\n" + text`` and is built once per instance. With
    ``cache_dir`` it is saved there and reloaded next time, guarded by a fingerprint of
    the documents and parameters, so a stale index is rebuilt rather than misused.
    Passages with score 0 (no query term in the document) are not returned.
    """

    def __init__(
        self,
        docs: Sequence[dict[str, str]] | None = None,
        config: BM25Config = BM25Config(),
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        import bm25s  # deferred: only this backend needs it

        if docs is None:
            from rlpt_jax.assets import load_wiki_intros

            docs = load_wiki_intros()
        if not docs:
            raise ValueError("BM25Search needs at least one document")
        for i, d in enumerate(docs):
            if not isinstance(d.get("title"), str) or not isinstance(d.get("text"), str):
                raise ValueError(f"document {i} needs str 'title' and 'text', got {d!r:.200}")
        self._bm25s = bm25s
        self.config = config
        self.docs = [{"title": d["title"], "text": d["text"]} for d in docs]
        self.fingerprint = self._fingerprint()
        self.loaded_from_cache = False
        self._retriever = self._load_or_build(None if cache_dir is None else Path(cache_dir))

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.config.k1, self.config.b, self.config.stopwords]).encode())
        for d in self.docs:
            h.update(d["title"].encode("utf-8", "replace") + b"\0")
            h.update(d["text"].encode("utf-8", "replace") + b"\0")
        return h.hexdigest()

    def _tokenize(self, texts: list[str]):
        return self._bm25s.tokenize(texts, stopwords=self.config.stopwords, show_progress=False)

    def _load_or_build(self, cache_dir: Path | None):
        stamp = None if cache_dir is None else cache_dir / "fingerprint.txt"
        if stamp is not None and stamp.is_file() and stamp.read_text() == self.fingerprint:
            self.loaded_from_cache = True
            return self._bm25s.BM25.load(str(cache_dir), show_progress=False)
        retriever = self._bm25s.BM25(k1=self.config.k1, b=self.config.b)
        corpus = [d["title"] + "\n" + d["text"] for d in self.docs]
        retriever.index(self._tokenize(corpus), show_progress=False)
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            retriever.save(str(cache_dir), show_progress=False)
            stamp.write_text(self.fingerprint)  # last, so a half-written cache is not used
        return retriever

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """Top ``topk`` passages per query (fewer when fewer documents match)."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if not queries:
            return []
        k = min(topk, len(self.docs))
        ids, scores = self._retriever.retrieve(
            self._tokenize([str(q) for q in queries]), k=k, show_progress=False, n_threads=1
        )
        out = []
        for row_ids, row_scores in zip(ids, scores):
            out.append(
                [
                    Passage(self.docs[int(i)]["title"], self.docs[int(i)]["text"], float(s))
                    for i, s in zip(row_ids, row_scores)
                    if s > 0
                ]
            )
        return out


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpRetrieverConfig:
    """Client settings for a Search-R1-compatible ``POST {url}/retrieve`` server.

    ``retries`` is the number of retries after the first attempt, so a dead server is
    tried ``retries + 1`` times, waiting ``backoff_s * backoff_factor**i`` before retry i.
    ``timeout_s`` bounds each socket operation and ``deadline_s`` a whole attempt,
    however slowly the server sends (``None``: twice ``timeout_s``). An answer over
    ``max_response_bytes`` fails (default 16 MiB: a batch of a few hundred queries with
    top-3 passages is a few MB).
    """

    url: str
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    backoff_factor: float = 2.0
    deadline_s: float | None = None
    max_response_bytes: int = 16 << 20

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"HttpRetrieverConfig.url must be http(s)://…, got {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"HttpRetrieverConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"HttpRetrieverConfig.retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.backoff_factor < 1:
            raise ValueError(
                "HttpRetrieverConfig needs backoff_s >= 0 and backoff_factor >= 1, got "
                f"{self.backoff_s}, {self.backoff_factor}"
            )
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(
                f"HttpRetrieverConfig.deadline_s must be > 0 (or None), got {self.deadline_s}"
            )
        if self.max_response_bytes < 1:
            raise ValueError(
                "HttpRetrieverConfig.max_response_bytes must be >= 1, got "
                f"{self.max_response_bytes}"
            )

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/retrieve"

    @property
    def request_deadline_s(self) -> float:
        """The deadline of one attempt: ``deadline_s``, or twice ``timeout_s``."""
        return 2 * self.timeout_s if self.deadline_s is None else self.deadline_s


class HttpRetriever:
    """Search-R1 retrieval-server client (stdlib, through :func:`rlpt_jax.net.post_json`:
    a deadline, a size cap, bounded JSON, no redirects).

    Request: ``{"queries": [...], "topk": k, "return_scores": true}``. Response:
    ``{"result": [[{"document": {"contents": "\\"Title\\"\\ntext"}, "score": s}, …], …]}``.
    Connection errors, timeouts, the deadline and the transient statuses
    (:data:`rlpt_jax.net.TRANSIENT_STATUS`: 408/425/429/500/502/503/504) are retried with
    exponential backoff; a redirect, another 4xx or a malformed, oversized or too deeply
    nested response fails at once. After the last try a :class:`RetrievalError` is
    raised. ``attempts`` counts every HTTP attempt made.
    """

    def __init__(self, config: HttpRetrieverConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep
        self.attempts = 0

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        """Top ``topk`` passages per query from the server."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if not queries:
            return []
        payload = {"queries": [str(q) for q in queries], "topk": topk, "return_scores": True}
        return _parse_response(self._post(payload), len(queries), topk)

    def probe(self) -> None:
        """One tiny query, so that a dead or wrong retriever URL stops the run at
        start-up instead of scoring every search leaf as a tool error."""
        try:
            self.search(["probe"], topk=1)
        except RetrievalError as e:
            raise RetrievalError(
                f"retriever {self.config.endpoint} did not answer the start-up probe: {e}; "
                "start the server or fix search.url",
                attempts=e.attempts,
            ) from e

    def _post(self, payload: dict[str, Any]) -> Any:
        cfg = self.config
        url = cfg.endpoint
        last = "no attempt made"
        for attempt in range(cfg.retries + 1):
            if attempt:
                self._sleep(cfg.backoff_s * cfg.backoff_factor ** (attempt - 1))
            self.attempts += 1
            try:
                return net.post_json(
                    url,
                    payload,
                    timeout_s=cfg.timeout_s,
                    deadline_s=cfg.request_deadline_s,
                    max_bytes=cfg.max_response_bytes,
                )
            except net.HTTPFailure as e:
                last = f"{e.reason} from {url}"
                if not e.retryable:
                    raise RetrievalError(last, attempts=attempt + 1) from e
        raise RetrievalError(
            f"retrieval failed after {cfg.retries + 1} attempts: {last}", attempts=cfg.retries + 1
        )


def _parse_response(answer: Any, n_queries: int, topk: int) -> list[list[Passage]]:
    """Passages from a Search-R1 server's parsed JSON; :class:`RetrievalError` if
    malformed."""
    try:
        result = answer["result"]
        if not isinstance(result, list) or len(result) != n_queries:
            raise ValueError(f"expected {n_queries} result lists, got {type(result).__name__}")
        out = []
        for hits in result:
            passages = []
            for hit in hits[:topk]:
                title, text = _split_contents(str(hit["document"]["contents"]))
                passages.append(Passage(title, text, float(hit.get("score", 0.0))))
            out.append(passages)
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RetrievalError(f"malformed retrieval response: {e!r}") from e


def _split_contents(contents: str) -> tuple[str, str]:
    """``"\\"Title\\"\\ntext"`` → ``("Title", "text")`` (title line unquoted)."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text
