"""Judges: score parsing, the three backends, counters, the factory and bad servers."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest

from rlpt_jax.rewards import judges
from rlpt_jax.rewards.judges import (
    HttpConfig,
    HttpJudge,
    JudgeConfig,
    JudgeResult,
    JudgeUnavailableError,
    LexicalConfig,
    make_judge,
    parse_score,
)

REFS = ("The cat sat on the mat.", "Then it slept all afternoon.", "Nobody woke it.")


# --- parse_score ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 1", 1),
        ("Score: 0", 0),
        ("The prediction matches.\nScore: 1", 1),
        ("score:0", 0),
        ("**Score:** 1", 1),
        ("**Score: 0**", 0),
        # Repeated: the last verdict wins.
        ("Score: 1 ... on reflection it adds a claim. Score: 0", 0),
        ("Score: 0\nScore: 1", 1),
        # Reasoning in <think> is ignored; the verdict after it counts.
        ("<think>maybe Score: 1</think>\nScore: 0", 0),
        # Malformed or missing.
        ("", None),
        ("I think they are equivalent.", None),
        ("Score: 2", None),
        ("Score: 0.5", None),
        ("Score: yes", None),
        ("Score 1", None),
        ("Scores: 10", None),
        # Truncated: the judge never left its thinking block.
        ("<think>Reference says Score: 1 would be", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


# RLPT v2 (arXiv 2509.19249), the generative reward model's prompt printed in the paper:
# "## Task" (is Predicted a prefix of Reference with exactly that prefix's meaning, the
# wording free), the "Reference:" and "Predicted:" fields, then "## Scoring Rules" (1 if
# the meaning matches a reference prefix, else 0; semantics only; one line with
# "Score: 0" or "Score: 1", no explanation) (spec/rlpt.md, "Prompt structure").
PAPER_PREFIX_GOLDEN = (
    "## Task\n"
    "Decide whether the Predicted text is a prefix of the Reference text: whether it "
    "means exactly what an initial part of the Reference means. The wording may differ; "
    "the meaning may not.\n"
    "\n"
    "Reference: The cat sat on the mat. Then it slept all afternoon. Nobody woke it.\n"
    "\n"
    "Predicted: A cat sat.\n"
    "\n"
    "## Scoring Rules\n"
    "- Score 1 if the meaning of Predicted matches an initial part (a prefix) of "
    "Reference; otherwise score 0.\n"
    "- Judge the meaning only, not the choice of words.\n"
    "- Reply with one line, either Score: 0 or Score: 1, and no explanation."
)


def test_paper_judge_prompt_golden():
    assert judges.judge_prompt("A cat sat.", REFS, "prefix") == PAPER_PREFIX_GOLDEN
    assert JudgeConfig().question_template() == judges.PAPER_PREFIX_PROMPT
    # The verdict the prompt asks for is the one the parser reads.
    assert parse_score("Score: 1") == 1 and parse_score("Score: 0") == 0


def test_judge_prompts_differ_by_mode():
    for style in judges.PROMPT_STYLES:
        config = JudgeConfig(prompt_style=style)
        prefix = judges.judge_prompt("A cat sat.", REFS, "prefix", config.question_template())
        strict_template = JudgeConfig(prompt_style=style, mode="strict").question_template()
        strict = judges.judge_prompt("A cat sat.", REFS, "strict", strict_template)
        assert "Reference: " + " ".join(REFS) + "\n" in prefix
        assert "prefix" in prefix and "prefix" not in strict
        assert "Reference: The cat sat on the mat.\n" in strict
        assert "Then it slept" not in strict
        for prompt in (prefix, strict):
            assert "Predicted: A cat sat.\n" in prompt
            assert "Score: 1" in prompt and "Score: 0" in prompt


def test_compact_judge_prompt_is_the_earlier_one():
    config = JudgeConfig(prompt_style="compact")
    prompt = judges.judge_prompt("A cat sat.", REFS, "prefix", config.question_template())
    assert prompt.startswith(
        "You are checking a text prediction against the real continuation of a document."
    )
    assert prompt.endswith(
        "Answer with exactly `Score: 1` if it is equivalent and `Score: 0` if it is not."
    )
    with pytest.raises(ValueError, match="unknown judge prompt_style 'long'"):
        JudgeConfig(prompt_style="long")


def test_judge_prompt_style_reaches_the_model():
    generate = FakeGenerate(["Score: 1"])
    make_judge(JudgeConfig(kind="generative", prompt_style="compact"), generate=generate).score(
        [("A cat sat.", REFS)]
    )
    assert generate.prompts == [
        [judges.judge_prompt("A cat sat.", REFS, "prefix", judges.COMPACT_PREFIX_PROMPT)]
    ]


# --- generative judge ------------------------------------------------------------------


class FakeGenerate:
    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.prompts: list[list[str]] = []

    def __call__(self, prompts):
        self.prompts.append(list(prompts))
        return self.outputs[: len(prompts)]


def test_generative_judge_parses_and_counts():
    generate = FakeGenerate(["Score: 1", "It adds a claim.\nScore: 0", "equivalent!", ""])
    judge = make_judge(JudgeConfig(kind="generative"), generate=generate)
    batch = [
        ("A cat sat on a mat.", REFS),
        (None, REFS),  # no tagged prediction: never sent to the judge
        ("The dog barked.", REFS),
        ("Something.", REFS),
        ("   ", REFS),  # blank counts as missing too
        ("Else.", REFS),
    ]
    results = judge.score(batch)
    assert results == [
        JudgeResult(1.0, True, "Score: 1", verdict=1),
        JudgeResult(0.0, False, ""),
        JudgeResult(0.0, True, "It adds a claim.\nScore: 0"),
        JudgeResult(0.0, False, "equivalent!"),
        JudgeResult(0.0, False, ""),
        JudgeResult(0.0, False, ""),
    ]
    assert len(generate.prompts) == 1 and len(generate.prompts[0]) == 4
    assert generate.prompts[0][0] == judges.judge_prompt("A cat sat on a mat.", REFS, "prefix")
    c = judge.counters
    assert (c.batches, c.items, c.no_prediction, c.judged) == (1, 6, 2, 4)
    assert (c.parsed, c.unparseable, c.positive) == (2, 2, 1)


def test_generative_judge_rewards_and_renderer_and_strict_mode():
    generate = FakeGenerate(["garbage"])
    config = JudgeConfig(
        kind="generative", mode="strict", unparseable_reward=-1.0, missing_prediction_reward=-2.0
    )
    judge = make_judge(config, generate=generate, renderer=lambda m: f"<user>{m[0]['content']}")
    results = judge.score([("A cat sat.", REFS), (None, REFS)])
    assert [r.reward for r in results] == [-1.0, -2.0]
    expected = "<user>" + judges.judge_prompt("A cat sat.", REFS, "strict")
    assert generate.prompts == [[expected]]


def test_custom_judge_prompt_template():
    generate = FakeGenerate(["Score: 1"])
    config = JudgeConfig(kind="generative", prompt_template="R={reference}|P={predicted}")
    make_judge(config, generate=generate).score([("A cat.", REFS)])
    assert generate.prompts == [["R=" + " ".join(REFS) + "|P=A cat."]]
    with pytest.raises(ValueError, match=r"must contain \['\{predicted\}'\]"):
        JudgeConfig(prompt_template="only {reference}")
    with pytest.raises(ValueError, match="double other braces"):
        JudgeConfig(prompt_template="{reference} {predicted} {score}")


def test_generative_judge_wrong_output_count_is_an_error():
    judge = make_judge(JudgeConfig(kind="generative"), generate=lambda prompts: [])
    with pytest.raises(RuntimeError, match="0 outputs for 1"):
        judge.score([("x y z", REFS)])


# --- lexical judge -----------------------------------------------------------------------


def test_lexical_prefix_rule():
    judge = make_judge({"kind": "lexical"})
    results = judge.score(
        [
            # Exact s_i (punctuation and case ignored): F1 1.
            ("the cat sat on the MAT", REFS),
            # s_i plus the start of s_{i+1}: still a prefix.
            ("The cat sat on the mat. Then it slept", REFS),
            # 5 of 6 tokens: prefix window "the cat sat on the mat", prediction
            # "the cat sat on a mat" -> common 5, P = R = 5/6, F1 = 0.833 >= 0.6.
            ("The cat sat on a mat.", REFS),
            # A later sentence is not a prefix: window "the cat sat on" vs
            # "then it slept all" shares nothing.
            ("Then it slept all", REFS),
            # Too short: 2 tokens < min(3, 6) even though they match.
            ("The cat", REFS),
        ]
    )
    assert [r.reward for r in results] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert results[2].raw == "f1=0.833 Score: 1"
    assert all(r.parsed for r in results)


def test_lexical_threshold_boundary():
    # "the cat ran to the house" vs window "the cat sat on the mat": common the, cat,
    # the = 3 of 6 -> F1 = 0.5.
    low = make_judge(JudgeConfig(lexical=LexicalConfig(threshold=0.5)))
    high = make_judge(JudgeConfig(lexical=LexicalConfig(threshold=0.51)))
    item = [("the cat ran to the house", REFS)]
    assert low.score(item)[0].reward == 1.0
    assert high.score(item)[0].reward == 0.0


def test_lexical_graded_rewards_the_f1_and_keeps_the_verdict():
    judge = make_judge(JudgeConfig(lexical=LexicalConfig(graded=True)))
    results = judge.score(
        [
            ("The cat sat on a mat.", REFS),  # F1 5/6, above the threshold
            ("the cat ran to the house", REFS),  # F1 0.5, below it
            ("Then it slept all", REFS),  # F1 0
            ("The cat", REFS),  # matches, but 2 tokens < min(3, 6): 0
            (None, REFS),  # no prediction: the missing-prediction reward
        ]
    )
    assert [r.reward for r in results] == pytest.approx([5 / 6, 0.5, 0.0, 0.0, 0.0])
    assert [r.verdict for r in results] == [1, 0, 0, 0, 0]
    assert judge.counters.positive == 1


def test_lexical_strict_mode():
    judge = make_judge(JudgeConfig(mode="strict"))
    results = judge.score(
        [
            ("THE cat, sat on the mat", REFS),
            ("The cat sat on the mat. Then it slept", REFS),
            ("The cat sat on a mat.", REFS),
        ]
    )
    assert [r.reward for r in results] == [1.0, 0.0, 0.0]


# --- factory and config ------------------------------------------------------------------


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match=r"unknown judge kind 'oracle'.*generative.*http.*lexical"):
        make_judge({"kind": "oracle"})
    with pytest.raises(ValueError, match="valid kinds"):
        JudgeConfig(kind="oracle")


def test_bad_configs():
    with pytest.raises(ValueError, match="valid modes"):
        JudgeConfig(mode="fuzzy")
    with pytest.raises(ValueError, match="needs generate"):
        make_judge({"kind": "generative"})
    with pytest.raises(ValueError, match="http.model"):
        make_judge({"kind": "http"})
    with pytest.raises(ValueError, match="threshold"):
        LexicalConfig(threshold=0.0)
    with pytest.raises(ValueError, match="base_url"):
        HttpConfig(base_url="localhost:8000")
    with pytest.raises(ValueError, match="deadline_s"):
        HttpConfig(deadline_s=0)
    with pytest.raises(ValueError, match="max_response_bytes"):
        HttpConfig(max_response_bytes=0)
    with pytest.raises(ValueError, match="warn_unparseable_frac"):
        JudgeConfig(warn_unparseable_frac=1.5)
    with pytest.raises(ValueError, match="reference_segments"):
        make_judge({}).score([("x", "a plain string")])


# --- HTTP judge against a loopback chat-completions server -------------------------------


class ChatHandler(http.server.BaseHTTPRequestHandler):
    """Answers like a chat-completions server; behaviour set on the server object."""

    def do_POST(self):  # noqa: N802 (http.server naming)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append((self.path, body))
            n = len(server.requests)
        action = server.behaviour(n, body)
        if action == "sleep":
            time.sleep(0.5)
            action = "Score: 1"
        if isinstance(action, int):
            self.send_response(action)
            self.end_headers()
            return
        if action.startswith("raw:"):
            payload = action[4:].encode()
        else:
            payload = json.dumps(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": action}}]}
            ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout tests), as in test_search.py's fake server

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    httpd.daemon_threads = True
    httpd.lock = threading.Lock()
    httpd.requests = []
    httpd.behaviour = lambda n, body: "Score: 1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def http_judge(port, **http_fields):
    fields = dict(model="judge-model", timeout_s=2.0, max_retries=2, backoff_s=0.0, max_workers=4)
    fields.update(http_fields)
    config = JudgeConfig(
        kind="http", http=HttpConfig(base_url=f"http://127.0.0.1:{port}", **fields)
    )
    return make_judge(config)


def predicted_verdict(n, body):
    """Score 1 when the prompt's prediction mentions a cat, else 0."""
    prompt = body["messages"][0]["content"]
    predicted = prompt.split("Predicted: ", 1)[1].split("\n", 1)[0]
    return "Score: 1" if "cat" in predicted else "Looks different.\nScore: 0"


