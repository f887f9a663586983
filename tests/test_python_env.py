"""The multi-turn environment's Python tool: a ``<python>`` call runs in the sandbox and
its output (or its error, as text) comes back in ``<result>``; a program's failure is a
counted result the model reads, the sandbox's own failure a counted ``tool_error``; the
tool-call limit and the format rules cover it as they cover search; a disabled tool is
refused. The sandbox itself is tested in tests/test_python_tool.py and
tests/adversarial/test_sandbox.py."""

from __future__ import annotations

import time

import pytest
from test_python_tool import make_tool

from rlpt_jax.envs import tags
from rlpt_jax.envs.python_tool import PythonResult, format_python_result
from rlpt_jax.envs.search import Passage
from rlpt_jax.envs.search_env import (
    DEFAULT_LIMIT_NOTICE,
    TOOL_LIMIT_NOTICE,
    SearchEnv,
    SearchEnvConfig,
)

PYTHON = SearchEnvConfig(tools=("python",))


@pytest.fixture(scope="module")
def tool():
    return make_tool(timeout_s=1.5, memory_bytes=512 << 20)


def python_env(tool, **config) -> SearchEnv:
    return SearchEnv(None, SearchEnvConfig(tools=("python",), **config), python=tool)


def test_a_python_call_gets_its_output_in_a_result(tool):
    env = python_env(tool)
    r = env.step("<think>multiply</think><python>print(6*7)</python>", tool_calls=0)
    assert (r.outcome, r.done, r.tool_calls, r.query) == ("python", False, 1, "print(6*7)")
    assert r.append_text == " <result>\n42\n</result>"
    assert env.metrics()["python"] == 1 and env.metrics()["python_failures"] == 0
    # The trajectory reads as the protocol says: call, result, answer.
    text = "<think>m</think><python>print(6*7)</python>" + r.append_text
    text += "<think>so 42</think><answer>\\boxed{42}</answer>"
    assert tags.check_format(text, require_think=True, tools=("python",)) == (True, "ok")


def test_fenced_indented_code_and_a_silent_program(tool):
    env = python_env(tool)
    fenced = "<python>\n```python\n    x = 6\n    print(x * 7)\n```\n</python>"
    silent = "<python>x = 1</python>"
    out = env.step_batch([(fenced, 0), (silent, 2)])
    assert [r.outcome for r in out] == ["python", "python"]
    assert out[0].append_text == " <result>\n42\n</result>"
    assert "no output" in out[1].append_text and out[1].tool_calls == 3


@pytest.mark.parametrize(
    "code, kind, shown",
    [
        ("raise ValueError('boom')", "exit_code", "ValueError: boom"),
        ("import sys\nsys.exit(3)", "exit_code", "[exit_code] exited with status 3"),
        ("print('so far')\nwhile True:\n    pass", "timeout", "[timeout] killed after"),
        ("import os\nos.system('true')", "forbidden", "[forbidden] process creation"),
        ("x = bytearray(10**10)", "memory", "MemoryError"),
        ("while True:\n    print('y' * 1000)", "output_limit", "[output_limit]"),
    ],
    ids=["exception", "exit", "timeout", "forbidden", "memory", "output"],
)
def test_a_failing_program_is_a_counted_result_not_a_crash(tool, code, kind, shown):
    """The program's failure is the policy's doing: the model reads it and goes on."""
    env = python_env(tool)
    r = env.step(f"<think>try</think><python>{code}</python>", 1)
    assert (r.outcome, r.done, r.tool_calls, r.reason) == ("python", False, 2, kind)
    assert r.append_text.startswith(" <result>\n") and r.append_text.endswith("\n</result>")
    assert shown in r.append_text
    m = env.metrics()
    assert m[f"python_{kind}"] == 1 and m["python"] == 1 and m["tool_error"] == 0
    assert sum(m[f"python_{k}"] for k in ("timeout", "memory", "output_limit")) <= 1
    if kind == "timeout":
        assert r.append_text.startswith(" <result>\nso far\n")  # what it printed first


def test_the_programs_of_a_batch_run_at_once():
    """Three one-second sleeps in 2.5 s: run one after another they need 3 s at least."""
    env = SearchEnv(None, SearchEnvConfig(tools=("python",), python_workers=3), make_tool())
    start = time.monotonic()
    out = env.step_batch([("<python>import time; time.sleep(1); print('up')</python>", 0)] * 3)
    assert time.monotonic() - start < 2.5
    assert [r.append_text for r in out] == [" <result>\nup\n</result>"] * 3


def test_output_is_cut_to_python_max_chars(tool):
    env = python_env(tool, python_max_chars=100)
    r = env.step("<python>print('a' * 5000)</python>", 0)
    body = r.append_text[len(" <result>\n") : -len("\n</result>")]
    assert body.startswith("a" * 100) and body.endswith("[... 4900 more characters]")
    assert len(body) < 200


