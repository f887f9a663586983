"""rlpt_jax.train: batch boundary, optimiser, log-prob step and update step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from hf_fixtures import tiny_llama_config
from rlpt_jax import batch as B
from rlpt_jax.algos.losses import LossConfig
from rlpt_jax.models.decoder import init_model
from rlpt_jax.parallel import MeshConfig, make_mesh, shard_batch
from rlpt_jax.train import state as S
from rlpt_jax.train import steps as ST

CFG = tiny_llama_config(64)


def _batch(rows=8, length=16, seed=0, packed=False) -> B.RLBatch:
    """Random batch: right padding of varying length, loss on a response in two turns."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (rows, length))
    lengths = rng.integers(length // 2, length + 1, rows)
    idx = np.arange(length)
    seg = (idx[None] < lengths[:, None]).astype(np.int32)
    if packed:  # a second sequence packed after position 6 in even rows
        seg[::2] = np.where(idx[None] >= 6, 2, 1) * seg[::2]
    mask = ((idx[None] >= 3) & (seg > 0)).astype(np.float32)
    mask[:, 8] = 0  # a tool result between two turns
    prev = np.pad(seg[:, :-1], ((0, 0), (1, 0)))
    mask *= (seg == prev) & (seg > 0)
    old = np.where(mask > 0, rng.normal(-4.0, 0.3, (rows, length)), 0.0)
    adv = rng.normal(size=rows)
    return B.make_batch(tokens, mask, adv, old, segment_ids=seg)


def _state(tx, seed=0):
    return S.create_train_state(init_model(CFG, seed), tx)


def _params_np(state):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))


# ---------------------------------------------------------------------------------------
# Batch


def test_make_batch_defaults_and_positions():
    b = _batch(packed=True)
    assert b.shape == (8, 16)
    seg, pos = np.asarray(b.segment_ids[0]), np.asarray(b.positions[0])
    assert pos[0] == 0 and pos[5] == 5 and pos[6] == 0  # restarts with the packed segment
    assert (pos[seg == 0] == 0).all()
    turns = np.asarray(b.turn_ids)
    assert set(np.unique(turns[np.asarray(b.loss_mask) > 0])) <= {0, 1, 2}
    assert (turns[np.asarray(b.loss_mask) == 0] == -1).all()


def test_validate_errors():
    b = _batch()
    with pytest.raises(B.BatchError, match="shape"):
        B.validate(b.replace(old_logp=np.zeros((8, 15), np.float32)))
    with pytest.raises(B.BatchError, match="integer"):
        B.validate(b.replace(tokens=np.asarray(b.tokens, np.float32)))
    bad = np.asarray(b.loss_mask).copy()
    bad[0, 0] = 1
    with pytest.raises(B.BatchError, match="no prediction"):
        B.validate(b.replace(loss_mask=bad))
    bad = np.asarray(b.loss_mask).copy()
    bad[0, 5] = 0.5
    with pytest.raises(B.BatchError, match="0 or 1"):
        B.validate(b.replace(loss_mask=bad))
    with pytest.raises(B.BatchError, match=r"tokens must be in \[0, 10\)"):
        B.validate(b, vocab_size=10)
    adv = np.asarray(b.advantages).copy()
    adv[1, 4] = np.nan
    adv[2, 4] = np.inf
    with pytest.raises(B.BatchError, match="'advantages': 2"):
        B.validate(b.replace(advantages=adv))
    assert B.validate(b.replace(advantages=adv), allow_nonfinite=True)["advantages"] == 2


def test_bucketing_and_padding():
    assert B.bucket_length(1) == 16 and B.bucket_length(17) == 32 and B.bucket_length(64) == 64
    assert B.bucket_length(100, (64, 128, 512)) == 128
    with pytest.raises(B.BatchError, match="largest bucket"):
        B.bucket_length(600, (64, 512))
    b = _batch(rows=6, length=13)
    p = B.pad_batch(b, rows=8)
    assert p.shape == (8, 16)
    assert (np.asarray(p.segment_ids)[6:] == 0).all()
    assert (np.asarray(p.loss_mask)[:, 13:] == 0).all()
    B.validate(p)


# ---------------------------------------------------------------------------------------
# Optimiser


