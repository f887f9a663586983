"""AT²PO tree credit on a hand-built tree, every weighting and every advantage mode.

The tree (node: parent, entropy H, reward r):

    0 root
    ├── 1  (H=0.5)
    │   ├── 3  (H=1.0, r=1)
    │   └── 4  (H=3.0, r=0)
    └── 2  (H=1.5, r=1)

Leaf rewards (ascending leaf id 2, 3, 4) are 1, 1, 0: mean 2/3, population variance
(2·(1/3)² + (2/3)²)/3 = 2/9, std √2/3. With k = (1/3) / (√2/3 + 1e-6):
r̂2 = r̂3 = k, r̂4 = −2k.
"""

import math

import numpy as np
import pytest

from rlpt_jax.algos.tree_credit import CreditConfig, tree_credit

PARENTS = [-1, 0, 0, 1, 1]
ENTROPY = [0.0, 0.5, 1.5, 1.0, 3.0]
REWARD = {2: 1.0, 3: 1.0, 4: 0.0}
K = (1 / 3) / (math.sqrt(2) / 3 + 1e-6)


def _softmax_pair(h_a: float, v_a: float, h_b: float, v_b: float) -> float:
    return (math.exp(h_a) * v_a + math.exp(h_b) * v_b) / (math.exp(h_a) + math.exp(h_b))


def _expected_values(weighting: str) -> list[float]:
    v2, v3, v4 = K, K, -2 * K
    if weighting == "linear":
        # V1 = (1.0·k + 3.0·(−2k)) / 4 = −5k/4;  V0 = (0.5·V1 + 1.5·V2) / 2 = 7k/16.
        v1 = -5 * K / 4
        v0 = 7 * K / 16
    elif weighting == "softmax":
        # Weights e^H / Σ e^H over the children.
        v1 = _softmax_pair(1.0, v3, 3.0, v4)
        v0 = _softmax_pair(0.5, v1, 1.5, v2)
    elif weighting == "mean":
        # V1 = (k − 2k)/2 = −k/2;  V0 = (−k/2 + k)/2 = k/4.
        v1 = -K / 2
        v0 = K / 4
    else:  # leaf_mean
        # V1 = mean(r̂3, r̂4) = −k/2;  V0 = mean of all leaves = (k + k − 2k)/3 = 0.
        v1 = -K / 2
        v0 = 0.0
    return [v0, v1, v2, v3, v4]


def _expected_advantages(values: list[float], mode: str) -> list[float]:
    parent = [None, 0, 0, 1, 1]
    adv = [0.0]  # the root carries no tokens: 0 by convention in every mode
    for node in range(1, 5):
        v, vp, vr = values[node], values[parent[node]], values[0]
        adv.append(
            {
                "value": v,
                "value_minus_parent": v - vp,
                "value_minus_root": v - vr,
                "parent_plus_root": (v - vp) + (v - vr),
            }[mode]
        )
    return adv


@pytest.mark.parametrize("weighting", ["linear", "softmax", "mean", "leaf_mean"])
@pytest.mark.parametrize(
    "mode", ["value", "value_minus_parent", "value_minus_root", "parent_plus_root"]
)
def test_every_weighting_and_advantage_mode(weighting: str, mode: str):
    got = tree_credit(PARENTS, ENTROPY, REWARD, CreditConfig(weighting=weighting, advantage=mode))
    want_v = _expected_values(weighting)
    np.testing.assert_allclose(got.values, want_v, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        got.advantages, _expected_advantages(want_v, mode), rtol=1e-12, atol=1e-15
    )
    assert got.values.dtype == np.float64 and got.advantages.dtype == np.float64
    np.testing.assert_array_equal(got.leaves, [2, 3, 4])


def test_default_is_paper_linear_value():
    got = tree_credit(PARENTS, ENTROPY, REWARD)
    # Node 1 (value −5k/4) is the paper's A for every token of turn 1.
    assert got.advantages[1] == pytest.approx(-5 * K / 4, rel=1e-12)


def test_weightings_differ_on_this_tree():
    # Guard against a test that passes because all weightings collapse to one formula.
    v1 = {
        w: tree_credit(PARENTS, ENTROPY, REWARD, CreditConfig(weighting=w)).values[1]
        for w in ("linear", "softmax", "mean")
    }
    assert len({round(v, 9) for v in v1.values()}) == 3


def test_array_rewards_ignore_inner_entries_and_any_node_order():
    # Same tree, node ids permuted so a child (1) precedes its parent (3):
    # old 0→0, 1→3, 2→4, 3→1, 4→2.
    parents = [-1, 3, 3, 0, 0]
    entropy = [0.0, 1.0, 3.0, 0.5, 1.5]
    rewards = [np.nan, 1.0, 0.0, np.nan, 1.0]
    got = tree_credit(parents, entropy, rewards)
    v = _expected_values("linear")
    np.testing.assert_allclose(got.values, [v[0], v[3], v[4], v[1], v[2]], rtol=1e-12)


def test_linear_zero_entropy_children_fall_back_to_uniform():
    # Root → 1 → {2 (r=1), 3 (r=0)}, both children H=0. r̂ = ±1/(0.5 + 1e-6);
    # uniform weights give V1 = 0, V0 = V1 = 0.
    got = tree_credit([-1, 0, 1, 1], [0.0, 0.2, 0.0, 0.0], {2: 1.0, 3: 0.0})
    z = 0.5 / (0.5 + 1e-6)
    np.testing.assert_allclose(got.values, [0.0, 0.0, z, -z], atol=1e-15)


