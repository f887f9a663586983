"""π_old recomputed by the training forward (``loss.old_logprobs="recompute"``, verl's
choice) rather than taken from the sampler: the first mini-batch's importance ratios are
exactly 1, and the step logs how far the sampler's log-probs were from the recomputed ones."""

import jax
import numpy as np
import optax
import pytest

from hf_fixtures import tiny_llama_config
from rlpt_jax import batch as B
from rlpt_jax.algos.losses import LossConfig
from rlpt_jax.models.decoder import init_model
from rlpt_jax.train import state as S
from rlpt_jax.train import steps as ST
from rlpt_jax.train.loop import _split_rows

ATPO = LossConfig(kind="atpo", clip_low=3e-3, clip_high=4e-3, agg="seq_mean_token_mean")


def _batch(vocab: int, rows=8, length=16, seed=0) -> B.RLBatch:
    """Right-padded rows, two turns each; ``old_logp`` stands in for the sampler's."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, length))
    lengths = rng.integers(length // 2, length + 1, rows)
    idx = np.arange(length)
    seg = (idx[None] < lengths[:, None]).astype(np.int32)
    mask = ((idx[None] >= 3) & (seg > 0)).astype(np.float32)
    mask[:, 8] = 0  # a tool result between the turns
    sampler = np.where(mask > 0, rng.normal(-4.0, 0.3, (rows, length)), 0.0)
    return B.make_batch(tokens, mask, rng.normal(size=rows), sampler, segment_ids=seg)


def _state(batch_invariant: bool) -> S.TrainState:
    cfg = tiny_llama_config(64).replace(batch_invariant=batch_invariant)
    return S.create_train_state(init_model(cfg, 0), optax.sgd(0.1))


def _setup(batch_invariant: bool, step_cfg: ST.StepConfig):
    state = _state(batch_invariant)
    logprob = ST.make_logprob_step(state.graphdef, step_cfg)
    update = ST.make_update_step(optax.sgd(0.1), ST.policy_objective(ATPO), step_cfg)
    return state, logprob, update, _batch(tiny_llama_config(64).vocab_size)


@pytest.mark.parametrize(("remat", "micro"), [(False, 1), (True, 2)], ids=["plain", "remat-micro"])
def test_recompute_makes_the_first_mini_batch_ratios_exactly_one(remat, micro):
    """The loop's order: rescore the whole batch, split it into mini-batches (2 here), update
    on the first. With batch-invariant numerics the update's forward reproduces the
    rescoring bit for bit, whatever its rows, remat or micro-batching."""
    step_cfg = ST.StepConfig(chunk=8, remat=remat, micro_batches=micro)
    state, logprob, update, batch = _setup(True, step_cfg)
    rescored, _ = ST.recompute_old_logp(logprob, state.params, batch)
    first = _split_rows(rescored, 2)[0]
    _, m = update(state, first)
    assert float(m["ratio_min"]) == float(m["ratio_max"]) == 1.0
    assert float(m["clip_frac_low"]) == float(m["clip_frac_high"]) == 0.0
    # The sampler's log-probs as pi_old (the old behaviour): ratios far from 1. (The
    # update donated its input state: a fresh one, the same weights.)
    _, m_sampler = update(_state(True), _split_rows(batch, 2)[0])
    assert float(m_sampler["ratio_max"]) - float(m_sampler["ratio_min"]) > 0.1


def test_recompute_without_batch_invariance_is_one_up_to_rounding():
    state, logprob, update, batch = _setup(False, ST.StepConfig(chunk=8))
    rescored, _ = ST.recompute_old_logp(logprob, state.params, batch)
    _, m = update(state, _split_rows(rescored, 2)[0])
    assert abs(float(m["ratio_min"]) - 1) < 1e-6 and abs(float(m["ratio_max"]) - 1) < 1e-6


def test_recompute_replaces_old_logp_on_loss_tokens_and_logs_the_gap():
    state, logprob, _, batch = _setup(False, ST.StepConfig(chunk=8))
    rescored, m = ST.recompute_old_logp(logprob, state.params, batch)
    mask = np.asarray(batch.loss_mask) > 0
    want = np.asarray(logprob(state.params, batch.tokens, batch.positions, batch.segment_ids).logp)
    np.testing.assert_array_equal(np.asarray(rescored.old_logp)[mask], want[mask])
    assert (np.asarray(rescored.old_logp)[~mask] == 0).all()
    gap = np.abs(want - np.asarray(batch.old_logp))[mask]
    assert m["train/old_logp_diff_max"] == pytest.approx(float(gap.max()), rel=1e-6)
    assert m["train/old_logp_diff_mean"] == pytest.approx(float(gap.mean()), rel=1e-6)
    for name in ("tokens", "loss_mask", "advantages", "turn_ids"):
        np.testing.assert_array_equal(getattr(rescored, name), getattr(batch, name))


def test_sharded_recompute_equals_single_device():
    from rlpt_jax.parallel import MeshConfig, make_mesh

    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    state, logprob, _, batch = _setup(False, ST.StepConfig(chunk=8))
    single, m_single = ST.recompute_old_logp(logprob, state.params, batch)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    state_s, shardings = S.shard_train_state(state, optax.sgd(0.1), mesh)
    sharded_step = ST.make_logprob_step(
        state_s.graphdef, ST.StepConfig(chunk=8), mesh=mesh, param_shardings=shardings.params
    )
    sharded, m_sharded = ST.recompute_old_logp(sharded_step, state_s.params, batch, mesh)
    np.testing.assert_allclose(sharded.old_logp, single.old_logp, rtol=1e-5, atol=1e-6)
    assert m_sharded["train/old_logp_diff_max"] == pytest.approx(
        m_single["train/old_logp_diff_max"], rel=1e-5
    )


def test_old_logprobs_config():
    from test_configs import VARIANTS, _module

    from rlpt_jax.train.experiment import from_config_dict

    assert LossConfig().old_logprobs == "recompute"
    with pytest.raises(ValueError, match="old_logprobs='vllm'"):
        LossConfig(old_logprobs="vllm")
    for name, variants in VARIANTS.items():
        for variant in variants:
            exp = from_config_dict(_module(name).get_config(variant))
            assert exp.loss.old_logprobs == "recompute", (name, variant)
    over = _module("at2po_qwen").get_config("qwen3_4b")
    over.loss.old_logprobs = "sampler"  # the option stays reachable from the command line
    assert from_config_dict(over).loss.old_logprobs == "sampler"


def test_scoring_in_row_slices_equals_one_call():
    """The loop scores pi_old (and the KL reference) in slices of an update micro-batch's
    rows, so the extra forward never holds more activations than an update; with
    batch-invariant numerics the slices give the one-call result bit for bit."""
    state, logprob, _, batch = _setup(True, ST.StepConfig(chunk=8))
    whole = ST.score_batch(logprob, state.params, batch)
    np.testing.assert_array_equal(ST.score_batch(logprob, state.params, batch, rows=2), whole)
    sliced, _ = ST.recompute_old_logp(logprob, state.params, batch, rows=4)
    np.testing.assert_array_equal(sliced.old_logp, np.where(batch.loss_mask > 0, whole, 0.0))
    with pytest.raises(ValueError, match="do not split into slices of 3"):
        ST.score_batch(logprob, state.params, batch, rows=3)
