"""Turn trees: entropy-guided expansion with a scripted policy, and flattening."""

import numpy as np
import pytest

from rlpt_jax.algos.tree_credit import CreditConfig, tree_credit
from rlpt_jax.envs.search_env import StepResult
from rlpt_jax.rollout.tree import (
    Tree,
    TreeConfig,
    TreeRollout,
    TurnSample,
    expansion_scores,
    flatten,
    select_nodes,
)

SEARCH, ANSWER, RESULT = 1, 2, 3
WORDS = {SEARCH: "S", ANSWER: "A", RESULT: "R"}


class ScriptedEngine:
    """Rows are token lists; each generate() pops the next scripted turn per row, in order."""

    def __init__(self, script):
        self.script = list(script)
        self.rows = {}
        self.next = 0
        self.forks = []

    def _new(self, tokens):
        self.rows[self.next] = list(tokens)
        self.next += 1
        return self.next - 1

    def start(self, prompts):
        return [self._new(p) for p in prompts]

    def fork(self, requests):
        return [self.fork_one(*r) for r in requests]

    def fork_one(self, row, length, m):
        self.forks.append((tuple(self.rows[row][:length]), m))
        return [self._new(self.rows[row][:length]) for _ in range(m)]

    def extend(self, rows, tokens):
        for r, t in zip(rows, tokens):
            self.rows[r] += list(t)

    def generate(self, rows, max_new_tokens):
        out = []
        for r in rows:
            tok, logp = self.script.pop(0)
            self.rows[r].append(tok)
            out.append(TurnSample([tok], [logp], [0.0], "stop" if tok == SEARCH else "eos"))
        return out

    def release(self, rows):
        for r in rows:
            self.rows.pop(r, None)


class ScriptedEnv:
    def step_batch(self, turns):
        out = []
        for text, calls in turns:
            if text == "S":
                out.append(StepResult("search", False, "R", calls + 1, "q", ""))
            else:
                out.append(StepResult("answer", True, "", calls, None, ""))
        return out


def _rollout(script, cfg):
    engine = ScriptedEngine(script)
    ro = TreeRollout(
        engine,
        ScriptedEnv(),
        lambda ids: "".join(WORDS[i] for i in ids),
        lambda text: [RESULT] * len(text),
        cfg,
    )
    return ro.run([[7, 8, 9]])[0], engine


def test_entropy_guided_expansion_by_hand():
    # Round 0: chains a, b, c. a: S (H=1) then A (H=.1); b: S (H=2) then A (H=.3); c: A (H=.5)
    # Generation order per engine call: [a1, b1, c1], then [a2, b2].
    # Round 1 scores (root has 3 children, penalty α·(3−1) = 1.0 with α = 0.5):
    #   candidates = non-leaf turns {1 (a1), 2 (b1)}: score 1 = 1 − 1 = 0, score 2 = 2 − 1 = 1
    #   K = 2 picks: [2, 1]. Sibling of 2 -> node 6 (S, H=3, then node 8: A),
    #   sibling of 1 -> node 7 (A, H=.2, leaf). Call order: [6, 7], then [8].
    # Round 2: root has 5 children, penalty α·4 = 2.0. Non-leaf turns: 1 (H=1), 2 (H=2),
    #   6 (H=3): scores −1, 0, 1 -> picks [6, 2]. New siblings 9 (A) and 10 (A).
    script = [
        (SEARCH, -1.0),
        (SEARCH, -2.0),
        (ANSWER, -0.5),
        (ANSWER, -0.1),
        (ANSWER, -0.3),
        (SEARCH, -3.0),
        (ANSWER, -0.2),
        (ANSWER, -0.4),
        (ANSWER, -0.6),
        (ANSWER, -0.7),
    ]
    cfg = TreeConfig(num_chains=3, rounds=2, picks=2, alpha=0.5)
    tree, engine = _rollout(script, cfg)
    assert not engine.script  # every scripted turn was used
    assert tree.parents == [-1, 0, 0, 0, 1, 2, 0, 0, 6, 0, 0]
    assert sorted(tree.leaves()) == [3, 4, 5, 7, 8, 9, 10]
    assert len(tree.leaves()) == cfg.num_leaves == 7
    # Node 8 continues node 6 after its search: it holds the tokenised result.
    assert tree.nodes[8].tool_tokens == [RESULT]
    # Forks: the prompt into 3 chains, then at the root prefix (length 3) for each pick.
    assert engine.forks[0] == ((7, 8, 9), 3)
    assert all(f == ((7, 8, 9), 1) for f in engine.forks[1:])