def test_equal_rewards_give_exact_zeros():
    got = tree_credit(PARENTS, ENTROPY, {2: 0.3, 3: 0.3, 4: 0.3})
    assert np.all(got.values == 0.0) and np.all(got.advantages == 0.0)


@pytest.mark.parametrize(
    ("parents", "rewards", "match"),
    [
        ([0, 0, 0], {1: 1.0, 2: 0.0}, "node 0 must be the root"),
        ([-1, 0, -1], {1: 1.0, 2: 0.0}, "node 2 has parent -1"),
        ([-1, 0, 7], {1: 1.0, 2: 0.0}, "node 2 has parent 7"),
        ([-1, 0, 2], {1: 1.0}, "node 2 is its own parent"),
        ([-1, 0, 3, 2], {1: 1.0}, "node 2 never reaches the root"),
        ([-1, 0, 0], {1: 1.0}, "leaf node 2 has no reward"),
        ([-1, 0, 1], {1: 1.0, 2: 0.0}, "node 1, which is not a leaf"),
        ([-1], {}, "at least one turn"),
    ],
)
def test_malformed_trees_name_the_node(parents, rewards, match):
    with pytest.raises(ValueError, match=match):
        tree_credit(parents, [0.0] * len(parents), rewards)


def test_bad_inputs():
    with pytest.raises(ValueError, match="entropy of node 2"):
        tree_credit([-1, 0, 0], [0.0, 1.0, -0.5], {1: 1.0, 2: 0.0})
    with pytest.raises(ValueError, match="leaf node 2 has non-finite reward"):
        tree_credit([-1, 0, 0], [0.0, 1.0, 1.0], [0.0, 1.0, np.nan])
    with pytest.raises(ValueError, match="one entry per node"):
        tree_credit([-1, 0, 0], [0.0, 1.0], {1: 1.0, 2: 0.0})
    with pytest.raises(ValueError, match="weighting='max'"):
        CreditConfig(weighting="max")
    with pytest.raises(ValueError, match="advantage='q'"):
        CreditConfig(advantage="q")


# -- the reference code's "vanilla" mode (no credit assignment) ------------------------


def test_vanilla_is_each_leafs_group_advantage_on_its_whole_path():
    """Leaves 2, 3, 4 (rewards 1, 1, 0) are one group. Population std (default): the
    z-scores are K, K, −2K as in the module docstring. Sample std (verl): mean 2/3, sum of
    squares 2/3, std √(1/3), so 1/3 / (√(1/3) + 1e-6) and −2/3 / (√(1/3) + 1e-6).
    Node 1 lies on the paths of leaves 3 and 4, which carry different advantages: it has
    none of its own (NaN), the rows carry them (``leaf_advantages``)."""
    from rlpt_jax.algos.advantages import AdvantageConfig

    got = tree_credit(PARENTS, ENTROPY, REWARD, CreditConfig(advantage="vanilla"))
    np.testing.assert_allclose(got.leaf_advantages, [K, K, -2 * K], rtol=1e-12)
    np.testing.assert_array_equal(got.leaves, [2, 3, 4])
    assert got.advantages[0] == 0.0 and np.isnan(got.advantages[1])
    np.testing.assert_allclose(got.advantages[2:], [K, K, -2 * K], rtol=1e-12)

    s = math.sqrt(1 / 3) + 1e-6
    verl = tree_credit(
        PARENTS, ENTROPY, REWARD, CreditConfig(advantage="vanilla"), AdvantageConfig(std_ddof=1)
    )
    np.testing.assert_allclose(verl.leaf_advantages, [1 / 3 / s, 1 / 3 / s, -2 / 3 / s])
    # Equal rewards: no signal, exactly.
    flat = tree_credit(
        PARENTS, ENTROPY, {2: 0.3, 3: 0.3, 4: 0.3}, CreditConfig(advantage="vanilla")
    )
    assert np.all(flat.leaf_advantages == 0.0)
    # The other modes have one advantage per node and no per-leaf override.
    assert tree_credit(PARENTS, ENTROPY, REWARD).leaf_advantages is None


def test_vanilla_rows_carry_their_leafs_advantage_on_shared_turns():
    """The batch built from a tree in vanilla mode: the shared turn (node 1) carries leaf
    3's advantage in leaf 3's row and leaf 4's in leaf 4's (not one value for both)."""
    from rlpt_jax.rollout.at2po import _vanilla_rows
    from rlpt_jax.rollout.tree import Tree, flatten

    tree = Tree.new(0, [1, 2])
    for parent, tool, model in ((0, [], [10, 11]), (0, [], [12]), (1, [7], [13]), (1, [7], [14])):
        node = tree.add(parent, tool, 0)
        node.model_tokens, node.logps = model, [-0.5] * len(model)
    credit = tree_credit(tree.parents, ENTROPY, REWARD, CreditConfig(advantage="vanilla"))
    rows = flatten([tree], [credit.advantages], pad_id=0)
    adv = _vanilla_rows(rows, [credit])
    by_leaf = {leaf: i for i, (_, leaf) in enumerate(rows.leaf)}
    # row of leaf 2: prompt (2 tokens), node 2's one model token
    np.testing.assert_allclose(adv[by_leaf[2]], [0, 0, K, 0, 0, 0], rtol=1e-6)
    # rows of leaves 3/4: prompt, node 1 (2 model tokens), tool token, the leaf's token
    np.testing.assert_allclose(adv[by_leaf[3]], [0, 0, K, K, 0, K], rtol=1e-6)
    np.testing.assert_allclose(adv[by_leaf[4]], [0, 0, -2 * K, -2 * K, 0, -2 * K], rtol=1e-6)
    assert not np.isnan(adv).any()
