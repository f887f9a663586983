"""AT²PO turn trees in host memory: rollout, entropy-guided expansion and flattening.

A tree per prompt. Node 0 is the root and holds the prompt's token ids; every other node
is one model *turn*: the tool tokens it received (the result of its parent's search, or
the limit notice; masked out of the loss) followed by the tokens the policy sampled until
``</search>``, EOS or the length budget. Token ids are kept exactly as sampled and tool
results are tokenised on their own: nothing is ever decoded and re-tokenised for training.

Growth (spec at2po.md §1):

1. ``M`` independent chains per tree (the prompt is prefilled once and forked).
2. ``L`` expansion rounds. Among the tree's non-leaf turn nodes, score
   ``score(n) = H(n) − α·(|children(parent(n))| − 1)``, with ``H(n)`` the mean negative
   log-prob of the turn's sampled tokens; pick the top ``K`` (if fewer candidates than
   ``K``, the best is repeated). Each pick adds a sibling of ``n``: the state just before
   ``n`` acted (ancestors, then ``n``'s tool tokens) is forked — not recomputed — and a new
   action is sampled and rolled out to the end. Every pick adds exactly one leaf, so a
   tree ends with ``M + L·K`` leaves.

Alternatives: ``random`` expansion (picks uniformly among the same candidates, Tree-GRPO
style) and ``chains`` (``M + L·K`` independent chains, no tree).

The rollout talks to the policy only through :class:`TurnEngine` (implemented over the
KV-cache sampler by :mod:`rlpt_jax.rollout.engine`), and to tools only through an
environment with ``step_batch`` (e.g. :class:`rlpt_jax.envs.search_env.SearchEnv`).
All active rows of all trees are advanced together in one engine call per turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from rlpt_jax.batch import PackedBatch

EXPANSIONS = ("entropy", "random", "chains")


@dataclasses.dataclass
class TurnSample:
    """What the policy produced for one row in one turn."""

    tokens: list[int]
    logps: list[float]
    entropies: list[float]
    finish: str  # "eos" | "stop" | "length"


class TurnEngine(Protocol):
    """The policy as the rollout sees it: rows of token history with a shared KV cache.

    A *row* is an opaque handle to a growing token sequence. ``fork`` takes
    ``(row, length, m)`` requests; each makes ``m`` new rows sharing the first ``length``
    tokens of ``row`` without recomputing them. A round's forks come in one call, so that
    the engine can copy its cache once for all of them.
    """

    def start(self, prompts: Sequence[Sequence[int]]) -> list[int]: ...

    def fork(self, requests: Sequence[tuple[int, int, int]]) -> list[list[int]]: ...

    def extend(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> None: ...

    def generate(self, rows: Sequence[int], max_new_tokens: Sequence[int]) -> list[TurnSample]: ...

    def release(self, rows: Sequence[int]) -> None: ...


class Env(Protocol):
    def step_batch(self, turns: Sequence[tuple[str, int]]) -> list: ...


@dataclasses.dataclass(frozen=True)
class TreeConfig:
    """Tree shape and budgets. Defaults: the AT²PO paper (α from the reference code).

    Attributes:
      num_chains: ``M``, independent chains started per tree (paper: 10).
      rounds: ``L``, expansion rounds (paper: 2).
      picks: ``K``, nodes expanded per round (paper: 6).
      alpha: sibling penalty α (paper: none given; reference code: 0.05).
      expansion: ``entropy`` (paper), ``random`` (Tree-GRPO style) or ``chains``.
      max_response_tokens: budget of model + tool tokens after the prompt, per trajectory
        (paper: 6192).
      max_turn_tokens: budget of one turn; ``None`` (default) caps only the whole
        response, as the paper and the reference code do. A turn cut by this cap has
        neither an answer nor a search, so its trajectory ends invalid (−1).
      max_turns: safety cap on turns per trajectory.
      seed: seed of the ``random`` expansion.
    """

    num_chains: int = 10
    rounds: int = 2
    picks: int = 6
    alpha: float = 0.05
    expansion: str = "entropy"
    max_response_tokens: int = 6192
    max_turn_tokens: int | None = None
    max_turns: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.expansion not in EXPANSIONS:
            raise ValueError(f"unknown expansion {self.expansion!r}; valid: {list(EXPANSIONS)}")
        if self.num_chains < 1:
            raise ValueError(f"num_chains (M) must be >= 1, got {self.num_chains}")
        if self.rounds < 0 or self.picks < 0:
            raise ValueError(
                f"rounds (L) and picks (K) must be >= 0, got {self.rounds}, {self.picks}"
            )
        for name in ("max_response_tokens", "max_turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turn_tokens is not None and self.max_turn_tokens < 1:
            raise ValueError(
                f"max_turn_tokens must be >= 1 (or None: no cap), got {self.max_turn_tokens}"
            )

    def turn_budget(self, used: int) -> int:
        """Tokens the next turn may sample after ``used`` response tokens (at least 1)."""
        left = self.max_response_tokens - used
        if self.max_turn_tokens is not None:
            left = min(left, self.max_turn_tokens)
        return max(1, left)

    @property
    def num_leaves(self) -> int:
        return self.num_chains + self.rounds * self.picks


@dataclasses.dataclass
class Node:
    """One turn (or the root). ``tool_tokens`` precede ``model_tokens`` in the sequence."""

    id: int
    parent: int
    tool_tokens: list[int]
    model_tokens: list[int] = dataclasses.field(default_factory=list)
    logps: list[float] = dataclasses.field(default_factory=list)
    entropies: list[float] = dataclasses.field(default_factory=list)
    children: list[int] = dataclasses.field(default_factory=list)
    finish: str = ""
    outcome: str = ""  # environment outcome of the turn: answer/search/limit/invalid/...
    tool_calls: int = 0  # tool calls made by the trajectory up to and including this turn
    reward: float | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def turn_entropy(self) -> float:
        """``H(n)``: mean negative log-prob of the sampled tokens (0 for an empty turn)."""
        return float(-np.mean(self.logps)) if self.logps else 0.0

    @property
    def num_tokens(self) -> int:
        return len(self.tool_tokens) + len(self.model_tokens)


@dataclasses.dataclass
class Tree:
    """A prompt's tree. ``nodes[0]`` is the root (prompt tokens in ``tool_tokens``)."""

    prompt_index: int
    nodes: list[Node]

    @classmethod
    def new(cls, prompt_index: int, prompt_tokens: Sequence[int]) -> Tree:
        return cls(prompt_index, [Node(0, -1, list(prompt_tokens))])

    def add(self, parent: int, tool_tokens: Sequence[int], tool_calls: int) -> Node:
        node = Node(len(self.nodes), parent, list(tool_tokens), tool_calls=tool_calls)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root to ``node_id``."""
        out = []
        while node_id >= 0:
            out.append(node_id)
            node_id = self.nodes[node_id].parent
        return out[::-1]

    def prefix_length(self, node_id: int) -> int:
        """Tokens before ``node_id``'s model tokens: ancestors' tokens + its tool tokens."""
        path = self.path(node_id)
        return sum(self.nodes[i].num_tokens for i in path[:-1]) + len(
            self.nodes[node_id].tool_tokens
        )

    def leaves(self) -> list[int]:
        return [n.id for n in self.nodes[1:] if not n.children]

    @property
    def parents(self) -> list[int]:
        return [n.parent for n in self.nodes]

    @property
    def entropies(self) -> list[float]:
        return [n.turn_entropy for n in self.nodes]

    def unique_tokens(self) -> int:
        return sum(n.num_tokens for n in self.nodes)

    def leaf_tokens(self) -> int:
        """Tokens summed over root-to-leaf sequences (what independent chains would cost)."""
        return sum(sum(self.nodes[i].num_tokens for i in self.path(leaf)) for leaf in self.leaves())


def expansion_scores(tree: Tree, alpha: float) -> dict[int, float]:
    """``score(n) = H(n) − α·(|children(parent(n))| − 1)`` for every candidate node.

    Candidates are the non-leaf turn nodes; a tree whose turns are all leaves (every chain
    answered in one turn) falls back to all turn nodes, so it can still branch.
    """
    turns = [n for n in tree.nodes[1:]]
    candidates = [n for n in turns if n.children] or turns
    return {
        n.id: n.turn_entropy - alpha * (len(tree.nodes[n.parent].children) - 1) for n in candidates
    }


def select_nodes(tree: Tree, cfg: TreeConfig, rng: np.random.Generator | None = None) -> list[int]:
    """The ``K`` nodes to expand this round (repeats allowed, see module docstring)."""
    if cfg.picks == 0:
        return []
    scores = expansion_scores(tree, cfg.alpha)
    if not scores:
        return []
    ids = list(scores)
    if cfg.expansion == "random":
        rng = rng or np.random.default_rng(cfg.seed)
        return [int(x) for x in rng.choice(ids, size=cfg.picks, replace=len(ids) < cfg.picks)]
    # Stable order: higher score first, then lower node id.
    ranked = sorted(ids, key=lambda i: (-scores[i], i))
    picks = ranked[: cfg.picks]
    picks += [ranked[0]] * (cfg.picks - len(picks))
    return picks


@dataclasses.dataclass
class _Active:
    tree: Tree
    node: Node
    row: int
    used: int  # response tokens (model + tool) after the prompt so far


@dataclasses.dataclass
class RolloutStats:
    turns: int = 0
    tool_tokens: int = 0
    model_tokens: int = 0
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class TreeRollout:
    """Grows a batch of trees with a :class:`TurnEngine` and a tool environment.

    ``decode(ids) -> str`` is used only to show the environment a turn's text (to find a
    search query or an answer); the ids themselves are what the tree keeps.
    ``encode(text) -> ids`` tokenises tool results on their own.
    """

    def __init__(
        self,
        engine: TurnEngine,
        env: Env,
        decode: Callable[[Sequence[int]], str],
        encode: Callable[[str], list[int]],
        cfg: TreeConfig,
    ):
        self.engine = engine
        self.env = env
        self.decode = decode
        self.encode = encode
        self.cfg = cfg
        self.stats = RolloutStats()
        self._rng = np.random.default_rng(cfg.seed)

    def run(self, prompts: Sequence[Sequence[int]]) -> list[Tree]:
        cfg = self.cfg
        if not prompts:
            raise ValueError("no prompts to roll out")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        trees = [Tree.new(i, p) for i, p in enumerate(prompts)]
        chains = cfg.num_chains if cfg.expansion != "chains" else cfg.num_leaves
        roots = self.engine.start(prompts)
        if chains == 1:  # one chain (greedy evaluation): it continues the prompt's own row
            forks = [[root] for root in roots]
        else:
            forks = self.engine.fork(
                [(root, len(tree.nodes[0].tool_tokens), chains) for tree, root in zip(trees, roots)]
            )
            self.engine.release(roots)
        active = [
            _Active(tree, tree.add(0, [], 0), row, 0)
            for tree, rows in zip(trees, forks)
            for row in rows
        ]
        self._advance(active)
        if cfg.expansion != "chains":
            for _ in range(cfg.rounds):
                self._expand(trees)
        return trees

    # -- internals -------------------------------------------------------------------
    def _expand(self, trees: list[Tree]) -> None:
        picked = []
        for tree in trees:
            # Scores are fixed at the start of the round for every pick of this round.
            picked += [(tree, nid) for nid in select_nodes(tree, self.cfg, self._rng)]
        requests = [
            (self._row_through(tree, nid), tree.prefix_length(nid), 1) for tree, nid in picked
        ]
        active = []
        for (tree, nid), (_, length, _), (new_row,) in zip(
            picked, requests, self.engine.fork(requests)
        ):
            n = tree.nodes[nid]
            prev_calls = tree.nodes[n.parent].tool_calls if n.parent > 0 else 0
            sibling = tree.add(n.parent, n.tool_tokens, prev_calls)
            used = length - len(tree.nodes[0].tool_tokens)
            active.append(_Active(tree, sibling, new_row, used))
        self._advance(active)

    def _row_through(self, tree: Tree, node_id: int) -> int:
        """A live engine row whose history passes through ``node_id``."""
        stack = [node_id]
        while stack:
            n = tree.nodes[stack.pop()]
            if "row" in n.info:
                return n.info["row"]
            stack.extend(n.children)
        raise RuntimeError(f"no live row passes through node {node_id}")

    def _advance(self, active: list[_Active]) -> None:
        """Generate turns for all active rows until every trajectory has ended."""
        cfg = self.cfg
        while active:
            budgets = [cfg.turn_budget(a.used) for a in active]
            samples = self.engine.generate([a.row for a in active], budgets)
            texts = []
            for a, s in zip(active, samples):
                a.node.model_tokens = list(s.tokens)
                a.node.logps = list(s.logps)
                a.node.entropies = list(s.entropies)
                a.node.finish = s.finish
                a.used += len(s.tokens)
                self.stats.turns += 1
                self.stats.model_tokens += len(s.tokens)
                texts.append(self.decode(s.tokens))
            calls_before = [
                a.tree.nodes[a.node.parent].tool_calls if a.node.parent > 0 else 0 for a in active
            ]
            results = self.env.step_batch(list(zip(texts, calls_before)))
            still, to_extend, ext_tokens = [], [], []
            for a, res in zip(active, results):
                a.node.outcome = res.outcome
                a.node.tool_calls = res.tool_calls
                depth = len(a.tree.path(a.node.id)) - 1
                out_of_budget = a.used >= cfg.max_response_tokens or depth >= cfg.max_turns
                if res.done or out_of_budget or a.node.finish == "eos":
                    if not res.done:
                        a.node.outcome = "truncated" if a.node.finish != "eos" else res.outcome
                    self.stats.count(a.node.outcome)
                    a.node.info["row"] = a.row  # the leaf keeps its row for later forks
                    continue
                self.stats.count(res.outcome)
                tool = self.encode(res.append_text)
                room = cfg.max_response_tokens - a.used
                if len(tool) >= room:  # the result itself would exhaust the budget
                    a.node.outcome = "truncated"
                    self.stats.count("truncated")
                    a.node.info["row"] = a.row
                    continue
                self.stats.tool_tokens += len(tool)
                child = a.tree.add(a.node.id, tool, res.tool_calls)
                to_extend.append(a.row)
                ext_tokens.append(tool)
                still.append(_Active(a.tree, child, a.row, a.used + len(tool)))
            if to_extend:
                self.engine.extend(to_extend, ext_tokens)
            active = still


def release_rows(engine: TurnEngine, trees: Sequence[Tree]) -> None:
    rows = [n.info.pop("row") for t in trees for n in t.nodes if "row" in n.info]
    if rows:
        engine.release(rows)


@dataclasses.dataclass
class FlatRows:
    """Training rows of a batch of trees, one row per leaf, all ``[R, T]`` numpy arrays.

    ``loss_mask`` is 1 on model tokens; ``turn_ids`` numbers the turns of the row (0, 1, …
    on model tokens, −1 on prompt, tool and padding tokens); ``advantages`` carries each
    turn's node advantage; ``old_logp`` the sampling log-probs. ``leaf`` gives (tree index,
    leaf node id) per row.
    """

    tokens: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    loss_mask: np.ndarray
    turn_ids: np.ndarray
    advantages: np.ndarray
    old_logp: np.ndarray
    leaf: list[tuple[int, int]]


def flatten(
    trees: Sequence[Tree],
    advantages: Sequence[np.ndarray],
    pad_id: int,
    length: int | None = None,
) -> FlatRows:
    """Root-to-leaf rows of every tree, right-padded to ``length`` (default: the longest)."""
    seqs = []
    for ti, (tree, adv) in enumerate(zip(trees, advantages)):
        for leaf in tree.leaves():
            tok, mask, turn, a, lp = [], [], [], [], []
            for depth, nid in enumerate(tree.path(leaf)):
                n = tree.nodes[nid]
                tok += n.tool_tokens
                mask += [0] * len(n.tool_tokens)
                turn += [-1] * len(n.tool_tokens)
                a += [0.0] * len(n.tool_tokens)
                lp += [0.0] * len(n.tool_tokens)
                tok += n.model_tokens
                mask += [1] * len(n.model_tokens)
                turn += [depth - 1] * len(n.model_tokens)
                a += [float(adv[nid])] * len(n.model_tokens)
                lp += list(n.logps)
            seqs.append(((ti, leaf), tok, mask, turn, a, lp))
    longest = max(len(s[1]) for s in seqs)
    t = longest if length is None else length
    if t < longest:
        raise ValueError(f"rows need {longest} tokens but length={t}")
    r = len(seqs)
    out = FlatRows(
        tokens=np.full((r, t), pad_id, np.int32),
        positions=np.zeros((r, t), np.int32),
        segment_ids=np.zeros((r, t), np.int32),
        loss_mask=np.zeros((r, t), np.float32),
        turn_ids=np.full((r, t), -1, np.int32),
        advantages=np.zeros((r, t), np.float32),
        old_logp=np.zeros((r, t), np.float32),
        leaf=[s[0] for s in seqs],
    )
    for i, (_, tok, mask, turn, a, lp) in enumerate(seqs):
        n = len(tok)
        out.tokens[i, :n] = tok
        out.positions[i, :n] = np.arange(n)
        out.segment_ids[i, :n] = 1
        out.loss_mask[i, :n] = mask
        out.turn_ids[i, :n] = turn
        out.advantages[i, :n] = a
        out.old_logp[i, :n] = lp
    return out


def pack(
    trees: Sequence[Tree],
    pad_id: int,
    length: int,
    flat_length: int,
    rows_per_tree: int | None = None,
    num_rows: int | None = None,
) -> PackedBatch:
    """Pack ``trees`` into ``[num_rows, length]`` rows, one tree per row (then empty rows;
    default ``num_rows``: one per tree), and map each tree's root-to-leaf rows (those of
    :func:`flatten`, leaves in ``Tree.leaves`` order, ``flat_length`` tokens each) onto its
    packed row: ``gather`` ``[num_rows, rows_per_tree, flat_length]`` (default
    ``rows_per_tree``: the most leaves of any tree; see :class:`rlpt_jax.batch.PackedBatch`
    and :func:`slots`). Nodes go in depth-first pre-order, so that an ancestor's tokens
    always precede its descendants'. Raises ValueError if a tree needs more than
    ``length`` tokens or has more than ``rows_per_tree`` leaves."""
    rows = [_pack_one(tree) for tree in trees]
    longest = max(len(r[0]) for r in rows)
    if longest > length:
        raise ValueError(f"a packed tree needs {longest} tokens but length={length}")
    most = max(len(t.leaves()) for t in trees)
    g = most if rows_per_tree is None else rows_per_tree
    p = len(trees) if num_rows is None else num_rows
    if g < most or p < len(trees):
        raise ValueError(
            f"{len(trees)} trees with up to {most} leaves do not fit {p} packed rows of "
            f"{g} flat rows each"
        )
    out = PackedBatch(
        tokens=np.full((p, length), pad_id, np.int32),
        positions=np.zeros((p, length), np.int32),
        segment_ids=np.zeros((p, length), np.int32),
        node=np.zeros((p, length), np.int32),
        end=np.zeros((p, length), np.int32),
        pred=np.full((p, length), -1, np.int32),
        gather=np.full((p, g, flat_length), -1, np.int32),
    )
    for i, (tok, pos, node, end, pred, where) in enumerate(rows):
        n = len(tok)
        out.tokens[i, :n], out.positions[i, :n], out.segment_ids[i, :n] = tok, pos, 1
        out.node[i, :n], out.end[i, :n], out.pred[i, :n] = node, end, pred
        for k, leaf in enumerate(trees[i].leaves()):
            cols = np.concatenate([where[nid] for nid in trees[i].path(leaf)])
            if len(cols) > flat_length:
                raise ValueError(f"a root-to-leaf row needs {len(cols)} tokens > {flat_length}")
            out.gather[i, k, : len(cols)] = cols
    return out


def slots(leaf: Sequence[tuple[int, int]], rows_per_tree: int) -> np.ndarray:
    """Where each of :func:`flatten`'s rows (its ``leaf`` list: tree index, leaf id, rows
    grouped by tree) goes in the by-tree layout of a :class:`PackedBatch`: row
    ``tree · rows_per_tree + k`` for the tree's k-th leaf."""
    out, k, last = np.zeros(len(leaf), np.int64), 0, None
    for r, (t, _) in enumerate(leaf):
        k = k + 1 if t == last else 0
        last = t
        if k >= rows_per_tree:
            raise ValueError(f"tree {t} has more than rows_per_tree={rows_per_tree} leaves")
        out[r] = t * rows_per_tree + k
    return out


