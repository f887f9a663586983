"""AT²PO turn-wise credit assignment on a host-side turn tree (spec at2po.md, section 2).

Shape legend: N nodes of one prompt's tree. The tree is flat arrays indexed by node id:
``parents[N]`` (node 0 is the root = the prompt, parent −1; every other node is one
model turn), ``entropy[N]`` (mean negative log-prob of the node's sampled tokens; the
root's entry is ignored) and the leaf rewards. Trees live on the host, so this is plain
numpy float64; the batch builder copies each node's advantage onto its turn's tokens.

Steps (AT²PO, arXiv 2601.04767; spec at2po.md §2):

1. Leaf rewards are z-scored within the tree, ``r̂ = (r − mean) / (std + 1e-6)``, with
   the population std; a tree whose leaves all have the same reward gets ``r̂ = 0``.
2. Values are backed up from the leaves: leaf ``V = r̂``; inner
   ``V(n) = Σ_c w_c V(c)`` over the children ``c`` of ``n``, weights per ``WEIGHTINGS``.
3. A node's advantage is read off the values per ``ADVANTAGE_MODES``; every model token
   of the node's turn gets it.

The root carries no model tokens; its advantage is reported as 0 in every mode.

``"vanilla"`` is the reference code's ablation without credit assignment (its
``node_adv_mode=vanilla``, the "random tree + GRPO" and Tree-GRPO rows of the paper):
each leaf's reward gets a group advantage over the tree's leaves (verl's GRPO, here
:func:`rlpt_jax.algos.advantages.group_advantages`) and every turn on the leaf's path
carries it in that leaf's training row. A turn shared by several leaves then has one
advantage per row, not one per node: :attr:`TreeCredit.leaf_advantages` holds them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rlpt_jax.algos.advantages import AdvantageConfig, group_advantages

Weighting = Callable[[np.ndarray], np.ndarray]


def _linear_weights(child_entropy: np.ndarray) -> np.ndarray:
    """Paper: ``w_c = H_c / Σ_c' H_c'``. If all children have zero entropy (fully
    deterministic turns) the ratio is undefined and the weights fall back to uniform."""
    total = child_entropy.sum()
    if total == 0.0:
        return np.full_like(child_entropy, 1.0 / child_entropy.size)
    return child_entropy / total


def _softmax_weights(child_entropy: np.ndarray) -> np.ndarray:
    """Reference code: ``w_c = exp(H_c) / Σ_c' exp(H_c')`` (max-shifted for stability)."""
    e = np.exp(child_entropy - child_entropy.max())
    return e / e.sum()


def _uniform_weights(child_entropy: np.ndarray) -> np.ndarray:
    """Ablation: plain mean over children, ``w_c = 1 / |children|``."""
    return np.full_like(child_entropy, 1.0 / child_entropy.size)


# "leaf_mean" (TreeRL) is not a per-child weighting: V(n) is the mean of r̂ over all
# leaves under n, which weights a child by its number of leaves. Handled separately.
WEIGHTINGS: dict[str, Weighting | None] = {
    "linear": _linear_weights,
    "softmax": _softmax_weights,
    "mean": _uniform_weights,
    "leaf_mean": None,
}

ADVANTAGE_MODES: dict[str, str] = {
    "value": "A(n) = V(n)  (paper default, best)",
    "value_minus_parent": "A(n) = V(n) − V(parent(n))",
    "value_minus_root": "A(n) = V(n) − V(root)",
    "parent_plus_root": "A(n) = [V(n) − V(parent(n))] + [V(n) − V(root)]",
    "vanilla": "A = group advantage of the row's leaf, on every turn of its path",
}


@dataclass(frozen=True)
class CreditConfig:
    """Tree credit options. Defaults are the paper's (linear weights, ``A = V``)."""

    weighting: str = "linear"
    advantage: str = "value"
    reward_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"CreditConfig.weighting={self.weighting!r}; expected one of {sorted(WEIGHTINGS)}"
            )
        if self.advantage not in ADVANTAGE_MODES:
            raise ValueError(
                f"CreditConfig.advantage={self.advantage!r}; "
                f"expected one of {sorted(ADVANTAGE_MODES)}"
            )
        if not self.reward_eps > 0:
            raise ValueError(f"CreditConfig.reward_eps must be > 0; got {self.reward_eps}")


