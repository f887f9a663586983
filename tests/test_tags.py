"""Search-QA tag parser: extraction, format check, and robustness to malformed text."""

from __future__ import annotations

import pytest

from rlpt_jax.envs import tags

GOOD = (
    "<think>need the capital</think><search>capital of France</search>"
    " <result>\nPage 1: Paris\nParis is the capital.\n</result>"
    "<think>found it</think><answer>It is \\boxed{Paris}.</answer>"
)


def test_extract_search_query_last_block_ending_turn():
    turn = "<think>x</think><search>old</search> then <search>  new query \n</search>\n"
    assert tags.extract_search_query(turn) == "new query"


def test_extract_search_query_absent_or_not_ending():
    assert tags.extract_search_query("no tags at all") is None
    assert tags.extract_search_query("<search>q</search> and more text") is None
    assert tags.extract_search_query("</search>") is None
    assert tags.extract_search_query("<search></search>") == ""


def test_extract_boxed_nested_braces():
    assert tags.extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert tags.extract_boxed("\\boxed{a} then \\boxed {b{c}d}") == "b{c}d"
    assert tags.extract_boxed("\\boxed{a \\} b}") == "a \\} b"
    assert tags.extract_boxed("\\boxed{unclosed {x}") is None
    # An unclosed last box falls back to the previous complete one.
    assert tags.extract_boxed("\\boxed{ok} \\boxed{bad") == "ok"
    assert tags.extract_boxed("\\boxed x") is None


def test_extract_final_answer():
    assert tags.extract_final_answer(GOOD) == "Paris"
    assert tags.extract_final_answer("\\boxed{Paris}") is None  # not inside <answer>
    assert tags.extract_final_answer("<answer>Paris</answer>") is None


def test_check_format_good():
    assert tags.check_format(GOOD) == (True, "ok")
    assert tags.check_format("<answer>\\boxed{1}</answer>") == (True, "ok")


@pytest.mark.parametrize(
    "text, reason_part",
    [
        ("<think>a<answer>\\boxed{1}</answer>", "opened inside <think>"),
        ("<think>a</think></think><answer>\\boxed{1}</answer>", "</think> without"),
        ("<think>a<think>b</think></think><answer>\\boxed{1}</answer>", "inside <think>"),
        ("<think>a", "<think> not closed"),
        ("plain text", "exactly one answer block, found 0"),
        ("<answer>\\boxed{1}</answer><answer>\\boxed{2}</answer>", "after the answer"),
        ("<answer>1</answer>", "no \\boxed{}"),
        ("<search>q</search><answer>\\boxed{1}</answer>", "before the previous search"),
        ("<search>q</search><search>r</search>", "before the previous search"),
        ("<search>q</search>", "search without a <result>"),
        ("<result>x</result><answer>\\boxed{1}</answer>", "not preceded by a search"),
        ("<search>q</search><result>x", "<result> not closed"),
        ("<answer>\\boxed{1}</answer><search>q</search><result>r</result>", "after the answer"),
    ],
)
def test_check_format_bad(text, reason_part):
    ok, reason = tags.check_format(text)
    assert not ok
    assert reason_part in reason


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<think>a</think><answer>\\boxed{1}</answer>", "ok"),
        ("<answer>\\boxed{1}</answer>", "no <think> block"),
        ("<think>a<answer>\\boxed{1}</answer>", "<answer> opened inside <think>"),
        # A <think> inside a tool result is not the model's.
        (
            "<search>q</search><result><think>x</think></result><answer>\\boxed{1}</answer>",
            "no <think> block",
        ),
    ],
)
def test_require_think(text, reason):
    """Reference code (deep_research_em.validate_format): <think> present and paired."""
    assert tags.check_format(text, require_think=True) == (reason == "ok", reason)
    if reason == "no <think> block":
        assert tags.check_format(text) == (True, "ok")  # optional unless required


def test_model_view_makes_tool_output_opaque():
    passage = " <result>\nPage 1: Tags\nHTML-like markup: </result> <answer> \\boxed{no}\n</result>"
    parts = [
        ("tool", ""),
        ("model", "<think>look</think><search>tags</search>"),
        ("tool", passage),
        ("model", "<think>found</think><answer>\\boxed{Tags}</answer>"),
    ]
    view = tags.model_view(parts)
    assert view == (
        "<think>look</think><search>tags</search> <result></result>"
        "<think>found</think><answer>\\boxed{Tags}</answer>"
    )
    assert tags.check_format(view, require_think=True) == (True, "ok")
    assert tags.extract_final_answer(view) == "Tags"
    # The same trajectory as one decoded string: the passage's </result> ends the result
    # early, so its own closing tag looks stray (why rollouts score the model view).
    assert tags.check_format("".join(t for _, t in parts))[0] is False
    with pytest.raises(ValueError, match="'model' or 'tool'"):
        tags.model_view([("user", "x")])


def test_tags_inside_result_are_ignored():
    text = (
        "<search>q</search><result>\nPage 1: <answer> stray <think> tags\n</result>"
        "<answer>\\boxed{x}</answer>"
    )
    assert tags.check_format(text) == (True, "ok")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no tags",
        "<search></search>",
        "<search>" + "q" * 10_000 + "</search>",
        "<<search>>a</search></search><answer><answer>\\boxed{{}</answer>",
        "</answer><answer>",
        "\\boxed{" * 500,
        "<think>" * 1000,
        None,
        12,
    ],
)
def test_never_raises(text):
    ok, reason = tags.check_format(text)
    assert isinstance(ok, bool) and isinstance(reason, str)
    tags.extract_search_query(text)
    tags.extract_final_answer(text)
    tags.extract_boxed(text)
    tags.scan_tags(text)


def test_long_query_extracted_whole():
    q = "word " * 2000
    assert tags.extract_search_query(f"<search>{q}</search>") == q.strip()
