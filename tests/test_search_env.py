"""Search-QA environment step: outcomes, batching, limits, backend failures, and
malformed model output (always a counted outcome, never an exception)."""

from __future__ import annotations

import socket

import pytest

from rlpt_jax.envs import tags
from rlpt_jax.envs.search import (
    BM25Search,
    HttpRetriever,
    HttpRetrieverConfig,
    Passage,
    RetrievalError,
)
from rlpt_jax.envs.search_env import DEFAULT_LIMIT_NOTICE, SearchEnv, SearchEnvConfig

TINY = [
    {"title": "Volcano", "text": "A volcano erupts lava and ash from a magma chamber."},
    {"title": "Lighthouse", "text": "A lighthouse is a tower with a lamp guiding ships."},
]


class Recorder:
    """Backend that records every call and answers one fixed passage per query."""

    def __init__(self):
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries, topk):
        self.calls.append((list(queries), topk))
        return [[Passage(f"T:{q}", "body", 1.0)] for q in queries]


class Broken:
    def search(self, queries, topk):
        raise RetrievalError("index offline", attempts=3)


def test_search_answer_and_result_text():
    env = SearchEnv(BM25Search(TINY))
    r = env.step("<think>hmm</think><search>magma lava</search>", tool_calls=0)
    assert (r.outcome, r.done, r.tool_calls, r.query) == ("search", False, 1, "magma lava")
    assert r.append_text.startswith(" <result>\nPage 1: Volcano\nA volcano erupts")
    assert r.append_text.endswith("\n</result>")
    a = env.step("<think>ok</think><answer>\\boxed{Volcano}</answer>", tool_calls=1)
    assert (a.outcome, a.done, a.append_text, a.tool_calls) == ("answer", True, "", 1)
    assert env.metrics() == {
        "answer": 1, "search": 1, "python": 0, "limit": 0, "invalid": 0, "tool_error": 0,
        "backend_calls": 1, "query_truncated": 0, "search_failures": 0,
    }  # fmt: skip


def test_batched_single_backend_call():
    backend = Recorder()
    env = SearchEnv(backend, SearchEnvConfig(topk=2))
    results = env.step_batch(
        [
            ("<search>first</search>", 0),
            ("<answer>\\boxed{x}</answer>", 2),
            ("<search>second</search>\n", 5),
            ("no tags", 0),
            ("<search>third</search>", 6),  # the 7th call with max_tool_calls=6
        ]
    )
    assert backend.calls == [(["first", "second"], 2)]
    assert [r.outcome for r in results] == ["search", "answer", "search", "invalid", "limit"]
    assert [r.tool_calls for r in results] == [1, 2, 6, 0, 6]
    assert results[0].append_text == " <result>\nPage 1: T:first\nbody\n</result>"
    assert results[4].append_text == DEFAULT_LIMIT_NOTICE and not results[4].done
    assert env.counts["backend_calls"] == 1


def test_limit_notice_keeps_format_valid():
    env = SearchEnv(
        Recorder(), SearchEnvConfig(max_tool_calls=1, limit_notice=" <result>\nSTOP\n</result>")
    )
    text = "<search>a</search>"
    r1 = env.step(text, 0)
    text += r1.append_text + "<search>b</search>"
    r2 = env.step("<search>b</search>", r1.tool_calls)
    assert (r2.outcome, r2.append_text, r2.tool_calls) == ("limit", " <result>\nSTOP\n</result>", 1)
    text += r2.append_text + "<answer>\\boxed{y}</answer>"
    assert tags.check_format(text) == (True, "ok")


def test_backend_exception_is_counted_tool_error():
    env = SearchEnv(Broken())
    results = env.step_batch([("<search>a</search>", 0), ("<search>b</search>", 3)])
    assert [(r.outcome, r.done, r.tool_calls) for r in results] == [
        ("tool_error", True, 1),
        ("tool_error", True, 4),
    ]
    assert "index offline" in results[0].reason
    assert env.counts["tool_error"] == 2


def test_backend_wrong_length_is_tool_error():
    class Short:
        def search(self, queries, topk):
            return []

    r = SearchEnv(Short()).step("<search>a</search>", 0)
    assert r.outcome == "tool_error" and "0 lists for 1 queries" in r.reason


def test_dead_http_server_becomes_tool_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpRetriever(
        HttpRetrieverConfig(url=f"http://127.0.0.1:{port}", timeout_s=1.0, retries=2),
        sleep=lambda _: None,
    )
    env = SearchEnv(client)
    r = env.step("<think>x</think><search>who</search>", 0)
    assert (r.outcome, r.done, r.tool_calls) == ("tool_error", True, 1)
    assert "after 3 attempts" in r.reason
    assert client.attempts == 3
    assert env.counts["tool_error"] == 1


@pytest.mark.parametrize(
    "text, outcome, reason",
    [
        ("", "invalid", "no answer and no search"),
        ("just rambling text", "invalid", "no answer and no search"),
        ("<think>unclosed <search>q", "invalid", "no answer and no search"),
        ("<search>q</search> trailing", "invalid", "no answer and no search"),
        ("stray </search>", "invalid", "</search> without <search>"),
        ("<search>   </search>", "invalid", "empty search query"),
        ("<search>a<search>b</search>", "search", "ok"),
        ("<answer><answer>\\boxed{1}</answer>", "answer", "answer given"),
        ("<answer>unfinished", "invalid", "no answer and no search"),
        (None, "invalid", "turn text is not a string"),
    ],
)
def test_malformed_turns_are_counted(text, outcome, reason):
    env = SearchEnv(Recorder())
    r = env.step(text, 0)
    assert (r.outcome, r.reason) == (outcome, reason)
    assert (
        env.counts[outcome] == 1
        and sum(env.counts[o] for o in ("answer", "search", "limit", "invalid", "tool_error")) == 1
    )


def test_ten_thousand_char_query_truncated():
    backend = Recorder()
    env = SearchEnv(backend, SearchEnvConfig(max_query_chars=1000))
    r = env.step("<search>" + "q" * 10_000 + "</search>", 0)
    assert r.outcome == "search"
    assert backend.calls[0][0] == ["q" * 1000]
    assert env.counts["query_truncated"] == 1


def test_config_validation():
    with pytest.raises(ValueError, match="topk"):
        SearchEnvConfig(topk=0)
    with pytest.raises(ValueError, match="max_tool_calls"):
        SearchEnvConfig(max_tool_calls=-1)
    with pytest.raises(ValueError, match="limit_notice"):
        SearchEnvConfig(limit_notice="")


def test_reference_incentives_are_the_defaults():
    """Reference code: <think> required, a call past the limit invalid, and generation
    stopped only at </search> (so the EOS after </answer> is sampled and trained)."""
    cfg = SearchEnvConfig()
    assert (cfg.require_think, cfg.over_limit_invalid, cfg.stop_at_answer) == (True, True, False)
    assert cfg.stop_strings == ("</search>",)
    assert SearchEnvConfig(stop_at_answer=True).stop_strings == ("</search>", "</answer>")