def test_scores_and_repeat_best_when_few_candidates():
    tree = Tree.new(0, [5])
    a = tree.add(0, [], 0)
    a.logps = [-1.0, -3.0]  # H = 2
    b = tree.add(a.id, [9], 1)
    b.logps = [-0.5]
    # Only node a is a non-leaf candidate; its parent (root) has one child -> no penalty.
    assert expansion_scores(tree, alpha=0.05) == {a.id: 2.0}
    assert select_nodes(tree, TreeConfig(picks=3)) == [a.id, a.id, a.id]


def test_chains_mode_is_independent_chains():
    script = [(ANSWER, -0.1)] * 5
    tree, engine = _rollout(script, TreeConfig(num_chains=3, rounds=1, picks=2, expansion="chains"))
    assert tree.parents == [-1, 0, 0, 0, 0, 0]
    assert engine.forks == [((7, 8, 9), 5)]


def test_one_chain_continues_the_prompt_row_without_a_fork():
    """Greedy evaluation grows one chain per question: it takes the prompt's own row, so
    that the cache holds one row per question, not a prompt row plus a forked copy."""
    script = [(SEARCH, -1.0), (ANSWER, -0.1)]
    tree, engine = _rollout(script, TreeConfig(num_chains=1, rounds=0, picks=0, expansion="chains"))
    assert engine.forks == []
    assert tree.parents == [-1, 0, 1]
    assert list(engine.rows) == [0]  # the prompt's row, now the whole trajectory
    assert engine.rows[0] == [7, 8, 9, SEARCH, RESULT, ANSWER]


def test_flatten_known_tree():
    # root prompt [10, 11]; node 1: model [20, 21] (search); node 2 under 1: tool [30], model [40]
    # node 3 under root: model [50] (leaf)
    tree = Tree.new(0, [10, 11])
    n1 = tree.add(0, [], 0)
    n1.model_tokens, n1.logps = [20, 21], [-0.1, -0.2]
    n2 = tree.add(n1.id, [30], 1)
    n2.model_tokens, n2.logps = [40], [-0.3]
    n3 = tree.add(0, [], 0)
    n3.model_tokens, n3.logps = [50], [-0.4]
    adv = np.array([0.0, 0.5, 1.5, -2.0])
    rows = flatten([tree], [adv], pad_id=0)
    assert rows.leaf == [(0, 2), (0, 3)]
    np.testing.assert_array_equal(rows.tokens, [[10, 11, 20, 21, 30, 40], [10, 11, 50, 0, 0, 0]])
    np.testing.assert_array_equal(rows.positions, [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 0, 0]])
    np.testing.assert_array_equal(rows.segment_ids, [[1] * 6, [1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(rows.loss_mask, [[0, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(rows.turn_ids, [[-1, -1, 0, 0, -1, 1], [-1, -1, 0, -1, -1, -1]])
    np.testing.assert_allclose(rows.advantages, [[0, 0, 0.5, 0.5, 0, 1.5], [0, 0, -2, 0, 0, 0]])
    np.testing.assert_allclose(rows.old_logp, [[0, 0, -0.1, -0.2, 0, -0.3], [0, 0, -0.4, 0, 0, 0]])
    assert tree.unique_tokens() == 7 and tree.leaf_tokens() == 9


def test_flattened_advantages_come_from_tree_credit():
    tree = Tree.new(0, [1])
    for lp in (-1.0, -2.0):
        n = tree.add(0, [], 0)
        n.model_tokens, n.logps = [3], [lp]
    credit = tree_credit(tree.parents, tree.entropies, {1: 1.0, 2: 0.0}, CreditConfig())
    rows = flatten([tree], [credit.advantages], pad_id=0)
    # z-scores of rewards (1, 0): mean .5, population std .5 -> ±1/(1+2e-6)
    np.testing.assert_allclose(rows.advantages[:, 1], [1 / (1 + 2e-6), -1 / (1 + 2e-6)], rtol=1e-6)


def test_bad_config_and_prompts():
    with pytest.raises(ValueError, match="unknown expansion"):
        TreeConfig(expansion="beam")
    engine = ScriptedEngine([])
    ro = TreeRollout(engine, ScriptedEnv(), str, list, TreeConfig())
    with pytest.raises(ValueError, match="empty prompt"):
        ro.run([[]])