def _pack_one(tree: Tree):
    """One tree's packed row: tokens, positions, node, end, pred, and per node the columns
    of its tokens."""
    order, stack = [], [0]
    while stack:  # pre-order, children in the order they were added
        nid = stack.pop()
        order.append(nid)
        stack.extend(reversed(tree.nodes[nid].children))
    rank = {nid: i for i, nid in enumerate(order)}
    end = {}
    for nid in reversed(order):  # a subtree's last pre-order index
        kids = tree.nodes[nid].children
        end[nid] = max([rank[nid]] + [end[c] for c in kids])
    tok, pos, node_of, end_of, pred = [], [], [], [], []
    where: dict[int, np.ndarray] = {}
    last: dict[int, int] = {}  # the column of a node's last token, or its nearest ancestor's
    start: dict[int, int] = {}  # path position of a node's first token
    for nid in order:
        n = tree.nodes[nid]
        ids = n.tool_tokens + n.model_tokens
        parent = n.parent
        start[nid] = 0 if parent < 0 else start[parent] + tree.nodes[parent].num_tokens
        before = -1 if parent < 0 else last[parent]
        cols = np.arange(len(tok), len(tok) + len(ids), dtype=np.int32)
        where[nid] = cols
        for j, t in enumerate(ids):
            tok.append(t)
            pos.append(start[nid] + j)
            node_of.append(rank[nid])
            end_of.append(end[nid])
            pred.append(before if j == 0 else int(cols[j - 1]))
        last[nid] = int(cols[-1]) if len(ids) else before
    return tok, pos, node_of, end_of, pred, where
