"""Benchmark: the training forward and backward of AT²PO trees, flat rows against packed trees.

Trees of the paper's shape (M=10 chains, L=2 expansion rounds of K=6 picks: 22 leaves;
3-4 turns per trajectory, ~3 x 300 tool tokens): flat, every root-to-leaf path is its own
row (``rollout.tree.flatten``), so a shared prefix is computed once per leaf below it;
packed, each tree's unique tokens are one row under a tree mask
(``rollout.tree.pack``, ``train.steps.packed_token_logprobs``). Both compute the gradient
of the same per-token loss (the flat rows' log-probs and entropies, equal to 1e-5; see
tests/test_tree_packing.py). Reported: the unique-token fraction, the speedup it implies
if cost were linear in tokens, and the measured speedup of the jitted value-and-grad, both
arms in the same run.

The model is a random Llama-shaped decoder small enough for a CPU (``--width``,
``--layers``); the ratio, not the absolute time, is the measurement. Attention is
``blockwise`` in both arms (the flat rows' [T, T] scores would not fit at the paper's
lengths otherwise).

    .venv/bin/python bench/tree_train.py            # JSON on the last line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def paper_tree(
    rng, prompt=200, turn=100, tool=300, turns=(3, 4), chains=10, rounds=2, picks=6, vocab=1000
):
    """A synthetic tree of the paper's shape: ``chains`` trajectories of 3-4 turns (model
    tokens, then a tool result before the next turn), then ``rounds`` x ``picks`` branches,
    each from a random inner turn, re-sampled from there to the end. Token ids in
    ``[3, vocab)``."""
    from rlpt_jax.rollout.tree import Tree

    tree = Tree.new(0, rng.integers(3, vocab, prompt).tolist())

    def grow(parent: int, depth: int, last: int) -> None:
        while depth < last:
            node = tree.add(parent, rng.integers(3, vocab, tool).tolist() if depth else [], 0)
            node.model_tokens = rng.integers(3, vocab, turn).tolist()
            node.logps = [-1.0] * turn
            parent, depth = node.id, depth + 1

    for _ in range(chains):
        grow(0, 0, int(rng.choice(turns)))
    for _ in range(rounds * picks):
        inner = [n for n in tree.nodes[1:] if n.children]
        picked = inner[int(rng.integers(len(inner)))]
        depth = len(tree.path(picked.id)) - 2  # the picked turn's depth, re-sampled
        grow(picked.parent, depth, max(depth + 1, int(rng.choice(turns))))
    return tree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=1)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()  # before the first computation
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from rlpt_jax.batch import PackedBatch
    from rlpt_jax.comparison import machine_info
    from rlpt_jax.models.config import ModelConfig
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.rollout.tree import flatten, pack
    from rlpt_jax.train.steps import packed_token_logprobs, token_logprobs

    rng = np.random.default_rng(args.seed)
    trees = [paper_tree(rng) for _ in range(args.trees)]
    flat = flatten(trees, [np.zeros(len(t.nodes)) for t in trees], pad_id=0)
    length = max(sum(n.num_tokens for n in t.nodes) for t in trees)
    packed = pack(trees, pad_id=0, length=length, flat_length=flat.tokens.shape[1])
    packed = PackedBatch(**{k: jnp.asarray(v) for k, v in vars(packed).items()})
    flat_tokens = int(flat.segment_ids.sum())
    unique = int(np.asarray(packed.segment_ids).sum())

    cfg = ModelConfig(
        model_type="llama",
        vocab_size=1024,
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_layers=args.layers,
        num_heads=max(1, args.width // 64),
        num_kv_heads=max(1, args.width // 128),
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention="blockwise",
        attention_block=512,
    )
    graphdef, params = nnx.split(init_model(cfg, 0))
    weights = jnp.asarray(rng.normal(size=flat.tokens.shape), jnp.float32)
    tokens, positions, seg = map(jnp.asarray, (flat.tokens, flat.positions, flat.segment_ids))

    def flat_loss(p):
        lp, _ = token_logprobs(nnx.merge(graphdef, p), tokens, positions, seg, remat=True)
        return jnp.sum(lp * weights)

    def packed_loss(p):
        lp, _ = packed_token_logprobs(nnx.merge(graphdef, p), packed, remat=True)
        return jnp.sum(lp * weights)

    def timed(loss):
        step = jax.jit(jax.value_and_grad(loss))
        t0 = time.perf_counter()
        jax.block_until_ready(step(params))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            value, _ = jax.block_until_ready(step(params))
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), times, compile_s, float(value)

    flat_s, flat_runs, flat_compile, flat_value = timed(flat_loss)
    packed_s, packed_runs, packed_compile, packed_value = timed(packed_loss)
    ideal = flat_tokens / unique
    measured = flat_s / packed_s
    rows = [
        ("leaves (flat rows)", flat.tokens.shape[0]),
        ("flat tokens", flat_tokens),
        ("unique tokens (packed)", unique),
        ("unique-token fraction", f"{unique / flat_tokens:.3f}"),
        ("ideal speedup (tokens)", f"{ideal:.2f}x"),
        ("flat value+grad, s (median)", f"{flat_s:.2f}"),
        ("packed value+grad, s (median)", f"{packed_s:.2f}"),
        ("measured speedup", f"{measured:.2f}x"),
        ("measured / ideal", f"{measured / ideal:.2f}"),
    ]
    for name, value in rows:
        print(f"{name:32s} {value}")
    out = dict(
        trees=args.trees,
        width=args.width,
        layers=args.layers,
        flat_rows=int(flat.tokens.shape[0]),
        flat_tokens=flat_tokens,
        unique_tokens=unique,
        unique_fraction=unique / flat_tokens,
        ideal_speedup=ideal,
        flat_s=flat_runs,
        packed_s=packed_runs,
        compile_s=dict(flat=flat_compile, packed=packed_compile),
        loss=dict(flat=flat_value, packed=packed_value),
        measured_speedup=measured,
        speedup_over_ideal=measured / ideal,
        machine=machine_info(),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
