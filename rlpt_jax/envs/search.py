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
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

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
    """

    url: str
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    backoff_factor: float = 2.0

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


class HttpRetriever:
    """Search-R1 retrieval-server client (stdlib ``urllib``, no extra dependency).

    Request: ``{"queries": [...], "topk": k, "return_scores": true}``. Response:
    ``{"result": [[{"document": {"contents": "\\"Title\\"\\ntext"}, "score": s}, …], …]}``.
    Connection errors, timeouts and HTTP 5xx/429 are retried with exponential backoff;
    a 4xx or a malformed response fails at once. After the last try a
    :class:`RetrievalError` is raised. ``attempts`` counts every HTTP attempt made.
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
        payload = json.dumps(
            {"queries": [str(q) for q in queries], "topk": topk, "return_scores": True}
        ).encode("utf-8")
        body = self._post(payload)
        return _parse_response(body, len(queries), topk)

    def _post(self, payload: bytes) -> bytes:
        cfg = self.config
        url = cfg.url.rstrip("/") + "/retrieve"
        last = "no attempt made"
        for attempt in range(cfg.retries + 1):
            if attempt:
                self._sleep(cfg.backoff_s * cfg.backoff_factor ** (attempt - 1))
            self.attempts += 1
            request = urllib.request.Request(
                url, data=payload, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} from {url}"
                if e.code < 500 and e.code != 429:
                    raise RetrievalError(last, attempts=attempt + 1) from e
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
                last = f"{type(e).__name__} from {url}: {e}"
        raise RetrievalError(
            f"retrieval failed after {cfg.retries + 1} attempts: {last}", attempts=cfg.retries + 1
        )


def _parse_response(body: bytes, n_queries: int, topk: int) -> list[list[Passage]]:
    """Passages from a Search-R1 server response; :class:`RetrievalError` if malformed."""
    try:
        result = json.loads(body.decode("utf-8"))["result"]
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
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise RetrievalError(f"malformed retrieval response: {e}") from e


def _split_contents(contents: str) -> tuple[str, str]:
    """``"\\"Title\\"\\ntext"`` → ``("Title", "text")`` (title line unquoted)."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text
