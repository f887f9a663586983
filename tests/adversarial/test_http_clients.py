"""The judge and retriever HTTP clients against servers that misbehave on purpose.

Each server is a real socket on 127.0.0.1 that answers with hand-written bytes, so it
can do what no well-behaved framework would: drip a byte at a time, send 50 MB,
redirect to another origin, answer 200 with HTML or with JSON nested 100,000 deep.
Every case was a defect of the urllib clients (issue 21): a hang past the timeout, a
whole body read into memory, a bearer token sent to another origin, a garbage answer
rewarded 0 instead of counted as a failure, a ``RecursionError`` that killed the run.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from rlpt_jax.envs.search import HttpRetriever, HttpRetrieverConfig, RetrievalError
from rlpt_jax.rewards.judges import HttpConfig, HttpJudge, JudgeConfig, JudgeUnavailableError

REFS = ("The cat sat on the mat.", "Then it slept.")
MB = 1 << 20
TOKEN = "sekrit-token-123"


class Request:
    """What the client sent: request line, headers (lower-cased names) and body."""

    def __init__(self, line: str, headers: dict[str, str], body: bytes):
        self.method, self.path = line.split(" ")[:2]
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class RawServer:
    """A loopback server whose ``respond(request, sock)`` writes raw bytes, one thread
    per connection; ``requests`` records every request it read."""

    def __init__(self, respond: Callable[[Request, socket.socket], None]):
        self.respond = respond
        self.requests: list[Request] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        with conn:
            try:
                request = _read_request(conn)
                self.requests.append(request)
                self.respond(request, conn)
            except OSError:
                pass  # the client gave up, as it should

    def close(self):
        self.stop.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("client closed before the headers ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += conn.recv(65536)
    return Request(line, headers, body)


@pytest.fixture
def serve():
    """``serve(respond)`` starts a :class:`RawServer`; all are closed after the test."""
    servers = []

    def start(respond):
        servers.append(RawServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def head(status: str = "200 OK", length: int | None = None, extra: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def reply(payload) -> Callable[[Request, socket.socket], None]:
    """A responder that answers 200 with ``payload`` (bytes as is, else as JSON)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda request, conn: conn.sendall(head(length=len(body)) + body)


def chat(content) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def retrieval(queries: int = 1) -> dict:
    hit = {"document": {"contents": '"Title"\ntext'}, "score": 1.0}
    return {"result": [[hit]] * queries}


def judge_for(url: str, **http_fields) -> HttpJudge:
    fields = dict(model="m", timeout_s=1.0, max_retries=0, backoff_s=0.0, max_workers=2)
    fields.update(http_fields)
    return HttpJudge(JudgeConfig(kind="http", http=HttpConfig(base_url=url, **fields)))


def retriever_for(url: str, **fields) -> HttpRetriever:
    fields = dict(dict(timeout_s=1.0, retries=0, backoff_s=0.0), **fields)
    return HttpRetriever(HttpRetrieverConfig(url=url, **fields), sleep=lambda s: None)


def drip(prefix: bytes, every_s: float = 0.2, for_s: float = 4.0):
    """Send ``prefix`` then one byte every ``every_s`` for ``for_s`` seconds: each byte
    arrives well within a 1 s socket timeout, so only an overall deadline ends it."""

    def respond(request, conn):
        conn.sendall(prefix)
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            time.sleep(every_s)
            conn.sendall(b" ")

    return respond


# --- 1. an overall deadline ------------------------------------------------------------

DRIPS = {
    "body": head(length=10_000) + b'{"choices": ',
    "headers": b"HTTP/1.1 200 OK\r\nX-Slow:",
}


@pytest.mark.parametrize("where", DRIPS)
def test_judge_deadline_ends_a_dripping_server(serve, where):
    """The default deadline is twice the socket timeout: 1.5 s here, the drip lasts 4 s."""
    server = serve(drip(DRIPS[where]))
    judge = judge_for(server.url, timeout_s=0.75)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match="deadline"):
        judge.score([("A cat sat.", REFS)])
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("where", DRIPS)
def test_retriever_deadline_ends_a_dripping_server(serve, where):
    server = serve(drip(DRIPS[where]))
    client = retriever_for(server.url, timeout_s=0.75)
    start = time.monotonic()
    with pytest.raises(RetrievalError, match="deadline"):
        client.search(["q"], topk=1)
    assert time.monotonic() - start < 2.5