class TreeCredit(NamedTuple):
    """Per-node results, float64 ``[N]``; ``leaves`` are the leaf node ids, ascending.

    ``leaf_advantages`` (``"vanilla"`` only, else None) is ``[len(leaves)]``: the
    advantage every turn of that leaf's row carries. A per-node advantage then exists only
    where one leaf lies below the node; ``advantages`` is NaN on turns that several leaves
    share, so that a batch built from it by mistake fails validation instead of training.
    """

    values: np.ndarray
    advantages: np.ndarray
    leaves: np.ndarray
    leaf_advantages: np.ndarray | None = None


def tree_credit(
    parents: Sequence[int],
    entropy: Sequence[float],
    leaf_reward: Mapping[int, float] | Sequence[float] | np.ndarray,
    cfg: CreditConfig = CreditConfig(),
    group: AdvantageConfig | None = None,
) -> TreeCredit:
    """Turn values and advantages of one tree.

    ``leaf_reward`` is either a mapping ``{leaf id: reward}`` that must hold exactly the
    leaves, or an ``[N]`` array whose entries at leaves are used (inner entries ignored).
    ``group`` is the leaves' group advantage of the ``"vanilla"`` mode (default: GRPO's
    z-score, population std; unused by the other modes).
    Raises ``ValueError`` naming the offending node for a malformed tree.
    """
    par = _validate_parents(parents)
    n = par.size
    children = _children(par)
    leaves = np.array([i for i in range(1, n) if not children[i]], dtype=np.int64)
    ent = _validate_entropy(entropy, n)
    rewards = _leaf_rewards(leaf_reward, n, leaves)

    r_hat = _normalise(rewards, cfg.reward_eps)
    values = np.zeros(n, dtype=np.float64)
    values[leaves] = r_hat
    order = _bottom_up(children)
    if cfg.weighting == "leaf_mean":
        _backup_leaf_mean(values, children, order)
    else:
        weigh = WEIGHTINGS[cfg.weighting]
        for node in order:
            kids = children[node]
            if kids:
                values[node] = weigh(ent[kids]) @ values[kids]

    if cfg.advantage == "vanilla":
        return _vanilla(values, par, leaves, rewards, group or AdvantageConfig())
    return TreeCredit(values, _advantages(values, par, cfg.advantage), leaves)


def _validate_parents(parents: Sequence[int]) -> np.ndarray:
    par = np.asarray(parents)
    if par.ndim != 1 or par.size < 2:
        raise ValueError(
            f"parents must be a flat sequence with the root and at least one turn; "
            f"got shape {par.shape}"
        )
    if not np.issubdtype(par.dtype, np.integer):
        raise ValueError(f"parents must be integers; got dtype {par.dtype}")
    n = par.size
    if par[0] != -1:
        raise ValueError(f"node 0 must be the root (parent -1); its parent is {par[0]}")
    for node in range(1, n):
        p = int(par[node])
        if p == -1:
            raise ValueError(f"node {node} has parent -1 but only node 0 may be the root")
        if not 0 <= p < n:
            raise ValueError(f"node {node} has parent {p}, which is not a node (0..{n - 1})")
        if p == node:
            raise ValueError(f"node {node} is its own parent")
    # With one root and in-range parents, a node is unreachable from the root iff its
    # chain of parents loops; walk each chain at most n steps.
    for node in range(1, n):
        seen, cur = 0, node
        while cur != 0:
            cur = int(par[cur])
            seen += 1
            if seen > n:
                raise ValueError(f"node {node} never reaches the root: its parent chain loops")
    return par.astype(np.int64)


def _children(par: np.ndarray) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in range(par.size)]
    for node in range(1, par.size):
        kids[int(par[node])].append(node)
    return kids