def test_http_judge_protocol_and_rewards(server):
    server.behaviour = predicted_verdict
    judge = http_judge(server.server_port, max_tokens=64)
    batch = [("A cat on a mat.", REFS), (None, REFS), ("A dog barked.", REFS), ("cat", REFS)]
    results = judge.score(batch)
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 1.0]
    assert [r.parsed for r in results] == [True, False, True, True]
    assert results[2].raw == "Looks different.\nScore: 0"
    assert len(server.requests) == 3
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "judge-model"
    assert body["temperature"] == 0.0 and body["max_tokens"] == 64
    assert body["messages"][0]["role"] == "user"
    prompts = sorted(b["messages"][0]["content"] for _, b in server.requests)
    assert judges.judge_prompt("A dog barked.", REFS, "prefix") in prompts
    c = judge.counters
    assert (c.judged, c.parsed, c.positive, c.failed_requests, c.retries) == (3, 3, 2, 0, 0)


def test_http_judge_garbage_is_a_failure_not_retried(server):
    """A reply that is not a chat completion is a failed request (issue 21); a chat reply
    whose text has no verdict is unparseable. Neither is retried: the server answered."""
    answers = {1: "raw:<html>oops</html>", 2: 'raw:{"choices": []}', 3: "I refuse."}
    server.behaviour = lambda n, body: answers.get(n, "Score: 1")
    judge = http_judge(server.server_port, max_workers=1)
    results = judge.score([("x y z", REFS)] * 4)  # 2/4 failed: not above 0.5, so scored
    assert [r.parsed for r in results] == [False, False, False, True]
    assert [r.reward for r in results] == [0.0, 0.0, 0.0, 1.0]
    assert "not JSON" in results[0].raw and "<html>oops</html>" in results[0].raw
    assert "not a chat completion" in results[1].raw
    assert results[2].raw == "I refuse."
    assert len(server.requests) == 4
    assert (judge.counters.unparseable, judge.counters.failed_requests) == (1, 2)


