"""Tree packing (issue 20): each tree's unique tokens in one row under a tree mask give the
log-probs, entropies and gradients of the flat root-to-leaf rows."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import tiny_llama_config
from rlpt_jax.batch import PackedBatch
from rlpt_jax.models import attention
from rlpt_jax.models.decoder import init_model
from rlpt_jax.rollout.tree import Tree, flatten, pack
from rlpt_jax.train.steps import packed_token_logprobs, token_logprobs

VOCAB = 32


def _hand_tree() -> Tree:
    """Prompt [1, 2]; turn A (3, 4) with children B (tool 5, model 6) and C (model 7, 8);
    B has a child D (tool 9, model 10). Leaves, in node id order: C, D."""
    tree = Tree.new(0, [1, 2])
    a = tree.add(0, [], 0)
    a.model_tokens = [3, 4]
    b = tree.add(a.id, [5], 1)
    b.model_tokens = [6]
    c = tree.add(a.id, [], 1)
    c.model_tokens = [7, 8]
    d = tree.add(b.id, [9], 2)
    d.model_tokens = [10]
    for node in tree.nodes[1:]:
        node.logps = [-1.0] * len(node.model_tokens)
    return tree


def test_pack_lays_out_a_hand_built_tree():
    tree = _hand_tree()
    p = pack([tree], pad_id=0, length=12, flat_length=8)
    # pre-order: root 0, A 1, B 2, D 3, C 4
    np.testing.assert_array_equal(p.tokens[0, :10], [1, 2, 3, 4, 5, 6, 9, 10, 7, 8])
    np.testing.assert_array_equal(p.positions[0, :10], [0, 1, 2, 3, 4, 5, 6, 7, 4, 5])
    np.testing.assert_array_equal(p.node[0, :10], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(p.end[0, :10], [4, 4, 4, 4, 3, 3, 3, 3, 4, 4])
    # C's first token is scored from A's last token (column 3), D's from B's (column 5)
    np.testing.assert_array_equal(p.pred[0, :10], [-1, 0, 1, 2, 3, 4, 5, 6, 3, 8])
    np.testing.assert_array_equal(p.segment_ids[0], [1] * 10 + [0, 0])
    flat = flatten([tree], [np.zeros(5)], pad_id=0, length=8)
    np.testing.assert_array_equal(p.gather, [[0, 1, 2, 3, 8, 9, -1, -1], [0, 1, 2, 3, 4, 5, 6, 7]])
    # the gather reproduces the flat rows' tokens and positions
    for name in ("tokens", "positions"):
        packed = getattr(p, name).reshape(-1)[np.maximum(p.gather, 0)]
        np.testing.assert_array_equal(np.where(p.gather >= 0, packed, 0), getattr(flat, name))


def test_tree_mask_sees_ancestors_and_its_own_node_only():
    tree = _hand_tree()
    p = pack([tree], pad_id=0, length=10, flat_length=8)
    mask = attention.Mask.causal(jnp.asarray(p.segment_ids)).within_tree(
        jnp.asarray(p.node), jnp.asarray(p.end)
    )
    seen = np.asarray(mask.dense()[0])
    # C's tokens (columns 8, 9) see the prompt and A (0-3) and each other causally, not B, D
    np.testing.assert_array_equal(np.nonzero(seen[9])[0], [0, 1, 2, 3, 8, 9])
    np.testing.assert_array_equal(np.nonzero(seen[7])[0], [0, 1, 2, 3, 4, 5, 6, 7])
    assert not mask.by_index  # splash cannot express it; it falls back to blockwise


def _random_tree(rng, prompt_len: int, nodes: int) -> Tree:
    tree = Tree.new(0, rng.integers(3, VOCAB, prompt_len).tolist())
    for _ in range(nodes):
        parent = int(rng.integers(0, len(tree.nodes)))
        tool = rng.integers(3, VOCAB, int(rng.integers(0, 4))).tolist() if parent else []
        node = tree.add(parent, tool, 0)
        node.model_tokens = rng.integers(3, VOCAB, int(rng.integers(1, 6))).tolist()
        node.logps = [-1.0] * len(node.model_tokens)
    return tree


def _batches(seed: int, trees: int = 3):
    rng = np.random.default_rng(seed)
    ts = [_random_tree(rng, int(rng.integers(2, 7)), int(rng.integers(2, 9))) for _ in range(trees)]
    flat = flatten(ts, [np.zeros(len(t.nodes)) for t in ts], pad_id=0)
    length = max(sum(n.num_tokens for n in t.nodes) for t in ts)
    packed = pack(ts, pad_id=0, length=length, flat_length=flat.tokens.shape[1])
    assert flat.tokens.shape[0] > len(ts)  # some tree has several leaves: prefixes shared
    return flat, PackedBatch(**{k: jnp.asarray(v) for k, v in vars(packed).items()})


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_logprobs_entropies_and_gradients_equal_the_flat_rows(impl, seed):
    cfg = tiny_llama_config(VOCAB, attention=impl, attention_block=4)
    model = init_model(cfg, seed)
    flat, packed = _batches(seed)
    tokens, positions, seg = map(jnp.asarray, (flat.tokens, flat.positions, flat.segment_ids))
    weights = jnp.asarray(np.random.default_rng(seed).normal(size=flat.tokens.shape), jnp.float32)

    def flat_loss(m):
        lp, ent = token_logprobs(m, tokens, positions, seg, chunk=8, with_entropy=True)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent * weights), (lp, ent)

    def packed_loss(m):
        lp, ent = packed_token_logprobs(m, packed, chunk=8, with_entropy=True)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent * weights), (lp, ent)

    (_, (lp_f, ent_f)), g_f = nnx.value_and_grad(flat_loss, has_aux=True)(model)
    (_, (lp_p, ent_p)), g_p = nnx.value_and_grad(packed_loss, has_aux=True)(model)
    np.testing.assert_allclose(lp_p, lp_f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ent_p, ent_f, atol=1e-5, rtol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(g_p), nnx.to_flat_state(g_f), strict=True):
        a, b = np.asarray(a.get_value()), np.asarray(b.get_value())
        scale = max(float(np.abs(b).max()), 1e-12)
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0, err_msg=str(path))


def test_packing_computes_fewer_tokens_than_the_flat_rows():
    flat, packed = _batches(0, trees=4)
    unique = int(np.asarray(packed.segment_ids).sum())
    assert unique < int(flat.segment_ids.sum())
    assert int(packed.gather.max()) < packed.tokens.size