def _validate_entropy(entropy: Sequence[float], n: int) -> np.ndarray:
    ent = np.asarray(entropy, dtype=np.float64)
    if ent.shape != (n,):
        raise ValueError(f"entropy must have one entry per node, shape ({n},); got {ent.shape}")
    for node in range(1, n):
        if not np.isfinite(ent[node]) or ent[node] < 0:
            raise ValueError(
                f"entropy of node {node} is {ent[node]}; a mean negative log-prob is finite "
                f"and >= 0"
            )
    return ent


def _leaf_rewards(
    leaf_reward: Mapping[int, float] | Sequence[float] | np.ndarray,
    n: int,
    leaves: np.ndarray,
) -> np.ndarray:
    if isinstance(leaf_reward, Mapping):
        leaf_set = {int(i) for i in leaves}
        for node in leaf_reward:
            if node not in leaf_set:
                raise ValueError(f"leaf_reward has an entry for node {node}, which is not a leaf")
        missing = [int(i) for i in leaves if int(i) not in leaf_reward]
        if missing:
            raise ValueError(f"leaf node {missing[0]} has no reward (missing: {missing})")
        rewards = np.array([leaf_reward[int(i)] for i in leaves], dtype=np.float64)
    else:
        full = np.asarray(leaf_reward, dtype=np.float64)
        if full.shape != (n,):
            raise ValueError(
                f"leaf_reward as an array must have one entry per node, shape ({n},); "
                f"got {full.shape}"
            )
        rewards = full[leaves]
    for node, r in zip(leaves, rewards):
        if not np.isfinite(r):
            raise ValueError(f"leaf node {node} has non-finite reward {r}")
    return rewards


def _normalise(rewards: np.ndarray, eps: float) -> np.ndarray:
    """``(r − mean) / (std + eps)``, population std; exactly 0 when all rewards agree."""
    if np.all(rewards == rewards[0]):
        return np.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std() + eps)


def _bottom_up(children: list[list[int]]) -> list[int]:
    """Node ids ordered so that every child comes before its parent."""
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(children[node])
    return order[::-1]


def _backup_leaf_mean(values: np.ndarray, children: list[list[int]], order: list[int]) -> None:
    """TreeRL: ``V(n) = mean of r̂ over the leaves of n's subtree`` (in place)."""
    leaf_sum = values.copy()
    leaf_count = np.zeros_like(values)
    for node in order:
        kids = children[node]
        if kids:
            leaf_sum[node] = leaf_sum[kids].sum()
            leaf_count[node] = leaf_count[kids].sum()
        else:
            leaf_count[node] = 1.0
    values[:] = leaf_sum / leaf_count


def _advantages(values: np.ndarray, par: np.ndarray, mode: str) -> np.ndarray:
    parent_value = np.concatenate([[values[0]], values[par[1:]]])
    minus_parent = values - parent_value
    minus_root = values - values[0]
    adv = {
        "value": values,
        "value_minus_parent": minus_parent,
        "value_minus_root": minus_root,
        "parent_plus_root": minus_parent + minus_root,
    }[mode].copy()
    adv[0] = 0.0
    return adv


def _vanilla(
    values: np.ndarray,
    par: np.ndarray,
    leaves: np.ndarray,
    rewards: np.ndarray,
    group: AdvantageConfig,
) -> TreeCredit:
    """The reference code's ``node_adv_mode=vanilla``: no credit assignment.

    The leaves of the tree are one group (verl's ``uid`` per tree); each leaf's group
    advantage is broadcast over its whole row, shared turns included.
    """
    leaf_adv = np.asarray(group_advantages(rewards[None, :], group), np.float64)[0]
    below: list[list[int]] = [[] for _ in range(par.size)]  # leaf positions under each node
    for pos, leaf in enumerate(leaves):
        node = int(leaf)
        while node > 0:
            below[node].append(pos)
            node = int(par[node])
    adv = np.full(par.size, np.nan)
    adv[0] = 0.0
    for node in range(1, par.size):
        if len(below[node]) == 1:
            adv[node] = leaf_adv[below[node][0]]
    return TreeCredit(values, adv, leaves, leaf_adv)
