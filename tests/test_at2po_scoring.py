"""AT²PO leaf scoring on crafted trajectories grown by the real environment: only the
model's own tokens are parsed, the reference code's format incentives (``<think>``
required, a call past the tool-call limit invalid), no per-turn cap by default, and the
EOS after ``</answer>`` kept as a trained token."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rlpt_jax.envs.search import Passage
from rlpt_jax.envs.search_env import SearchEnv, SearchEnvConfig
from rlpt_jax.rollout.at2po import score_tree
from rlpt_jax.rollout.tree import TreeConfig, TreeRollout, TurnSample, flatten

EOS = "¶"  # one character = one token: the tokenizer below is character-level


class CharTokenizer:
    @staticmethod
    def encode(text):
        return [ord(c) for c in text]

    @staticmethod
    def decode(ids):
        return "".join(chr(i) for i in ids)


class CharPolicy:
    tokenizer = CharTokenizer()


class ScriptedTurns:
    """One row; each generate() samples the next scripted turn, cut at the turn budget as
    a sampler would (``length``); ``</search>`` is a stop string, a final EOS ends."""

    def __init__(self, turns):
        self.turns = list(turns)
        self.budgets = []

    def start(self, prompts):
        return [0]

    def fork(self, requests):
        return [self.fork_one(*r) for r in requests]

    def fork_one(self, row, length, m):
        return [0] * m

    def extend(self, rows, tokens):
        pass

    def release(self, rows):
        pass

    def generate(self, rows, max_new_tokens):
        (budget,) = max_new_tokens
        self.budgets.append(budget)
        ids = CharTokenizer.encode(self.turns.pop(0))
        finish = "eos" if ids[-1] == ord(EOS) else "stop"
        if len(ids) > budget:
            ids, finish = ids[:budget], "length"
        return [TurnSample(ids, [-0.5] * len(ids), [0.5] * len(ids), finish)]


class Passages:
    """A retriever whose one passage is the given text."""

    def __init__(self, text):
        self.text = text

    def search(self, queries, topk):
        return [[Passage("Markup", self.text, 1.0)] for _ in queries]


CHAIN = TreeConfig(num_chains=1, rounds=0, picks=0, expansion="chains")
REFERENCE = SearchEnvConfig()


def grow(turns, env_config=REFERENCE, passage="Paris is the capital.", tree=CHAIN):
    env = SearchEnv(Passages(passage), env_config)
    engine = ScriptedTurns(turns)
    (grown,) = TreeRollout(engine, env, CharTokenizer.decode, CharTokenizer.encode, tree).run(
        [[ord("Q")]]
    )
    return grown, engine


SEARCH = "<think>look it up</think><search>capital of France</search>"
ANSWER = "<think>found it</think><answer>\\boxed{Paris}</answer>" + EOS


def test_result_tag_inside_a_passage_does_not_spoil_a_correct_answer():
    """Issue 21: a retrieved passage containing ``</result>`` (and other tags) made the
    decoded trajectory malformed, so a correct answer scored −1."""
    passage = "In HTML-like markup a block ends with </result> or <answer>; Paris is here."
    tree, _ = grow([SEARCH, ANSWER], passage=passage)
    rewards, details = score_tree(CharPolicy(), tree, ["Paris"], -1.0)
    assert list(rewards.values()) == [1.0], details
    assert details[0]["format_ok"] and details[0]["answer"] == "Paris"


def test_answer_without_think_is_format_invalid_by_default():
    tree, _ = grow(["<answer>\\boxed{Paris}</answer>" + EOS])
    rewards, details = score_tree(CharPolicy(), tree, ["Paris"], -1.0)
    assert list(rewards.values()) == [-1.0] and details[0]["reason"] == "no <think> block"
    lenient = SearchEnvConfig(require_think=False)
    assert list(score_tree(CharPolicy(), tree, ["Paris"], -1.0, lenient)[0].values()) == [1.0]


def test_tool_call_past_the_limit_is_format_invalid_by_default():
    """Reference code: the 2nd search with a limit of 1 gets the notice (generation goes
    on), and the trajectory is format-invalid however good its answer."""
    config = SearchEnvConfig(max_tool_calls=1)
    tree, _ = grow([SEARCH, SEARCH, ANSWER], env_config=config)
    assert [n.outcome for n in tree.nodes[1:]] == ["search", "limit", "answer"]
    rewards, details = score_tree(CharPolicy(), tree, ["Paris"], -1.0, config)
    assert list(rewards.values()) == [-1.0]
    assert details[0]["reason"] == "tool call past the tool-call limit"
    assert details[0]["em"] == 1.0  # still reported
    lenient = dataclasses.replace(config, over_limit_invalid=False)
    assert list(score_tree(CharPolicy(), tree, ["Paris"], -1.0, lenient)[0].values()) == [1.0]


def test_default_rules_are_the_reference_codes():
    """score_tree without rules applies SearchEnvConfig's defaults (both incentives on)."""
    tree, _ = grow([SEARCH, SEARCH, ANSWER], env_config=SearchEnvConfig(max_tool_calls=1))
    assert list(score_tree(CharPolicy(), tree, ["Paris"], -1.0)[0].values()) == [-1.0]


def test_no_per_turn_cap_by_default_a_1500_token_turn_is_valid():
    """The paper and reference cap only the whole response (6192 tokens)."""
    filler = "x" * (1500 - len("<think></think><answer>\\boxed{Paris}</answer>") - 1)
    turn = f"<think>{filler}</think><answer>\\boxed{{Paris}}</answer>{EOS}"
    assert len(turn) == 1500
    tree_cfg = dataclasses.replace(
        TreeConfig(), num_chains=1, rounds=0, picks=0, expansion="chains"
    )
    tree, engine = grow([turn], tree=tree_cfg)
    assert engine.budgets == [6192]
    (leaf,) = tree.leaves()
    assert (tree.nodes[leaf].outcome, len(tree.nodes[leaf].model_tokens)) == ("answer", 1500)
    assert list(score_tree(CharPolicy(), tree, ["Paris"], -1.0)[0].values()) == [1.0]


def test_a_per_turn_cap_is_still_an_option():
    tree_cfg = dataclasses.replace(CHAIN, max_turn_tokens=10)
    tree, engine = grow([ANSWER], tree=tree_cfg)
    assert engine.budgets == [10] and tree.nodes[1].outcome == "invalid"
    with pytest.raises(ValueError, match="max_turn_tokens"):
        TreeConfig(max_turn_tokens=0)


def test_eos_after_the_answer_is_trained():
    """The turn runs past ``</answer>`` to EOS (not a stop string by default), and the EOS
    is a model token with loss mask 1, as in the reference."""
    assert "</answer>" not in SearchEnvConfig().stop_strings
    tree, _ = grow([SEARCH, ANSWER])
    rows = flatten([tree], [np.zeros(len(tree.nodes))], pad_id=0)
    n = int(rows.segment_ids[0].sum())
    assert chr(rows.tokens[0, n - 1]) == EOS and rows.loss_mask[0, n - 1] == 1.0
    text = CharTokenizer.decode(rows.tokens[0, :n].tolist())
    assert text.endswith("</answer>" + EOS)