def test_unparseable_fraction_is_a_step_metric_and_a_warning(caplog):
    """judge/unparseable_frac = unparseable / judged items of the step (issue 17 item 3);
    above warn_unparseable_frac one warning per step shows an example reply, clipped."""
    thinking = "<think>" + "Let me compare the two texts carefully. " * 100
    generate = FakeGenerate(["Score: 1", thinking, "Score: 0", "no verdict"])
    judge = make_judge(JudgeConfig(kind="generative", warn_unparseable_frac=0.4), generate=generate)
    judge.score([("a", REFS)])  # an earlier step: not counted in the next one
    before = judge.counters.as_dict()
    generate.outputs = generate.outputs[1:]
    with caplog.at_level("WARNING", logger="rlpt_jax.rewards.judges"):
        metrics = judge.step_metrics(before)
        assert metrics["judge/unparseable_frac"] == 0.0 and metrics["judge/judged"] == 0.0
        assert not caplog.records  # a step that never reached the judge: zeros, no alarm
        judge.score([("b", REFS), ("c", REFS), (None, REFS), ("d", REFS)])
        metrics = judge.step_metrics(before)
    assert metrics["judge/unparseable"] == 2.0 and metrics["judge/judged"] == 3.0
    assert metrics["judge/unparseable_frac"] == pytest.approx(2 / 3)
    (record,) = caplog.records
    message = record.getMessage()
    assert "2 of 3 judged replies" in message and "disable_thinking" in message
    assert "'no verdict'" in message  # the latest example, whole when it is short
    assert len(message) < 1200  # a long thinking reply would have been clipped
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlpt_jax.rewards.judges"):
        judge.step_metrics(judge.counters.as_dict())
    assert not caplog.records


