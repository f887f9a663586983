"""Parsers that see model or server output finish in linear time on hostile inputs.

Each input is about 1 MB. The old extract_boxed (a rescan per unclosed ``\\boxed{``) and
parse_score (nested ``\\s*`` around an optional ``*``) were quadratic: minutes to hours
here. A SIGALRM deadline far above the linear cost turns a quadratic parser into a
failure instead of a hung test suite; it is a complexity check, not a speed target.
"""

import signal
from contextlib import contextmanager

import pytest

from rlpt_jax.envs.tags import extract_boxed
from rlpt_jax.rewards.judges import parse_score

MB = 1 << 20


@contextmanager
def deadline(seconds: int):
    def fail(signum, frame):
        raise TimeoutError(f"parser still running after {seconds} s: not linear")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{" * (MB // 7), None),  # every box open, none closed
        ("\\boxed{" * (MB // 8) + "x}", "x"),  # only the innermost box closes
        ("\\boxed{1}" + "\\boxed{" * (MB // 7), "1"),  # the last complete box wins
        ("{" * MB, None),
        ("\\boxed" + " " * MB + "{y}", "y"),
    ],
    ids=["open_boxes", "innermost_closes", "complete_then_open", "braces", "blanks"],
)
def test_extract_boxed_is_linear(text, expected):
    with deadline(10):
        assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score" + " " * MB, None),  # whitespace after "score" and no colon
        ("score " * (MB // 6), None),
        ("Score:" + " " * MB + "1", 1),
        ("**Score" + " " * MB + "**: 0", 0),
    ],
    ids=["blank_run", "many_scores", "blank_then_verdict", "bold_blank"],
)
def test_parse_score_is_linear(text, expected):
    with deadline(10):
        assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("Score: 1.", 1), ("Score: 0.", 0), ("The verdict. Score: 1.\n", 1), ("Score: 1.5", None)],
)
def test_parse_score_takes_a_verdict_that_ends_a_sentence(text, expected):
    assert parse_score(text) == expected
