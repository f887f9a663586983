"""Batch-invariant numerics (ModelConfig.batch_invariant) on the tiny checkpoints: sampler
log-probs and entropies identical to the training step's, gradients equal to the fast
path's, sampler weight layout, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import hf_greedy, save_tiny, tiny_hf_model
from rlpt_jax import parallel
from rlpt_jax.models.hf_io import load_hf
from rlpt_jax.models.numerics import in_float64
from rlpt_jax.sampling import Sampler, SamplerConfig, SamplingParams, engine
from rlpt_jax.train.steps import token_logprobs

FAMILIES = ["qwen3", "qwen2", "llama3", "llama_tied"]
PROMPTS = [[5, 17, 33, 3, 60, 8, 9], [44, 12], [70, 71, 72, 73]]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_bi")
    return {kind: save_tiny(kind, root / kind) for kind in FAMILIES}


@nnx.jit(static_argnames="remat")
def _scores(model, tokens, positions, mask, remat=False):
    return token_logprobs(model, tokens, positions, mask, with_entropy=True, remat=remat)


def _training_scores(model, prompt, gen, total=64):
    """The training step's log-probs and entropies of gen after prompt (one padded row)."""
    seq = list(prompt) + list(gen)
    pad = total - len(seq)
    tokens = jnp.asarray([seq + [0] * pad], jnp.int32)
    mask = jnp.asarray([[1] * len(seq) + [0] * pad], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logp, ent = _scores(model, tokens, positions, mask)
    cut = slice(len(prompt), len(seq))
    return np.asarray(logp[0, cut]), np.asarray(ent[0, cut])


def test_in_float64_rounds_once_and_differentiates():
    x = jnp.asarray([[1.0, 2.0, 3.0], [0.5, -1.5, 4.0]], jnp.float32)
    mask = jnp.asarray([[True, False, True], [True, True, True]])

    def fn(x, mask):
        return jnp.sum(jnp.where(mask, jnp.exp(x), 0.0), axis=-1)

    y = in_float64(fn, x, mask)
    assert y.dtype == jnp.float32
    ref = np.where(np.asarray(mask), np.exp(np.asarray(x, np.float64)), 0).sum(-1)
    np.testing.assert_array_equal(y, ref.astype(np.float32))  # one rounding of the f64 value
    grad = jax.jit(jax.grad(lambda x: jnp.sum(in_float64(fn, x, mask) ** 2)))(x)
    ref_grad = jax.grad(lambda x: jnp.sum(fn(x, mask) ** 2))(x)
    assert grad.dtype == jnp.float32
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6)
    pair = in_float64(lambda x: (x * 2, jnp.sum(x)), x)  # tuples of outputs
    assert [p.dtype for p in pair] == [jnp.float32, jnp.float32]


@pytest.mark.parametrize("kind", FAMILIES)
def test_sampler_scores_equal_training_bit_for_bit(kind, tiny_dirs, one_torch_thread):
    """Every family feature (q/k norm, biases, llama3 RoPE, tied and untied heads): greedy ==
    transformers, and the sampler's log-probs and entropies == the training step's, exactly,
    whether a prompt is decoded with others or alone; the fast path agrees within 1e-5."""
    model = load_hf(tiny_dirs[kind], batch_invariant=True)
    fast = load_hf(tiny_dirs[kind])
    hf = tiny_hf_model(kind)
    sampler = Sampler(model, config=SamplerConfig(decode_chunk=8))
    fast_sampler = Sampler(fast, config=SamplerConfig(decode_chunk=8))
    for params in (
        SamplingParams(max_new_tokens=20, temperature=0.0),
        SamplingParams(max_new_tokens=20, seed=1),
    ):
        out = sampler.generate(PROMPTS, params)
        alone = sampler.generate(PROMPTS[:1], params)[0][0]
        fast_out = fast_sampler.generate(PROMPTS, params)
        np.testing.assert_array_equal(alone.tokens, out[0][0].tokens)
        np.testing.assert_array_equal(alone.logprobs, out[0][0].logprobs)
        for prompt, (s,), (f,) in zip(PROMPTS, out, fast_out, strict=True):
            logp, ent = _training_scores(model, prompt, s.tokens)
            np.testing.assert_array_equal(s.logprobs, logp)
            np.testing.assert_array_equal(s.entropies, ent)
            np.testing.assert_array_equal(s.tokens, f.tokens)
            np.testing.assert_allclose(s.logprobs, f.logprobs, atol=1e-5, rtol=0)
            if params.temperature == 0.0:
                np.testing.assert_array_equal(s.tokens, hf_greedy(hf, prompt, 20))