def test_explicit_deadline_is_kept(serve):
    server = serve(drip(DRIPS["body"], every_s=0.1))
    judge = judge_for(server.url, timeout_s=1.0, deadline_s=0.5)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match="deadline of 0.5 s"):
        judge.score([("A cat sat.", REFS)])
    assert time.monotonic() - start < 1.5


# --- 2. a body-size cap ----------------------------------------------------------------


def huge(valid: bytes, size: int = 50 * MB) -> bytes:
    """A valid JSON document padded with whitespace to ``size`` bytes."""
    return valid + b" " * (size - len(valid))


@pytest.fixture(scope="module")
def huge_chat():
    return huge(json.dumps(chat("Score: 1")).encode())


@pytest.fixture(scope="module")
def huge_retrieval():
    return huge(json.dumps(retrieval()).encode())


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_judge_refuses_a_50mb_body(serve, huge_chat, declared):
    def respond(request, conn):
        conn.sendall(head(length=len(huge_chat) if declared else None) + huge_chat)

    judge = judge_for(serve(respond).url)
    with pytest.raises(JudgeUnavailableError, match="larger than"):
        judge.score([("A cat sat.", REFS)])
    assert judge.counters.failed_requests == 1 and judge.counters.positive == 0


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_retriever_refuses_a_50mb_body(serve, huge_retrieval, declared):
    def respond(request, conn):
        conn.sendall(head(length=len(huge_retrieval) if declared else None) + huge_retrieval)

    client = retriever_for(serve(respond).url)
    with pytest.raises(RetrievalError, match="larger than"):
        client.search(["q"], topk=1)


def test_post_json_reads_at_most_the_cap(serve):
    """The cap bounds what is read, not only what is parsed: a body sent until close is
    cut off one chunk past the cap."""
    from rlpt_jax import net

    sent = []

    def respond(request, conn):
        conn.sendall(head())
        for _ in range(50):
            conn.sendall(b" " * MB)
            sent.append(MB)

    server = serve(respond)
    with pytest.raises(net.HTTPFailure, match="larger than 2097152 bytes"):
        net.post_json(server.url, {}, timeout_s=2.0, deadline_s=4.0, max_bytes=2 * MB)
    time.sleep(0.2)  # let the server notice the closed socket
    assert sum(sent) < 50 * MB


# --- 3. no redirects: the token stays at its origin ------------------------------------


def test_judge_does_not_follow_a_cross_origin_redirect(serve, monkeypatch):
    monkeypatch.setenv("JUDGE_TOKEN", TOKEN)
    other = serve(reply(chat("Score: 1")))  # would take the token and give a verdict
    location = other.url + "/v1/chat/completions"

    def redirect(request, conn):
        conn.sendall(head("302 Found", length=0, extra=f"Location: {location}\r\n"))

    judge_server = serve(redirect)
    judge = judge_for(judge_server.url, api_key_env="JUDGE_TOKEN")
    with pytest.raises(JudgeUnavailableError, match="redirect") as info:
        judge.score([("A cat sat.", REFS)])
    assert location in str(info.value)
    assert judge_server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert not [r for r in other.requests if "authorization" in r.headers]
    assert other.requests == []
    assert judge.counters.positive == 0 and judge.counters.failed_requests == 1


def test_retriever_does_not_follow_a_redirect(serve):
    other = serve(reply(retrieval()))

    def redirect(request, conn):
        conn.sendall(head("307 Temporary Redirect", length=0, extra=f"Location: {other.url}\r\n"))

    client = retriever_for(serve(redirect).url, retries=2)
    with pytest.raises(RetrievalError, match="redirect") as info:
        client.search(["q"], topk=1)
    assert other.url in str(info.value)
    assert other.requests == [] and client.attempts == 1  # a redirect is not retried


# --- 4. garbage with status 200 is a failed request, not a zero reward -----------------

GARBAGE = {
    "html": b"<html><body>502 Bad Gateway</body></html>",
    "wrong-schema": json.dumps({"result": "Score: 1"}).encode(),
    "no-choices": json.dumps({"choices": []}).encode(),
    "content-null": json.dumps(chat(None)).encode(),
    "content-not-text": json.dumps(chat(["Score: 1"])).encode(),
}