def test_optim_config_validation_and_schedules():
    with pytest.raises(ValueError, match="total_steps"):
        S.OptimConfig(schedule="cosine", total_steps=None)
    with pytest.raises(ValueError, match="schedule"):
        S.OptimConfig(schedule="step")
    with pytest.raises(ValueError, match="grad_clip"):
        S.OptimConfig(grad_clip=0.0)
    f = S.learning_rate_schedule(
        S.OptimConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10, total_steps=110)
    )
    np.testing.assert_allclose([f(0), f(5), f(10), f(60), f(110)], [0, 0.5, 1, 0.5, 0], atol=1e-6)
    g = S.learning_rate_schedule(
        S.OptimConfig(learning_rate=2.0, schedule="linear", total_steps=10, end_lr_ratio=0.5)
    )
    np.testing.assert_allclose([g(0), g(5), g(10)], [2.0, 1.5, 1.0], atol=1e-6)


def test_weight_decay_skips_vectors():
    tx = S.make_optimizer(S.OptimConfig(learning_rate=0.1, weight_decay=0.5, grad_clip=None))
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.05)
    np.testing.assert_allclose(upd["b"], 0.0)


# ---------------------------------------------------------------------------------------
# Log-probs


@pytest.mark.parametrize("chunk", [3, 64])
def test_logprobs_chunked_equal_full_log_softmax(chunk):
    model = init_model(CFG, 1)
    b = _batch(packed=True)
    graphdef, params = nnx.split(model, nnx.Param)
    out = ST.make_logprob_step(graphdef, ST.StepConfig(chunk=chunk), with_entropy=True)(
        params, b.tokens, b.positions, b.segment_ids
    )
    logits, _ = model(
        jnp.asarray(b.tokens), jnp.asarray(b.positions), segment_ids=jnp.asarray(b.segment_ids)
    )
    logsm = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    ref = jnp.take_along_axis(logsm, jnp.asarray(b.tokens)[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)
    seg = np.asarray(b.segment_ids)
    valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    ref = np.where(valid, ref, 0.0)
    ent = np.where(valid, ent, 0.0)
    np.testing.assert_allclose(out.logp[:, 1:], ref, atol=1e-6)
    np.testing.assert_allclose(out.entropy[:, 1:], ent, atol=1e-5)
    assert (np.asarray(out.logp[:, 0]) == 0).all()


def test_logprobs_match_per_sequence_forward():
    """A packed row scores each sequence as if it were alone (attention never crosses)."""
    model = init_model(CFG, 2)
    b = _batch(packed=True)
    graphdef, params = nnx.split(model, nnx.Param)
    lp = ST.make_logprob_step(graphdef, ST.StepConfig(chunk=8))(
        params, b.tokens, b.positions, b.segment_ids
    ).logp
    row = np.asarray(b.tokens[0])
    seg = np.asarray(b.segment_ids[0])
    second = row[seg == 2][None]
    alone = ST.make_logprob_step(graphdef, ST.StepConfig(chunk=8))(
        params, second, np.arange(second.shape[1])[None], np.ones_like(second)
    ).logp
    np.testing.assert_allclose(np.asarray(lp[0])[seg == 2], alone[0], atol=1e-6)


# ---------------------------------------------------------------------------------------
# Update


def _run(tx, batch, cfg, n_steps=2, objective=None, seed=0):
    objective = objective or ST.policy_objective(LossConfig())
    step = ST.make_update_step(tx, objective, cfg)
    state = _state(tx, seed)
    for _ in range(n_steps):
        state, metrics = step(state, batch)
    return state, metrics


@pytest.mark.parametrize(
    "loss_cfg",
    [
        LossConfig(),
        LossConfig(
            kind="atpo", clip_low=3e-3, clip_high=4e-3, agg="seq_mean_token_mean", kl_coef=0.1
        ),
    ],
    ids=["ppo-token-mean", "atpo-seq-mean-kl"],
)
def test_micro_batches_equal_full_batch(loss_cfg):
    # Plain SGD: the parameter change is linear in the gradient. Adam divides by |g| and so
    # turns float-rounding differences of near-zero gradients into full-size steps.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))
    b = _batch(packed=True)
    b = b.replace(ref_logp=np.asarray(b.old_logp) + 0.1 * np.asarray(b.loss_mask))
    obj = ST.policy_objective(loss_cfg)
    full, m_full = _run(tx, b, ST.StepConfig(chunk=16), objective=obj)
    micro, m_micro = _run(tx, b, ST.StepConfig(chunk=16, micro_batches=4), objective=obj)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=0),
        _params_np(full),
        _params_np(micro),
    )
    np.testing.assert_allclose(m_full["loss"], m_micro["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_full["grad_norm"], m_micro["grad_norm"], rtol=1e-5)
    assert int(full.step) == int(micro.step) == 2


def test_remat_does_not_change_the_step():
    """remat=True recomputes layers (scanned) and chunk logits; the update is the same."""
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-3))
    b = _batch()
    ref, _ = _run(tx, b, ST.StepConfig(chunk=4), n_steps=1)
    other, _ = _run(tx, b, ST.StepConfig(chunk=4, remat=True), n_steps=1)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=0),
        _params_np(ref),
        _params_np(other),
    )