def test_continue_and_fork_equal_scratch_bit_for_bit(tiny_dirs):
    """Append a tool result, continue, fork mid-depth: the same tokens and the same log-probs,
    bit for bit, as generating from scratch and as the training step."""
    model = load_hf(tiny_dirs["qwen3"], batch_invariant=True)
    sampler = Sampler(model)
    turn = SamplingParams(max_new_tokens=9, temperature=0.0)
    sess = sampler.session(rows=4, length=64)
    (row,) = sess.add([[5, 9, 14, 20, 31]])
    sess.generate([row], turn)
    sess.append([row], [[40, 41, 42, 43, 44, 45, 46]])
    history = sess.tokens(row)
    (second,) = sess.generate([row], turn)
    branches = sess.fork(row, 2, length=len(history))
    forks = sess.generate(branches, turn)
    sampled = sess.generate(
        sess.fork(row, 1, length=len(history)), dataclasses.replace(turn, temperature=1.0, seed=2)
    )[0]
    fresh = sampler.generate([history], turn)[0][0]
    for s in (second, *forks):
        np.testing.assert_array_equal(s.tokens, fresh.tokens)
        np.testing.assert_array_equal(s.logprobs, fresh.logprobs)
    for s in (fresh, sampled):
        np.testing.assert_array_equal(s.logprobs, _training_scores(model, history, s.tokens)[0])