@pytest.mark.parametrize("name", GARBAGE)
def test_judge_garbage_200_is_a_failure(serve, name):
    judge = judge_for(serve(reply(GARBAGE[name])).url)
    with pytest.raises(JudgeUnavailableError, match="1/1 requests failed"):
        judge.score([("A cat sat.", REFS)])
    c = judge.counters
    assert (c.failed_requests, c.unparseable, c.parsed) == (1, 0, 0)


def test_judge_garbage_fraction_is_tolerated_like_an_outage(serve):
    """One garbage reply in three is below max_failure_fraction: the batch is scored,
    the garbage item counted as failed (not unparseable) and given unparseable_reward."""
    answers = iter([chat("Score: 1"), GARBAGE["html"], chat("Score: 1")])
    lock = threading.Lock()

    def respond(request, conn):
        with lock:
            payload = next(answers)
        reply(payload)(request, conn)

    judge = judge_for(serve(respond).url, max_workers=1, max_failure_fraction=0.5)
    results = judge.score([("A cat sat.", REFS)] * 3)
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]
    assert "not JSON" in results[1].raw
    assert (judge.counters.failed_requests, judge.counters.unparseable) == (1, 0)


# --- 5. bounded JSON: nesting depth ----------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_judge_survives_json_nested_100000_deep(serve):
    judge = judge_for(serve(reply(DEEP)).url)
    with pytest.raises(JudgeUnavailableError, match="nested deeper than"):
        judge.score([("A cat sat.", REFS)])


def test_retriever_survives_json_nested_100000_deep(serve):
    client = retriever_for(serve(reply(DEEP)).url)
    with pytest.raises(RetrievalError, match="nested deeper than"):
        client.search(["q"], topk=1)


def test_depth_inside_strings_does_not_count(serve):
    """Brackets inside JSON strings (a passage quoting code) are text, not nesting."""
    payload = chat("Score: 1 " + "[{" * 10_000 + '\\"' + "}]" * 10_000)
    judge = judge_for(serve(reply(payload)).url)
    (result,) = judge.score([("A cat sat.", REFS)])
    assert result.reward == 1.0


# --- 6. the judge's thinking switch ----------------------------------------------------


def test_judge_sends_the_thinking_switch_by_default(serve):
    server = serve(reply(chat("Score: 1")))
    judge_for(server.url).score([("A cat sat.", REFS)])
    assert server.requests[0].json()["chat_template_kwargs"] == {"enable_thinking": False}


def test_judge_thinking_switch_can_be_left_out(serve):
    server = serve(reply(chat("Score: 1")))
    judge_for(server.url, disable_thinking=False).score([("A cat sat.", REFS)])
    assert "chat_template_kwargs" not in server.requests[0].json()


# --- 7. start-up probes ----------------------------------------------------------------


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_judge_probe_names_a_dead_url():
    url = dead_url()
    with pytest.raises(JudgeUnavailableError, match=f"{url}/v1/models"):
        judge_for(url).probe()


def test_judge_probe_checks_the_served_model(serve, monkeypatch):
    monkeypatch.setenv("JUDGE_TOKEN", TOKEN)
    server = serve(reply({"object": "list", "data": [{"id": "m"}, {"id": "other"}]}))
    judge_for(server.url, api_key_env="JUDGE_TOKEN").probe()
    assert (server.requests[0].method, server.requests[0].path) == ("GET", "/v1/models")
    assert server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(JudgeUnavailableError, match="does not serve model 'absent'"):
        judge_for(server.url, model="absent").probe()
    assert judge_for(server.url).counters.judged == 0


def test_judge_probe_accepts_a_server_without_a_model_list(serve):
    def not_found(request, conn):
        conn.sendall(head("404 Not Found", length=0))

    judge_for(serve(not_found).url).probe()


def test_retriever_probe_names_a_dead_url():
    url = dead_url()
    with pytest.raises(RetrievalError, match=f"{url}/retrieve"):
        retriever_for(url).probe()


def test_retriever_probe_passes_on_a_live_server(serve):
    server = serve(reply(retrieval()))
    retriever_for(server.url).probe()
    assert server.requests[0].json()["topk"] == 1


def test_run_start_up_probes_the_http_retriever():
    """The construction site of a run (methods.make_search_backend) probes the server."""
    from types import SimpleNamespace

    from rlpt_jax.train.methods import make_search_backend

    url = dead_url()
    search = SimpleNamespace(backend="http", url=url, timeout_s=0.5, retries=0, index_dir=None)
    with pytest.raises(RetrievalError, match=url):
        make_search_backend(SimpleNamespace(search=search))