def test_a_list_of_layers_round_trips_and_updates_like_the_stack():
    """state.with_layers: stacked -> list -> stacked returns the same parameters, Adam
    moments, logical axes and graph; one update of the list (Decoder.hidden's layer loop, the
    layout training uses without remat) equals one of the stack (the unrolled scan)."""
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-3))
    b = _batch()
    cfg = ST.StepConfig(chunk=4)
    stacked, _ = _run(tx, b, cfg, n_steps=1)  # non-zero moments
    as_list = S.with_layers(stacked, stacked=False)
    assert isinstance(as_list.model().layers, nnx.List)
    assert len(as_list.model().layers) == CFG.num_layers
    assert S.with_layers(as_list, stacked=False) is as_list
    axes = {p: v.get_metadata()["logical_axes"] for p, v in nnx.to_flat_state(as_list.params)}
    assert axes[("layers", 1, "mlp", "gate_proj")] == ("embed", "mlp")
    back = S.with_layers(as_list, stacked=True)
    assert jax.tree.structure(back) == jax.tree.structure(stacked)
    assert back.graphdef == stacked.graphdef
    jax.tree.map(np.testing.assert_array_equal, back, stacked)
    mu = as_list.opt_state[1][0].mu  # (clip, (adam, ...)): a moment follows its parameter
    np.testing.assert_array_equal(
        mu["layers"][1]["mlp"]["gate_proj"][...],
        stacked.opt_state[1][0].mu["layers"]["mlp"]["gate_proj"][...][1],
    )

    # Weight decay follows the rank of one layer's parameter, in both layouts (a stacked
    # norm's [L, D] once counted as rank 2 and was decayed).
    for state, blocks in ((stacked, 1), (as_list, CFG.num_layers)):
        flat = nnx.to_flat_state(S._decay_mask(state.params))
        decays = {p: bool(v.get_value()) for p, v in flat}
        assert sum(decays.values()) == 1 + 7 * blocks, decays  # embedding, 7 projections
        assert not any(v for p, v in decays.items() if "norm" in str(p[-2:])), decays

    step = ST.make_update_step(tx, ST.policy_objective(LossConfig()), cfg)
    want, m_want = step(jax.tree.map(jnp.copy, stacked), b)  # the step donates its state,
    got, m_got = step(as_list, b)  # whose counters and embedding the two layouts share
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=0),
        _params_np(want),
        _params_np(S.with_layers(got, stacked=True)),
    )
    np.testing.assert_allclose(m_want["loss"], m_got["loss"], rtol=1e-6)


@pytest.mark.parametrize("field", ["advantages", "old_logp"])
def test_nonfinite_update_is_skipped_and_counted(field):
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-2))
    step = ST.make_update_step(tx, ST.policy_objective(LossConfig()), ST.StepConfig(chunk=8))
    good = _batch()
    bad_values = np.asarray(getattr(good, field)).copy()
    bad_values[3, 10] = np.nan
    bad = good.replace(**{field: bad_values})
    state, _ = step(_state(tx), good)
    before = jax.tree.map(np.asarray, (nnx.to_pure_dict(state.params), state.opt_state))
    state, metrics = step(state, bad)
    assert int(metrics["skipped"]) == 1 and int(metrics["skipped_total"]) == 1
    assert int(state.skipped) == 1 and int(state.step) == 1
    after = jax.tree.map(np.asarray, (nnx.to_pure_dict(state.params), state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    state, metrics = step(state, good)  # training continues
    assert int(metrics["skipped"]) == 0 and int(state.step) == 2 and int(state.skipped) == 1


def test_objective_weights():
    b = _batch()
    mask = np.asarray(b.loss_mask)
    assert float(ST.token_weight(b)) == mask.sum()
    empty = b.replace(loss_mask=np.where(np.arange(8)[:, None] < 3, mask, 0.0).astype(np.float32))
    assert float(ST.sequence_weight(empty)) == 3
    assert float(ST.row_weight(b)) == 8
    with pytest.raises(ValueError, match="micro_batches"):
        ST.StepConfig(micro_batches=0)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_sharded_step_equals_single_device(remat):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    # A large Adam eps keeps g / (|g| + eps) from amplifying rounding in near-zero gradients.
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-3, eps=1e-3))
    b = _batch(packed=True)
    cfg = ST.StepConfig(chunk=8, micro_batches=2, remat=remat)
    obj = ST.policy_objective(LossConfig())
    single, m_single = _run(tx, b, cfg, n_steps=1, objective=obj)

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state, shardings = S.shard_train_state(_state(tx), tx, mesh)
    step = ST.make_update_step(tx, obj, cfg, mesh=mesh, state_shardings=shardings)
    state, metrics = step(state, shard_batch(b, mesh))

    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
        _params_np(single),
        _params_np(state),
    )
    np.testing.assert_allclose(m_single["loss"], metrics["loss"], rtol=1e-5)
    flat_expected = jax.tree.leaves(shardings.params)
    flat_actual = jax.tree.leaves(state.params)
    sharded = 0
    for want, got in zip(flat_expected, flat_actual, strict=True):
        assert got.sharding.is_equivalent_to(want, got.ndim), (got.sharding, want)
        sharded += not got.sharding.is_fully_replicated
    assert sharded >= 8  # the embedding and the 7 stacked projections: split over fsdp/tensor
    emb = state.params["embed_tokens"].get_value()
    assert emb.sharding.spec == PartitionSpec("tensor", "fsdp")
    mu = state.opt_state[1][0].mu["embed_tokens"].get_value()
    assert mu.sharding.spec == PartitionSpec("tensor", "fsdp")


