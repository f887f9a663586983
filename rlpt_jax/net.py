"""JSON over HTTP with hard limits: the one client behind the judge and the retriever.

Remote services are the least trusted input of a run, and ``urllib`` trusts them: it
follows redirects carrying the ``Authorization`` header to any origin, its timeout is per
socket operation (a server sending a byte every half second never times out), it reads a
body of any size, and ``json.loads`` raises ``RecursionError`` on deep nesting. Every
request made here has instead:

* an overall **deadline** (monotonic clock): each socket operation may wait
  ``min(timeout_s, time left)``, the body is read in chunks with the clock checked in
  between, and a watchdog shuts the socket at the deadline, so a server dripping its
  status line or headers is cut off too;
* a **size cap**: a declared ``Content-Length`` above ``max_bytes`` fails before the body
  is read, and an undeclared body is read at most one chunk past the cap;
* **no redirects**: a 3xx is a failure naming its ``Location``, so credentials never
  leave the configured origin;
* **bounded JSON**: the nesting depth is measured by a linear scan before parsing.

Anything that does not yield a JSON document raises :class:`HTTPFailure`; its
``retryable`` flag tells a client whether another attempt could succeed. Proxy
environment variables are not used: requests go straight to the configured URL.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
from typing import Any

# Statuses a later attempt may not repeat: timeouts, rate limits, overload, restarts.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_MAX_DEPTH = 64  # chat-completions and Search-R1 replies are under 10 deep
_CHUNK = 64 * 1024
_PREVIEW_CHARS = 200


class HTTPFailure(RuntimeError):
    """A request that yielded no JSON document: ``reason`` says why, ``url`` where.

    ``status`` is the HTTP status when the server sent one. ``retryable`` is True when
    another attempt could go differently (no connection, a timeout, the deadline, a
    status in :data:`TRANSIENT_STATUS`) and False when the server gave a definite answer
    (another 4xx, a redirect, an oversized or malformed body).
    """

    def __init__(self, reason: str, url: str, *, status: int | None = None, retryable=False):
        super().__init__(f"{reason} ({url})")
        self.reason = reason
        self.url = url
        self.status = status
        self.retryable = retryable


def post_json(
    url: str,
    payload: Any,
    headers: dict[str, str] | None = None,
    *,
    timeout_s: float,
    deadline_s: float,
    max_bytes: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """``POST`` ``payload`` as JSON to ``url`` and return the parsed JSON answer.

    ``timeout_s`` bounds each socket operation, ``deadline_s`` the whole request,
    ``max_bytes`` the body and ``max_depth`` its nesting. Raises :class:`HTTPFailure`.
    """
    body = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", **(headers or {})}
    raw = fetch("POST", url, body, headers, timeout_s, deadline_s, max_bytes)
    return parse_json(raw, url, max_depth)


def get_json(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    timeout_s: float,
    deadline_s: float,
    max_bytes: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """``GET`` ``url`` and return the parsed JSON answer (limits as :func:`post_json`)."""
    raw = fetch("GET", url, None, headers or {}, timeout_s, deadline_s, max_bytes)
    return parse_json(raw, url, max_depth)


def fetch(
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout_s: float,
    deadline_s: float,
    max_bytes: int,
) -> bytes:
    """The body of a 2xx answer, within ``deadline_s`` and ``max_bytes``; else
    :class:`HTTPFailure`. One connection per request, closed before returning."""
    if timeout_s <= 0 or deadline_s <= 0 or max_bytes < 1:
        raise ValueError(
            f"need timeout_s, deadline_s > 0 and max_bytes >= 1, got "
            f"{timeout_s}, {deadline_s}, {max_bytes}"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"need an http(s)://host/... URL, got {url!r}")
    end = time.monotonic() + deadline_s
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = connection_type(parts.hostname, parts.port, timeout=min(timeout_s, deadline_s))
    fired = threading.Event()
    watchdog = None
    try:
        conn.connect()
        sock = conn.sock  # kept: http.client drops it from conn once the response owns it
        watchdog = threading.Timer(max(end - time.monotonic(), 0.0), _shut, (sock, fired))
        watchdog.daemon = True
        watchdog.start()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers)
        sock.settimeout(_op_timeout(timeout_s, end, deadline_s, url))
        response = conn.getresponse()
        _check_status(response, url)
        return _read_capped(response, sock, url, timeout_s, end, deadline_s, max_bytes)
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timeouts, bad HTTP
        if fired.is_set() or time.monotonic() >= end:
            raise _deadline_failure(deadline_s, url) from e
        raise HTTPFailure(f"{type(e).__name__}: {e}", url, retryable=True) from e
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()


def _shut(sock: socket.socket, fired: threading.Event) -> None:
    """Watchdog: at the deadline, wake whatever read is blocked on ``sock``."""
    fired.set()
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the request finished as the timer fired


def _deadline_failure(deadline_s: float, url: str) -> HTTPFailure:
    return HTTPFailure(
        f"no complete answer within the deadline of {deadline_s:g} s (a server that stalls "
        "or sends slowly); raise the client's deadline_s if the server is healthy but slow",
        url,
        retryable=True,
    )


def _op_timeout(timeout_s: float, end: float, deadline_s: float, url: str) -> float:
    """The wait allowed for the next socket operation: the per-operation timeout or the
    time left, whichever is shorter; :class:`HTTPFailure` once the deadline has passed."""
    left = end - time.monotonic()
    if left <= 0:
        raise _deadline_failure(deadline_s, url)
    return min(timeout_s, left)


def _check_status(response: http.client.HTTPResponse, url: str) -> None:
    """Refuse redirects (they would carry credentials elsewhere) and non-2xx answers."""
    status = response.status
    if 300 <= status < 400:
        location = response.getheader("Location", "(no Location header)")
        raise HTTPFailure(
            f"HTTP {status} redirect to {location}: redirects are not followed, so that "
            "credentials stay with the configured server; configure the final URL instead",
            url,
            status=status,
        )
    if not 200 <= status < 300:
        raise HTTPFailure(
            f"HTTP {status} {response.reason}",
            url,
            status=status,
            retryable=status in TRANSIENT_STATUS,
        )


def _too_large(max_bytes: int, url: str, declared: str | None = None) -> HTTPFailure:
    said = f" (Content-Length {declared})" if declared else ""
    return HTTPFailure(
        f"response larger than {max_bytes} bytes{said}; raise the client's "
        "max_response_bytes if the server legitimately sends that much",
        url,
    )


def _read_capped(response, sock, url, timeout_s, end, deadline_s, max_bytes) -> bytes:
    """The body, chunk by chunk, each read bounded by the time left and the size cap."""
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, url, declared.strip())
    chunks, size = [], 0
    while True:
        sock.settimeout(_op_timeout(timeout_s, end, deadline_s, url))
        chunk = response.read1(_CHUNK)  # at most one socket read: the clock is checked often
        if not chunk:
            if response.length:  # read1 reports a body cut short as a plain end
                raise http.client.IncompleteRead(b"".join(chunks), response.length)
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes, url)
        chunks.append(chunk)


# A JSON string, escapes included; the closing quote is optional so that an unterminated
# string ends the match at the end of the text instead of retrying at every later quote.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON ``text``, in linear time (strings skipped)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _preview(text: str) -> str:
    return repr(text[:_PREVIEW_CHARS]) + ("..." if len(text) > _PREVIEW_CHARS else "")


def parse_json(body: bytes, url: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``body`` as JSON; :class:`HTTPFailure` (not retryable) when it is not UTF-8 JSON
    or nests deeper than ``max_depth``, checked before parsing so nothing recurses."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPFailure(f"response is not JSON (not UTF-8: {e})", url) from e
    if json_depth(text) > max_depth:
        raise HTTPFailure(f"response JSON nested deeper than {max_depth} levels", url)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise HTTPFailure(f"response is not JSON ({e}); it starts {_preview(text)}", url) from e