def test_unparseable_example_is_clipped(caplog):
    generate = FakeGenerate(["<think>" + "x" * 10_000])
    judge = make_judge(JudgeConfig(kind="generative"), generate=generate)
    before = judge.counters.as_dict()
    judge.score([("a", REFS)])
    with caplog.at_level("WARNING", logger="rlpt_jax.rewards.judges"):
        judge.step_metrics(before)
    message = caplog.records[0].getMessage()
    assert "'<think>xxx" in message and "(10007 characters)" in message
    assert len(message) < 1200


def test_http_judge_retries_transient_errors(server):
    # First two requests: 503 then a timeout; the third attempt succeeds.
    server.behaviour = lambda n, body: {1: 503, 2: "sleep"}.get(n, "Score: 1")
    judge = http_judge(server.server_port, timeout_s=0.2, max_retries=2)
    results = judge.score([("x y z", REFS)])
    assert results == [JudgeResult(1.0, True, "Score: 1", verdict=1)]
    assert judge.counters.retries == 2
    assert judge.counters.failed_requests == 0


def test_http_judge_timeouts_exhaust_retries(server):
    server.behaviour = lambda n, body: "sleep"
    judge = http_judge(server.server_port, timeout_s=0.1, max_retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match="2/2 requests failed after 1 retries"):
        judge.score([("x y z", REFS), ("a b c", REFS)])
    assert time.monotonic() - start < 5
    assert len(server.requests) == 4  # 2 items x (1 try + 1 retry)
    assert judge.counters.failed_requests == 2


