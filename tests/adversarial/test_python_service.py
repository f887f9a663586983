"""The Python tool's SandboxFusion-compatible backend (``python_tool.url``): replies are
untrusted input. Every outcome is a PythonResult, never an exception; what the program
did is the program's (exit status, timeout, output cap), and anything else the service
sends or fails to send is the tool's own ``internal`` failure."""

# ruff: noqa: F811  (the ``serve`` fixture is imported from test_http_clients)
from __future__ import annotations

import json
import time

import pytest
from test_http_clients import drip, head, reply, serve  # noqa: F401  (fixture)

from rlpt_jax.envs.python_tool import PythonTool, PythonToolConfig, format_python_result


def tool(url: str, **fields) -> PythonTool:
    return PythonTool(PythonToolConfig(url=url, **dict(dict(timeout_s=1.0), **fields)))


def run_result(status="Finished", return_code=0, stdout="", stderr=""):
    return {
        "status": "Success" if status == "Finished" and return_code == 0 else "Failed",
        "message": "",
        "run_result": {
            "status": status,
            "execution_time": 0.01,
            "return_code": return_code,
            "stdout": stdout,
            "stderr": stderr,
        },
    }


def test_runs_code_on_the_service_and_formats_its_output(serve):
    server = serve(reply(run_result(stdout="42\n")))
    result = tool(server.url).run("print(6 * 7)")
    assert result.ok and result.stdout == "42\n" and result.error is None
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", "/run_code")
    assert sent.json() == {"code": "print(6 * 7)", "language": "python", "run_timeout": 1.0}
    assert format_python_result(result) == " <result>\n42\n</result>"


@pytest.mark.parametrize(
    "answer,error",
    [
        (run_result("Finished", 1, stderr="Traceback ...\nZeroDivisionError"), "exit_code"),
        (run_result("TimeLimitExceeded", None), "timeout"),
        (run_result("Finished", 0, stdout="x" * 5000), "output_limit"),
    ],
    ids=["exit_code", "timeout", "output_limit"],
)
def test_the_programs_failures_are_the_programs(serve, answer, error):
    server = serve(reply(answer))
    result = tool(server.url, max_output_bytes=1000).run("code")
    assert not result.ok and result.error == error
    assert len(result.stdout) <= 1000


BAD_REPLIES = {
    "html": b"<html>502 Bad Gateway</html>",
    "no_run_result": {"status": "SandboxError", "message": "no worker"},
    "wrong_types": {"run_result": {"status": "Finished", "return_code": 0, "stdout": [1]}},
    "unknown_status": run_result("Exploded", 0),
    "deep_json": b"[" * 100_000 + b"]" * 100_000,
    "not_an_object": [1, 2, 3],
}


@pytest.mark.parametrize("answer", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_a_bad_reply_is_the_tools_internal_failure(serve, answer):
    result = tool(serve(reply(answer)).url).run("print(1)")
    assert not result.ok and result.error == "internal", result


def test_no_service_and_a_dripping_service_are_internal_failures_in_bounded_time(serve):
    dead = tool("http://127.0.0.1:9").run("print(1)")  # discard port: nothing listens
    assert dead.error == "internal"
    slow = serve(drip(head(length=10_000) + b'{"run_result": ', every_s=0.2, for_s=30))
    start = time.monotonic()
    result = tool(slow.url, timeout_s=0.5).run("print(1)")
    assert result.error == "internal" and time.monotonic() - start < 15  # 0.5 s + 10 s


def test_a_huge_reply_is_refused(serve):
    body = json.dumps(run_result(stdout="y" * (8 << 20))).encode()
    result = tool(serve(reply(body)).url, max_output_bytes=1000).run("print(1)")
    assert result.error == "internal" and "y" * 2000 not in result.detail
