"""Search backends: BM25 over the embedded Wikipedia and a tiny corpus; HTTP client
against loopback servers (good, slow, dead); result formatting."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlpt_jax.envs.search import (
    BM25Search,
    HttpRetriever,
    HttpRetrieverConfig,
    Passage,
    RetrievalError,
    SearchBackend,
    format_results,
)

TINY = [
    {"title": "Apple", "text": "The apple is a round fruit grown in orchards."},
    {"title": "Banana", "text": "A banana is an elongated yellow tropical fruit."},
    {"title": "Volcano", "text": "A volcano erupts lava, ash and gases from a magma chamber."},
    {"title": "Lighthouse", "text": "A lighthouse is a tower with a lamp guiding ships at night."},
]


@pytest.fixture(scope="module")
def wiki_bm25():
    return BM25Search()


@pytest.mark.parametrize(
    "query, title",
    [
        ("Mahalangur Himal sub-range Nepalese survey", "Mount Everest"),
        ("water bears moss piglets eight-legged micro-animals Goeze", "Tardigrade"),
        ("Giraffidae okapi tallest terrestrial ruminants", "Giraffe"),
    ],
)
def test_bm25_wiki_top1(wiki_bm25, query, title):
    (hits,) = wiki_bm25.search([query], topk=3)
    assert hits[0].title == title
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score


def test_bm25_tiny_corpus_batched():
    bm25 = BM25Search(TINY)
    assert isinstance(bm25, SearchBackend)
    hits = bm25.search(["magma lava", "tower ships lamp", "yellow tropical", "zzz qqq"], topk=3)
    assert [h[0].title for h in hits[:3]] == ["Volcano", "Lighthouse", "Banana"]
    assert hits[3] == []  # no term matches: nothing returned rather than noise
    # "fruit" is in two documents; topk larger than the corpus is fine.
    titles = {p.title for p in bm25.search(["fruit"], topk=10)[0]}
    assert titles == {"Apple", "Banana"}


def test_bm25_cache_roundtrip(tmp_path):
    first = BM25Search(TINY, cache_dir=tmp_path / "idx")
    assert not first.loaded_from_cache
    second = BM25Search(TINY, cache_dir=tmp_path / "idx")
    assert second.loaded_from_cache
    assert second.search(["magma"], 1) == first.search(["magma"], 1)
    changed = BM25Search(TINY[:3], cache_dir=tmp_path / "idx")
    assert not changed.loaded_from_cache  # different docs → rebuilt, not reused


def test_bm25_rejects_bad_docs():
    with pytest.raises(ValueError, match="at least one"):
        BM25Search([])
    with pytest.raises(ValueError, match="document 0"):
        BM25Search([{"title": "x"}])


def test_format_results_cuts_and_numbers():
    passages = [Passage(f"T{i}", "x" * 2000, 1.0) for i in range(5)]
    text = format_results(passages, topk=3, max_chars=10)
    assert (
        text
        == " <result>\nPage 1: T0\nxxxxxxx\nPage 2: T1\nxxxxxxx\nPage 3: T2\nxxxxxxx\n</result>"
    )
    assert format_results([]) == " <result>\nNo results found.\n</result>"
    default = format_results(passages)
    assert default.count("Page ") == 3 and "Page 4" not in default
    assert default.count("x") == 3 * (1000 - 3)  # "T0\n" takes 3 of the 1000 characters


# --------------------------------------------------------------------------- HTTP


class _Server:
    """Loopback Search-R1-style server; ``delay_s`` makes every request slow, ``mode``
    ``"short"`` drops the last result list and ``"error"`` answers HTTP 500."""

    def __init__(self, delay_s: float = 0.0, mode: str = "ok"):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                if delay_s:
                    time.sleep(delay_s)
                result = [
                    [
                        {
                            "document": {"contents": f'"Doc {i} for {q}"\nbody {i}'},
                            "score": 1.0 / (i + 1),
                        }
                        for i in range(body["topk"])
                    ]
                    for q in body["queries"]
                ]
                if mode == "error":
                    self.send_error(500)
                    return
                if mode == "short":
                    result = result[:-1]
                data = json.dumps({"result": result}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_http_correct_results():
    with _Server() as server:
        client = HttpRetriever(HttpRetrieverConfig(url=server.url + "/"))
        hits = client.search(["alpha", "beta"], topk=2)
    assert server.requests == [
        {
            "path": "/retrieve",
            "body": {"queries": ["alpha", "beta"], "topk": 2, "return_scores": True},
        }
    ]
    assert hits == [
        [Passage("Doc 0 for alpha", "body 0", 1.0), Passage("Doc 1 for alpha", "body 1", 0.5)],
        [Passage("Doc 0 for beta", "body 0", 1.0), Passage("Doc 1 for beta", "body 1", 0.5)],
    ]
    assert client.attempts == 1


def test_http_timeout_retries_then_fails():
    sleeps: list[float] = []
    with _Server(delay_s=1.0) as server:
        cfg = HttpRetrieverConfig(url=server.url, timeout_s=0.2, retries=1, backoff_s=0.01)
        client = HttpRetriever(cfg, sleep=sleeps.append)
        start = time.monotonic()
        with pytest.raises(RetrievalError, match="after 2 attempts") as info:
            client.search(["slow"], topk=1)
        elapsed = time.monotonic() - start
        for _ in range(100):  # the server thread may log the 2nd request a moment late
            if len(server.requests) == 2:
                break
            time.sleep(0.01)
    assert info.value.attempts == 2 and client.attempts == 2
    assert len(server.requests) == 2
    assert sleeps == [0.01]
    assert elapsed < 1.5  # gave up at the client timeout, did not wait for the server


def test_http_dead_server_exponential_backoff():
    sleeps: list[float] = []
    cfg = HttpRetrieverConfig(url=dead_url(), timeout_s=1.0, retries=3, backoff_s=0.1)
    client = HttpRetriever(cfg, sleep=sleeps.append)
    with pytest.raises(RetrievalError) as info:
        client.search(["q"], topk=3)
    assert info.value.attempts == 4 and client.attempts == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_http_malformed_response_fails_without_retry():
    with _Server(mode="short") as server:
        client = HttpRetriever(HttpRetrieverConfig(url=server.url, retries=3))
        with pytest.raises(RetrievalError, match="expected 2 result lists") as info:
            client.search(["a", "b"], topk=1)
    assert info.value.attempts == 1 and len(server.requests) == 1
    assert client.search([], topk=1) == []


def test_http_server_error_is_retried():
    sleeps: list[float] = []
    with _Server(mode="error") as server:
        cfg = HttpRetrieverConfig(url=server.url, retries=2, backoff_s=0.0)
        client = HttpRetriever(cfg, sleep=sleeps.append)
        with pytest.raises(RetrievalError, match="HTTP 500"):
            client.search(["a"], topk=1)
    assert len(server.requests) == 3 and client.attempts == 3


def test_http_config_validation():
    with pytest.raises(ValueError, match="url"):
        HttpRetrieverConfig(url="localhost:8000")
    with pytest.raises(ValueError, match="retries"):
        HttpRetrieverConfig(url="http://x", retries=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        HttpRetrieverConfig(url="http://x", timeout_s=0)
    with pytest.raises(ValueError, match="deadline_s"):
        HttpRetrieverConfig(url="http://x", deadline_s=-1.0)
    with pytest.raises(ValueError, match="max_response_bytes"):
        HttpRetrieverConfig(url="http://x", max_response_bytes=0)
    assert HttpRetrieverConfig(url="http://x", timeout_s=3.0).request_deadline_s == 6.0