def test_http_judge_failure_fraction(server):
    # max_workers=1 makes request order = batch order. Item 1 always gets 500.
    def behaviour(n, body):
        return 500 if "fails" in body["messages"][0]["content"] else "Score: 1"

    server.behaviour = behaviour
    batch = [("it works", REFS), ("it fails", REFS), ("it works", REFS)]
    tolerant = http_judge(server.server_port, max_workers=1, max_failure_fraction=0.5)
    results = tolerant.score(batch)  # 1/3 failed <= 0.5: marked failed (not trained on)
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]
    assert results[1] == JudgeResult(0.0, False, "HTTP 500 Internal Server Error", failed=True)
    assert not results[0].failed and not results[2].failed
    assert tolerant.counters.failed_requests == 1 and tolerant.counters.retries == 2
    strict = http_judge(server.server_port, max_workers=1, max_failure_fraction=0.3)
    with pytest.raises(JudgeUnavailableError, match="1/3 requests failed"):
        strict.score(batch)


def test_http_judge_client_error_not_retried(server):
    server.behaviour = lambda n, body: 404
    judge = http_judge(server.server_port, max_retries=3)
    with pytest.raises(JudgeUnavailableError, match="HTTP 404"):
        judge.score([("x y z", REFS)])
    assert len(server.requests) == 1


def test_http_judge_dead_server_raises_after_retries():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    config = JudgeConfig(
        kind="http",
        http=HttpConfig(
            base_url=f"http://127.0.0.1:{port}", model="m", max_retries=3, backoff_s=0.5
        ),
    )
    judge = HttpJudge(config, sleep=sleeps.append)
    with pytest.raises(JudgeUnavailableError, match="unavailable: 1/1 requests failed after 3"):
        judge.score([("x y z", REFS)])
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff
    assert judge.counters.retries == 3 and judge.counters.failed_requests == 1
