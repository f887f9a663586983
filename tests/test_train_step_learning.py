"""Learning sanity: update_step alone teaches a tiny random model a verifiable reward.

Each row is prompt (2 tokens) · turn 1 (4 sampled tokens) · an observation token (not
trained) · turn 2 (4 sampled tokens), padded to 16. Reward = fraction of sampled tokens
equal to TARGET; a random model scores ≈ 1/V. GRPO (ppo kind, token mean) and ATPO
(turn ratio, sequence mean) must both lift the mean reward above 0.8.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import tiny_llama_config
from rlpt_jax import batch as B
from rlpt_jax.algos.advantages import grpo
from rlpt_jax.algos.losses import PRESETS, LossConfig
from rlpt_jax.models.decoder import init_model
from rlpt_jax.train import state as S
from rlpt_jax.train import steps as ST

V, TARGET, OBS = 32, 7, 1
PROMPT, TURN, LENGTH = 2, 4, 16
GEN_POSITIONS = tuple(range(PROMPT, PROMPT + TURN)) + tuple(
    range(PROMPT + TURN + 1, PROMPT + 2 * TURN + 1)
)
USED = PROMPT + 2 * TURN + 1
GROUPS, SAMPLES = 8, 8
CFG = tiny_llama_config(V)


@functools.partial(jax.jit, static_argnums=0)
def sample(graphdef, params, prompts, key):
    """Ancestral sampling at temperature 1 with a full forward per token (tiny model)."""
    model = nnx.merge(graphdef, params)
    n = prompts.shape[0]
    tokens = jnp.zeros((n, LENGTH), jnp.int32).at[:, :PROMPT].set(prompts)
    tokens = tokens.at[:, PROMPT + TURN].set(OBS)
    positions = jnp.broadcast_to(jnp.arange(LENGTH), (n, LENGTH))
    segments = (positions < USED).astype(jnp.int32)

    def body(i, tokens):
        p = jnp.asarray(GEN_POSITIONS)[i]
        logits, _ = model(tokens, positions, segment_ids=segments)
        nxt = jax.random.categorical(jax.random.fold_in(key, i), logits[:, p - 1])
        return tokens.at[:, p].set(nxt.astype(jnp.int32))

    return jax.lax.fori_loop(0, len(GEN_POSITIONS), body, tokens)


def _rows(tokens: np.ndarray):
    n = tokens.shape[0]
    mask = np.zeros((n, LENGTH), np.float32)
    mask[:, list(GEN_POSITIONS)] = 1
    segments = (np.arange(LENGTH)[None] < USED).astype(np.int32).repeat(n, 0)
    reward = (tokens[:, list(GEN_POSITIONS)] == TARGET).mean(axis=1)
    return mask, segments, reward


def _train(loss_cfg: LossConfig, steps: int, micro_batches: int, lr: float):
    tx = S.make_optimizer(S.OptimConfig(learning_rate=lr, weight_decay=0.0))
    state = S.create_train_state(init_model(CFG, 0), tx)
    cfg = ST.StepConfig(chunk=8, micro_batches=micro_batches)
    update = ST.make_update_step(tx, ST.policy_objective(loss_cfg), cfg)
    logprob = ST.make_logprob_step(state.graphdef, cfg)
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    rewards = []
    for i in range(steps):
        prompts = np.repeat(rng.integers(8, V, (GROUPS, PROMPT)), SAMPLES, axis=0)
        tokens = sample(state.graphdef, state.params, prompts, jax.random.fold_in(key, i))
        tokens = np.asarray(tokens)
        mask, segments, reward = _rows(tokens)
        rewards.append(reward.mean())
        adv = np.asarray(grpo(reward.reshape(GROUPS, SAMPLES))).reshape(-1)
        positions = B.positions_from_segments(segments)
        old = logprob(state.params, tokens, positions, segments).logp
        batch = B.make_batch(
            tokens, mask, adv, np.asarray(old), segment_ids=segments, positions=positions
        )
        state, metrics = update(state, batch)
        assert int(metrics["skipped"]) == 0
        # On-policy: the behaviour log-probs are the current policy's, so the ratio is 1.
        assert abs(float(metrics["ratio_mean"]) - 1.0) < 1e-4
    return np.asarray(rewards)


@pytest.mark.parametrize(
    "name, loss_cfg, micro",
    [
        ("grpo", LossConfig(kind="ppo"), 1),
        ("atpo", PRESETS["atpo"], 2),
    ],
)
def test_update_step_learns_verifiable_reward(name, loss_cfg, micro):
    start = time.perf_counter()
    rewards = _train(loss_cfg, steps=40, micro_batches=micro, lr=1e-2)
    elapsed = time.perf_counter() - start
    print(f"{name}: reward {rewards[:3].round(2)} … {rewards[-3:].round(2)} in {elapsed:.1f}s")
    assert rewards[:2].mean() < 0.2
    assert rewards[-3:].mean() > 0.8, rewards.round(2)
    assert elapsed < 180
