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
from rlpt_jax.parallel import MeshConfig, make_mesh, shard_batch
from rlpt_jax.rollout.tree import Tree, flatten, pack, slots
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
    np.testing.assert_array_equal(
        p.gather, [[[0, 1, 2, 3, 8, 9, -1, -1], [0, 1, 2, 3, 4, 5, 6, 7]]]
    )
    # the gather reproduces the flat rows' tokens and positions
    for name in ("tokens", "positions"):
        packed = getattr(p, name)[0][np.maximum(p.gather[0], 0)]
        np.testing.assert_array_equal(np.where(p.gather[0] >= 0, packed, 0), getattr(flat, name))
    # with room for more rows and trees: empty rows and trees, gather -1
    wide = pack([tree], pad_id=0, length=12, flat_length=8, rows_per_tree=3, num_rows=2)
    assert wide.gather.shape == (2, 3, 8)
    np.testing.assert_array_equal(wide.gather[0, :2], p.gather[0])
    assert (wide.gather[0, 2] == -1).all() and (wide.gather[1] == -1).all()
    assert (wide.segment_ids[1] == 0).all()
    with pytest.raises(ValueError, match="do not fit"):
        pack([tree], pad_id=0, length=12, flat_length=8, rows_per_tree=1)


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


def _trees(rng, shape: str, trees: int) -> list[Tree]:
    """``random``: small random trees; ``paper``: the paper's shape (M=10 chains of 3-4
    turns, 2 rounds of 6 expansions: 22 leaves; ``bench/tree_train.py``), with a few tokens
    per turn; ``hand``: the hand-built tree."""
    if shape == "hand":
        return [_hand_tree() for _ in range(trees)]
    if shape == "paper":
        import importlib.util
        from pathlib import Path

        path = Path(__file__).resolve().parents[1] / "bench" / "tree_train.py"
        spec = importlib.util.spec_from_file_location("tree_train", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        return [bench.paper_tree(rng, prompt=5, turn=3, tool=4, vocab=VOCAB) for _ in range(trees)]
    return [
        _random_tree(rng, int(rng.integers(2, 7)), int(rng.integers(2, 9))) for _ in range(trees)
    ]


def _batches(seed: int, trees: int = 3, shape: str = "random"):
    """Trees (``_trees``) as flat rows laid out by tree (:func:`slots`, empty rows padding
    each tree to the most leaves) and packed."""
    rng = np.random.default_rng(seed)
    ts = _trees(rng, shape, trees)
    flat = flatten(ts, [np.zeros(len(t.nodes)) for t in ts], pad_id=0)
    length = max(sum(n.num_tokens for n in t.nodes) for t in ts)
    packed = pack(ts, pad_id=0, length=length, flat_length=flat.tokens.shape[1])
    assert flat.tokens.shape[0] > len(ts)  # some tree has several leaves: prefixes shared
    at = slots(flat.leaf, packed.gather.shape[1])
    for name in ("tokens", "positions", "segment_ids", "loss_mask", "turn_ids"):
        x = getattr(flat, name)
        laid = np.full(
            (len(ts) * packed.gather.shape[1], x.shape[1]), -1 if name == "turn_ids" else 0, x.dtype
        )
        laid[at] = x
        setattr(flat, name, laid)
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
    assert int(packed.gather.max()) < packed.tokens.shape[1]


UPDATE_CASES = [  # (loss, per-leaf advantages (GRPO on a tree), micro-batches, attention,
    # sharded, tree shape)
    ("atpo", False, 1, "xla", False, "random"),
    ("atpo", False, 2, "blockwise", False, "random"),
    ("grpo", True, 1, "blockwise", False, "random"),
    ("grpo", True, 2, "xla", False, "random"),
    ("gspo", False, 1, "xla", False, "random"),
    ("gspo", False, 2, "blockwise", False, "random"),
    ("atpo", False, 1, "blockwise", True, "random"),
    ("atpo", False, 2, "blockwise", False, "paper"),
    ("grpo", True, 1, "xla", False, "paper"),
    ("gspo", False, 2, "xla", False, "hand"),
]


@pytest.mark.parametrize("loss,per_leaf,micro,impl,sharded,shape", UPDATE_CASES)
def test_packed_update_step_equals_the_flat_one(loss, per_leaf, micro, impl, sharded, shape):
    """The update step on an RLBatch carrying its packed trees: the same loss, metrics
    (ratios, clipping, KL, entropy) and parameter update as on the flat rows alone, with
    micro-batches of whole trees, and sharded (data 2 x fsdp 2 x tensor 2: the trees and rows
    split over the batch shards alike)."""
    import dataclasses

    import jax
    import optax

    from rlpt_jax.algos.losses import PRESETS
    from rlpt_jax.batch import make_batch
    from rlpt_jax.train import state as S
    from rlpt_jax.train import steps as ST

    cfg = tiny_llama_config(VOCAB, attention=impl, attention_block=4)
    flat, packed = _batches(7, trees=4, shape=shape)
    rng = np.random.default_rng(7)
    mask = flat.loss_mask
    model = init_model(cfg, 0)
    true, _ = token_logprobs(
        model, *map(jnp.asarray, (flat.tokens, flat.positions, flat.segment_ids))
    )
    noise = lambda: rng.normal(0, 0.05, mask.shape)  # noqa: E731
    if per_leaf:
        adv = rng.normal(size=(mask.shape[0], 1)) * mask
    else:
        adv = rng.normal(size=mask.shape) * mask
    batch = make_batch(
        flat.tokens,
        mask,
        adv,
        np.where(mask > 0, np.asarray(true) + noise(), 0.0),
        segment_ids=flat.segment_ids,
        positions=flat.positions,
        turn_ids=flat.turn_ids,
        ref_logp=np.where(mask > 0, np.asarray(true) + noise(), 0.0).astype(np.float32),
    )
    loss_cfg = dataclasses.replace(
        PRESETS[loss], clip_low=0.05, clip_high=0.06, kl_coef=0.1, entropy_coef=0.01
    )
    objective = ST.policy_objective(loss_cfg)
    # An "optimiser" that keeps the gradient as its state: compared directly, not through
    # a parameter difference that float32 rounds at the parameters' scale.
    tx = optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )

    def run(b, m, mesh=None):
        state = S.create_train_state(init_model(cfg, 0), tx)
        step_cfg = ST.StepConfig(micro_batches=m, chunk=8)
        if mesh is None:
            step = ST.make_update_step(tx, objective, step_cfg)
        else:
            state, shardings = S.shard_train_state(state, tx, mesh)
            step = ST.make_update_step(
                tx, objective, step_cfg, mesh=mesh, state_shardings=shardings
            )
            b = shard_batch(b, mesh)
        state, metrics = step(state, b)
        return jax.tree.map(np.asarray, state.opt_state), jax.device_get(metrics)

    d_flat, m_flat = run(batch, 1)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)) if sharded else None
    d_packed, m_packed = run(batch.replace(tree=packed), micro, mesh)
    assert set(m_packed) == set(m_flat)
    # The loss, gradient and token count of any micro-batch split equal the full batch's;
    # other metrics are weighted means of per-micro-batch values, which depend on the split
    # (micro-batches of whole trees here, of single rows in a flat step), so they are
    # compared without micro-batches.
    exact = ("loss", "grad_norm", "tokens", "skipped")
    for k in m_flat if micro == 1 else exact:
        np.testing.assert_allclose(m_packed[k], m_flat[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for (path, a), (_, b) in zip(
        jax.tree_util.tree_leaves_with_path(d_packed), jax.tree_util.tree_leaves_with_path(d_flat)
    ):
        scale = max(float(np.abs(b).max()), 1e-12)
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0, err_msg=str(path))


@pytest.mark.slow
def test_at2po_tiny_run_is_the_same_with_and_without_tree_packing(tmp_path):
    """Two steps of AT²PO's tiny variant through launch/train.py, trees packed for the
    update or flat: the same rewards, losses, ratios, KL and evaluation, up to float
    rounding (the packed forward adds in another order)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    runs = {}
    for packing in ("True", "False"):
        workdir = tmp_path / packing
        cmd = [
            sys.executable,
            str(root / "launch" / "train.py"),
            "--config=configs/at2po_qwen.py:tiny",
            f"--workdir={workdir}",
            f"--config.train.tree_packing={packing}",
        ]
        env = dict(os.environ, XLA_FLAGS="")
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        runs[packing] = [json.loads(line) for line in lines]
    packed, flat = runs["True"], runs["False"]
    assert [r["step"] for r in packed] == [r["step"] for r in flat] == [1, 2]
    for p, f in zip(packed, flat):
        assert 0 < p["train/packed_tokens"] < p["train/flat_tokens"]  # prefixes computed once
        assert "train/packed_tokens" not in f
        for k in f:
            if k.startswith("perf/") or k == "time":
                continue
            np.testing.assert_allclose(p[k], f[k], rtol=1e-4, atol=1e-6, err_msg=k)