@pytest.mark.parametrize("kind", ["qwen3", "llama3"])  # tied head: llama_tied is covered above
def test_gradients_equal_the_fast_path(kind, tiny_dirs):
    """The float64 parts carry their own backward pass (in_float64); the update step's
    gradients agree with the fast path's, with and without remat."""
    inv = load_hf(tiny_dirs[kind], batch_invariant=True)
    fast = load_hf(tiny_dirs[kind])
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, 97, (3, 12)), jnp.int32)
    mask = jnp.asarray([[1] * 12, [1] * 7 + [0] * 5, [1] * 10 + [0] * 2], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    weights = jnp.asarray(rng.normal(size=(3, 12)), jnp.float32) * mask

    def loss(model, remat):
        logp, ent = token_logprobs(model, tokens, positions, mask, with_entropy=True, remat=remat)
        return jnp.sum(logp * weights) + 0.1 * jnp.sum(ent * mask)

    grad = nnx.jit(nnx.grad(loss), static_argnums=1)
    ref = jax.tree.leaves(nnx.state(grad(fast, False), nnx.Param))
    for remat in (False, True):
        got = jax.tree.leaves(nnx.state(grad(inv, remat), nnx.Param))
        assert len(got) == len(ref)
        for g, r in zip(got, ref, strict=True):
            assert g.dtype == jnp.float32
            scale = float(jnp.max(jnp.abs(r))) + 1e-12
            np.testing.assert_allclose(g, r, atol=1e-5 * scale, rtol=0)


def test_sampler_weights_are_transposed_projections(tiny_dirs):
    model = load_hf(tiny_dirs["llama3"], batch_invariant=True)  # untied head
    cfg = model.cfg
    held = engine.sampler_weights(model)
    # Training: one stacked block, [L, ...]; sampler: one block per layer.
    attn, held_attn = model.layers.self_attn, held.layers[0].self_attn
    n, h, d = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    same = np.testing.assert_array_equal
    same(held_attn.q_proj[...], np.asarray(attn.q_proj[...][0]).reshape(d, -1).T)
    same(held_attn.o_proj[...], np.asarray(attn.o_proj[...][0]).reshape(n * h, d).T)
    same(held.layers[1].mlp.down_proj[...], model.layers.mlp.down_proj[...][1].T)
    assert held_attn.q_proj.get_metadata()["logical_axes"] == ("q_heads", "embed")
    assert held.numerics.transposed and not model.numerics.transposed
    np.testing.assert_array_equal(held.lm_head[...], model.lm_head[...].T)
    assert held.lm_head.get_metadata()["logical_axes"] == ("vocab", "embed")
    assert attn.q_proj[...].shape == (cfg.num_layers, d, n, h)  # the training model is as it was
    np.testing.assert_array_equal(held.embed_tokens[...], model.embed_tokens[...])
    fast = load_hf(tiny_dirs["llama3"])
    held = engine.sampler_weights(fast)  # only unstacked
    assert not held.numerics.transposed and len(held.layers) == cfg.num_layers
    same(held.layers[1].self_attn.q_proj[...], fast.layers.self_attn.q_proj[...][1])
    assert held.lm_head[...] is fast.lm_head[...]


def test_set_model_equals_a_fresh_sampler(tiny_dirs):
    """New weights go through the same layout move as the first ones (training loop path)."""
    model = load_hf(tiny_dirs["qwen2"], batch_invariant=True)
    sampler = Sampler(model)
    params = SamplingParams(max_new_tokens=10, seed=3)
    before = sampler.generate(PROMPTS, params)
    graphdef, state = nnx.split(model)
    moved = nnx.merge(graphdef, jax.tree.map(lambda x: x * 1.05, state))
    sampler.set_model(moved)
    after = sampler.generate(PROMPTS, params)
    ref = Sampler(moved).generate(PROMPTS, params)
    for a, r in zip(after, ref, strict=True):
        np.testing.assert_array_equal(a[0].tokens, r[0].tokens)
        np.testing.assert_array_equal(a[0].logprobs, r[0].logprobs)
    assert any(not np.array_equal(a[0].logprobs, b[0].logprobs) for a, b in zip(after, before))
    with pytest.raises(ValueError, match="architecture"):
        sampler.set_model(load_hf(tiny_dirs["qwen3"], batch_invariant=True))


def test_single_rows_decode_as_two(tiny_dirs):
    model = load_hf(tiny_dirs["qwen3"], batch_invariant=True)
    assert Sampler(model).rows_bucket(1) == 2
    assert Sampler(load_hf(tiny_dirs["qwen3"])).rows_bucket(1) == 1


def test_sharded_sampling_equals_single_device(tiny_dirs):
    model = load_hf(tiny_dirs["qwen3"], batch_invariant=True)
    mesh = parallel.make_mesh(parallel.MeshConfig(2, 2, 2))
    trained = parallel.reshard_model(model, mesh, parallel.TRAIN_RULES)
    sharded = Sampler(trained, mesh=mesh)
    single = Sampler(model)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=2, seed=4)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    for ga, gb in zip(sharded.generate(prompts, params), single.generate(prompts, params)):
        for x, y in zip(ga, gb, strict=True):
            np.testing.assert_array_equal(x.tokens, y.tokens)
            # Tensor parallelism splits some contractions across devices: close, not identical.
            np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)
    q = sharded.state["layers"][0]["self_attn"]["q_proj"].get_value()
    cfg = model.cfg
    assert q.shape == (cfg.num_heads * cfg.head_dim, cfg.hidden_size)
    assert "tensor" in str(q.sharding.spec) and "fsdp" not in str(q.sharding.spec)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_sharded_update_step_equals_the_fast_single_device_step(remat):
    """The batch-invariant update step (in-graph weight transposes, float64 parts with their
    own backward) on a data x fsdp x tensor mesh moves the parameters like the fast path."""
    from test_train_step import CFG, _batch

    from rlpt_jax.algos.losses import LossConfig
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.train import state as S
    from rlpt_jax.train import steps as ST

    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-3, eps=1e-3))
    b = _batch(packed=True)
    step_cfg = ST.StepConfig(chunk=8, micro_batches=2, remat=remat)
    obj = ST.policy_objective(LossConfig())
    fast = S.create_train_state(init_model(CFG, 0), tx)
    fast, m_fast = ST.make_update_step(tx, obj, step_cfg)(fast, b)

    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=2, tensor=2))
    inv = S.create_train_state(init_model(CFG.replace(batch_invariant=True), 0), tx)
    inv, shardings = S.shard_train_state(inv, tx, mesh)
    step = ST.make_update_step(tx, obj, step_cfg, mesh=mesh, state_shardings=shardings)
    inv, m_inv = step(inv, parallel.shard_batch(b, mesh))
    np.testing.assert_allclose(m_inv["loss"], m_fast["loss"], rtol=1e-5)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
        jax.tree.map(np.asarray, nnx.to_pure_dict(fast.params)),
        jax.tree.map(np.asarray, nnx.to_pure_dict(inv.params)),
    )