def test_sharded_logprob_step():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = init_model(CFG, 3)
    graphdef, params = nnx.split(model, nnx.Param)
    b = _batch()
    ref = ST.make_logprob_step(graphdef, ST.StepConfig(chunk=8))(
        params, b.tokens, b.positions, b.segment_ids
    ).logp
    from rlpt_jax.parallel import state_shardings

    psh = state_shardings(params, mesh)
    fn = ST.make_logprob_step(graphdef, ST.StepConfig(chunk=8), mesh=mesh, param_shardings=psh)
    row = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    put = lambda x: jax.device_put(np.asarray(x), row)
    out = fn(jax.device_put(params, psh), put(b.tokens), put(b.positions), put(b.segment_ids))
    np.testing.assert_allclose(out.logp, ref, atol=1e-6)
    assert out.logp.sharding.is_equivalent_to(row, 2)


def test_state_rejects_non_param_variables():
    class WithCounter(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 2)), logical_axes=("embed", "mlp"))
            self.count = nnx.BatchStat(jnp.zeros(()))

    with pytest.raises(ValueError, match="non-Param"):
        S.create_train_state(WithCounter(), optax.sgd(0.1))


def test_batch_is_a_pytree():
    b = _batch()
    leaves = jax.tree.leaves(b)
    assert len(leaves) == 7  # ref_logp None is no leaf
    assert len(jax.tree.leaves(b.replace(ref_logp=b.old_logp))) == 8
    assert dataclasses.is_dataclass(b)


def test_remat_hidden_equals_plain_hidden():
    """The remat path (each scanned layer recomputed in the backward pass) gives the same
    forward and gradient as the plain one."""
    model = init_model(CFG, 4)
    b = _batch(packed=True)
    args = (jnp.asarray(b.tokens), jnp.asarray(b.positions), jnp.asarray(b.segment_ids))
    ref, _ = model.hidden(args[0], args[1], segment_ids=args[2])
    remat, _ = model.hidden(args[0], args[1], segment_ids=args[2], remat=True)
    np.testing.assert_allclose(remat, ref, atol=1e-6)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, remat):
        m = nnx.merge(graphdef, params)
        h = m.hidden(args[0], args[1], segment_ids=args[2], remat=remat)[0]
        return jnp.mean(jnp.sin(h))

    g_ref = nnx.to_pure_dict(jax.grad(loss)(params, False))
    g_scan = nnx.to_pure_dict(jax.grad(loss)(params, True))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-8), g_ref, g_scan)


def test_weight_decay_mask_on_model_state():
    tx = S.make_optimizer(S.OptimConfig(learning_rate=0.1, weight_decay=0.5, grad_clip=1.0))
    state = _state(tx)
    zero = jax.tree.map(jnp.zeros_like, state.params)
    upd, _ = tx.update(zero, state.opt_state, state.params)
    upd, params = nnx.to_pure_dict(upd), nnx.to_pure_dict(state.params)
    np.testing.assert_allclose(upd["norm"]["weight"], 0.0)
    np.testing.assert_allclose(upd["embed_tokens"], -0.05 * params["embed_tokens"], rtol=1e-6)
