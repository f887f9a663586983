"""XLA's compiled memory of the update step against sequence length, per attention
implementation: temporaries should grow ~quadratically in T with ``xla`` (the [T, T] scores
of a layer, kept for the backward pass) and ~linearly with ``blockwise``.

A tiny-width Qwen3-shaped model (2 layers, width 64, 4 query / 2 kv heads of 16, random
weights) so that attention dominates; one row of T tokens, PPO-clip loss, remat on (the
configs' setting). Nothing runs: each step is only lowered and compiled, and
``compiled.memory_analysis()`` is read.

    .venv/bin/python bench/attention_memory.py                # T = 2048, 4096, 8192
    .venv/bin/python bench/attention_memory.py --lengths 1024,2048

Prints a table, then one JSON line with the machine (``machine_info()``: the CPU model name
and the AVX-512F/AMX flags from /proc/cpuinfo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def temp_mb(impl: str, length: int, block: int) -> float:
    import jax
    import numpy as np

    from rlpt_jax import batch as B
    from rlpt_jax.algos.losses import LossConfig
    from rlpt_jax.models.config import ModelConfig
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.train import state as S
    from rlpt_jax.train import steps as ST

    cfg = ModelConfig(
        model_type="qwen3",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        qk_norm=True,
        max_position_embeddings=2 * length,
        attention=impl,
        attention_block=block,
    )
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-6))
    state = S.create_train_state(init_model(cfg), tx)
    tokens = np.zeros((1, length), np.int32)
    segments = np.ones_like(tokens)
    mask = np.ones(tokens.shape, np.float32)
    mask[:, 0] = 0  # the first token has no prediction
    zeros = np.zeros(tokens.shape, np.float32)
    positions = B.positions_from_segments(segments)
    batch = B.make_batch(tokens, mask, np.zeros(1, np.float32), zeros, positions=positions)
    batch = jax.tree.map(jax.numpy.asarray, batch)
    step_cfg = ST.StepConfig(remat=True, chunk=256)
    update = ST.make_update_step(tx, ST.policy_objective(LossConfig()), step_cfg)
    compiled = update.lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="2048,4096,8192")
    p.add_argument("--block", type=int, default=512)
    args = p.parse_args()
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()
    from rlpt_jax.comparison import machine_info

    lengths = [int(x) for x in args.lengths.split(",")]
    rows = {impl: [temp_mb(impl, t, args.block) for t in lengths] for impl in ("xla", "blockwise")}
    print(f"{'T':>6} {'xla temp MB':>12} {'blockwise temp MB':>18}")
    for i, t in enumerate(lengths):
        print(f"{t:>6} {rows['xla'][i]:>12.1f} {rows['blockwise'][i]:>18.1f}")
    # growth exponent between the first and last length: 1 = linear, 2 = quadratic
    ratio = lengths[-1] / lengths[0]
    growth = {impl: math.log(v[-1] / v[0]) / math.log(ratio) for impl, v in rows.items()}
    print(f"growth exponent: xla {growth['xla']:.2f}, blockwise {growth['blockwise']:.2f}")
    print(
        json.dumps(
            {
                "lengths": lengths,
                "block": args.block,
                "temp_mb": rows,
                "growth_exponent": growth,
                "machine": machine_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
