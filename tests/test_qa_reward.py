"""QA rewards on hand-made examples (expected values worked out by hand)."""

from __future__ import annotations

import pytest

from rlpt_jax.rewards.qa import at2po_reward, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   Tale of  Two Cities. ", "tale of two cities"),
        ("An apple, the pear", "apple pear"),
        ("Theatre", "theatre"),  # "the" inside a word stays
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_max_over_golds():
    assert exact_match("the Beatles", ["Rolling Stones", "Beatles"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match("PARIS.", "paris") == 1.0
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_f1_by_hand():
    # pred tokens [barack, obama, jr]; gold [barack, obama]: P=2/3, R=1, F1=0.8
    assert f1_score("Barack Obama Jr.", "Barack Obama") == pytest.approx(0.8)
    # gold "new york city" vs pred "york": P=1, R=1/3 → F1=0.5; the other gold gives 0
    assert f1_score("York", ["new york city", "boston"]) == pytest.approx(0.5)
    # repeated tokens count as a multiset: pred [a1, a1] vs gold [a1]: common=1, P=1/2, R=1
    assert f1_score("a1 a1", "a1") == pytest.approx(2 / 3)
    assert f1_score("cat", "dog") == 0.0
    assert f1_score("the", "a") == 1.0  # both normalise to nothing
    assert f1_score("the", "dog") == 0.0


GOOD = (
    "<think>look it up</think><search>capital of France</search>"
    " <result>\nPage 1: Paris\nParis is the capital of France.\n</result>"
    "<think>done</think><answer>The answer is \\boxed{The Paris}.</answer>"
)


def test_reward_correct():
    reward, d = at2po_reward(GOOD, ["Paris", "Paris, France"])
    assert reward == 1.0
    assert d == {"em": 1.0, "f1": 1.0, "format_ok": True, "reason": "ok", "answer": "The Paris"}


def test_reward_wrong_answer_is_zero():
    reward, d = at2po_reward(GOOD, ["Lyon"])
    assert (reward, d["em"], d["f1"], d["format_ok"]) == (0.0, 0.0, 0.0, True)


def test_reward_partial_f1_but_em_zero():
    text = "<answer>\\boxed{Paris France}</answer>"
    reward, d = at2po_reward(text, "Paris")
    # P = 1/2, R = 1 → F1 = 2/3; reward is EM only
    assert reward == 0.0 and d["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "text",
    [
        "<answer>Paris</answer>",  # no box
        "<think>x<answer>\\boxed{Paris}</answer>",  # unbalanced think
        "<search>q</search><answer>\\boxed{Paris}</answer>",  # search without result
        "<answer>\\boxed{Paris}</answer><answer>\\boxed{Paris}</answer>",  # two answers
        "\\boxed{Paris}",  # no answer block
    ],
)
def test_reward_format_penalty(text):
    reward, d = at2po_reward(text, "Paris")
    assert reward == -1.0 and d["format_ok"] is False and d["reason"] != "ok"
    custom, _ = at2po_reward(text, "Paris", format_penalty=-0.5)
    assert custom == -0.5


def test_reward_penalised_but_em_still_reported():
    _, d = at2po_reward("<think><answer>\\boxed{Paris}</answer></think>", "Paris")
    assert d["format_ok"] is False and d["em"] == 1.0


@pytest.mark.parametrize("text", ["", "x" * 10_000, "<answer>\\boxed{", None])
def test_reward_never_raises_on_model_output(text):
    reward, d = at2po_reward(text, ["a"])
    assert reward == -1.0 and d["answer"] is None and d["em"] == 0.0


def test_reward_rejects_bad_penalty():
    with pytest.raises(ValueError, match="format_penalty"):
        at2po_reward("<answer>\\boxed{a}</answer>", "a", format_penalty=float("nan"))


def test_reward_require_think():
    """Reference code: a response without a <think> block scores the format penalty."""
    bare = "<answer>\\boxed{Paris}</answer>"
    assert at2po_reward(bare, "Paris")[0] == 1.0
    reward, d = at2po_reward(bare, "Paris", require_think=True)
    assert (reward, d["reason"], d["em"]) == (-1.0, "no <think> block", 1.0)
    assert at2po_reward(GOOD, "Paris", require_think=True)[0] == 1.0