def test_the_end_of_a_long_traceback_is_kept():
    err = "Traceback (most recent call last):\n" + "  frame\n" * 500 + "ZeroDivisionError: x"
    result = PythonResult(False, "", err, "exit_code", 1, "exited with status 1", 0.1)
    text = format_python_result(result, max_chars=200)
    assert text.endswith("ZeroDivisionError: x\n</result>")
    assert "characters before ...]" in text and len(text) < 300


class _BrokenSandbox:
    """A sandbox whose machinery fails (not the code in it)."""

    def __init__(self, raises: bool = False):
        self.raises = raises

    def run(self, code):
        if self.raises:
            raise OSError("bwrap vanished")
        return PythonResult(False, "", "", "internal", None, "OSError: no /tmp", 0.0)


@pytest.mark.parametrize("raises", [False, True], ids=["internal", "raises"])
def test_a_sandbox_failure_is_a_counted_tool_error(raises):
    env = SearchEnv(None, PYTHON, python=_BrokenSandbox(raises))
    out = env.step_batch([("<python>print(1)</python>", 0), ("<python>print(2)</python>", 4)])
    assert [(r.outcome, r.done, r.tool_calls) for r in out] == [
        ("tool_error", True, 1),
        ("tool_error", True, 5),
    ]
    m = env.metrics()
    assert (m["tool_error"], m["python_failures"], m["python"]) == (2, 2, 0)
    assert ("bwrap vanished" if raises else "no /tmp") in env.last_errors["python"]


def test_search_is_refused_when_only_python_is_enabled(tool):
    env = python_env(tool)
    assert PYTHON.stop_strings == ("</python>",)
    r = env.step("<think>look up</think><search>capital of France</search>", 0)
    assert (r.outcome, r.done, r.tool_calls) == ("invalid", True, 0)
    assert r.reason == "the search tool is not enabled (env.tools=('python',))"
    assert env.metrics()["invalid"] == 1 and "backend_calls" not in env.metrics()
    # ... and a search-only run refuses Python the same way, without running it.
    search_only = SearchEnv(_Recorder())
    r = search_only.step("<python>print(1)</python>", 0)
    assert (r.outcome, r.done) == ("invalid", True) and "python tool is not enabled" in r.reason
    assert search_only.backend.calls == []


def test_a_disabled_tools_tags_are_plain_text_to_the_format_check():
    """The search-only protocol reads a response exactly as before the Python tool."""
    text = "<think>t</think>I could write <python>x</python> here.<answer>\\boxed{1}</answer>"
    assert tags.check_format(text, True) == (True, "ok")
    assert tags.check_format(text, True, tools=("python",)) == (
        False,
        "<answer> before the previous python got a <result>",
    )
    called = "<think>t</think><search>q</search> <result></result><answer>\\boxed{1}</answer>"
    assert tags.check_format(called, True, tools=("python",)) == (
        False,
        "<result> not preceded by a python call",
    )


class _Recorder:
    def __init__(self):
        self.calls = []

    def search(self, queries, topk):
        self.calls.append(list(queries))
        return [[Passage(f"T:{q}", "body", 1.0)] for q in queries]


def test_both_tools_share_the_call_limit_and_one_batch(tool):
    backend = _Recorder()
    env = SearchEnv(backend, SearchEnvConfig(tools=("search", "python"), max_tool_calls=2), tool)
    assert env.config.stop_strings == ("</search>", "</python>")
    out = env.step_batch(
        [
            ("<search>volcano</search>", 0),
            ("<python>print(2 ** 10)</python>", 1),
            ("<search>lava</search>", 1),
            ("<python>print('never run')</python>", 2),  # the 3rd call with a limit of 2
        ]
    )
    assert [r.outcome for r in out] == ["search", "python", "search", "limit"]
    assert backend.calls == [["volcano", "lava"]]
    assert out[1].append_text == " <result>\n1024\n</result>"
    assert (out[3].append_text, out[3].done, out[3].tool_calls) == (TOOL_LIMIT_NOTICE, False, 2)
    assert SearchEnvConfig().notice == DEFAULT_LIMIT_NOTICE  # search-only: the paper's notice


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<python>   </python>", "empty python code"),
        ("<python>\n```python\n```\n</python>", "empty python code"),
        ("stray </python>", "</python> without <python>"),
        ("just talk", "no answer and no python"),
    ],
)
def test_malformed_python_turns_are_invalid(tool, text, reason):
    env = python_env(tool)
    r = env.step(text, 0)
    assert (r.outcome, r.done, r.reason) == ("invalid", True, reason)


def test_tools_are_checked():
    with pytest.raises(ValueError, match="distinct tools"):
        SearchEnvConfig(tools=("bash",))
    with pytest.raises(ValueError, match="distinct tools"):
        SearchEnvConfig(tools=("python", "python"))
    with pytest.raises(ValueError, match="enables python but no PythonTool"):
        SearchEnv(None, PYTHON)
    with pytest.raises(ValueError, match="enables search but no search backend"):
        SearchEnv(None, SearchEnvConfig())
