"""Sampler on tiny models: sampling distributions, strict parity, errors, sharding, buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from hf_fixtures import hf_greedy, save_tiny, tiny_hf_model
from rlpt_jax import parallel
from rlpt_jax.models.config import ModelConfig
from rlpt_jax.models.decoder import Cache, Decoder
from rlpt_jax.models.hf_io import load_hf
from rlpt_jax.sampling import (
    TRACE_COUNTS,
    Sampler,
    SamplerConfig,
    SamplerError,
    SamplingParams,
)
from rlpt_jax.sampling import sample as sample_lib

# ---------------------------------------------------------------- sampling distributions
LOGITS = np.log(np.array([0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.03, 0.02]))
DRAWS = 40_000


def _draw(logits, *, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    b = DRAWS
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (b, len(logits)))
    u = sample_lib.row_uniforms(
        jnp.uint32(seed), jnp.arange(b, dtype=jnp.uint32), jnp.zeros(b, jnp.int32)
    )
    toks = sample_lib.sample_tokens(
        batch,
        u,
        jnp.float32(temperature),
        jnp.float32(top_p),
        greedy=False,
        top_k=top_k,
        use_top_p=top_p < 1.0,
    )
    return np.bincount(np.asarray(toks), minlength=len(logits))


def _expected(logits, *, temperature=1.0, top_k=0, top_p=1.0):
    """Reference written independently: sort, keep, renormalise (Hugging Face order)."""
    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z)
    keep = np.zeros(len(z), bool)
    keep[order[: top_k or len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0)
    p /= p.sum()
    cum = 0.0
    for i in order:
        if keep[i] and cum >= top_p:
            keep[i] = False
        cum += p[i]
    p = np.where(keep, p, 0)
    return p / p.sum()


def _chi2_pvalue(counts, expected):
    support = expected > 0
    assert counts[~support].sum() == 0, "drew a token outside the allowed set"
    return stats.chisquare(counts[support], expected[support] * counts.sum()).pvalue


CASES = [
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.7),
    dict(top_k=3),
    dict(top_p=0.6),  # keeps {0.30, 0.22, 0.16}: cumulative before token 3 is 0.68 >= 0.6
    dict(temperature=0.8, top_k=5, top_p=0.7),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_sampling_distribution_chi_square(case):
    counts = _draw(LOGITS, **case, seed=11)
    assert _chi2_pvalue(counts, _expected(LOGITS, **case)) > 1e-3


def test_chi_square_rejects_wrong_distributions():
    """The statistical test has power: plausible bugs are rejected."""
    counts = _draw(LOGITS, temperature=0.6)
    assert _chi2_pvalue(counts, _expected(LOGITS, temperature=1.0)) < 1e-6  # T ignored
    assert _chi2_pvalue(counts, _expected(LOGITS, temperature=1 / 0.6)) < 1e-6  # T inverted
    counts = _draw(LOGITS, top_p=0.6)
    with pytest.raises(AssertionError, match="outside the allowed set"):
        _chi2_pvalue(counts, _expected(LOGITS, top_k=2))  # inclusive/exclusive cut mixed up
    top_p_wrong = _expected(LOGITS, top_k=4)  # one token too many
    assert _chi2_pvalue(counts, top_p_wrong) < 1e-6 or counts[3] == 0


def test_two_level_draw_over_a_large_vocab():
    """V=700: three 256-token blocks, the last partial; mass spread over all of them."""
    rng = np.random.default_rng(0)
    logits = np.log(rng.dirichlet(np.full(700, 0.3))).astype(np.float32)
    logits[rng.choice(700, 200, replace=False)] = -np.inf  # forbidden tokens in every block
    counts = _draw(logits, seed=2)
    expected = np.exp(logits - logits.max())
    expected /= expected.sum()
    big = expected * DRAWS >= 5  # chi-square on the cells with enough expected draws
    assert counts[expected == 0].sum() == 0
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum()) * DRAWS
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_argmax_is_first_maximum():
    logits = jnp.asarray([[1.0, 3.0, 3.0, 2.0], [5.0, 0.0, 5.0, 5.0], [-1.0, -2.0, -3.0, -0.5]])
    np.testing.assert_array_equal(sample_lib.argmax(logits), [1, 0, 3])


def test_top_p_keeps_at_least_the_most_likely_token():
    counts = _draw(LOGITS, top_p=0.01)
    assert counts[0] == DRAWS


def test_draw_never_picks_masked_tokens_at_cdf_edges():
    z = jnp.asarray([[-jnp.inf, 0.0, -jnp.inf, 0.0, -jnp.inf]] * 4)
    u = jnp.asarray([np.finfo(np.float32).tiny, 0.5, 0.999999, 1.0], jnp.float32)
    assert set(np.asarray(sample_lib.draw(z, u)).tolist()) <= {1, 3}


def test_raw_stats_ignore_temperature_and_filters():
    logits = jnp.asarray([LOGITS, LOGITS[::-1]], jnp.float32)
    lp, ent = sample_lib.raw_stats(logits, jnp.asarray([2, 0]))
    ref = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(lp, [ref[0, 2], ref[1, 0]], rtol=1e-6)
    p = np.exp(LOGITS) / np.exp(LOGITS).sum()
    np.testing.assert_allclose(ent, [-(p * np.log(p)).sum()] * 2, rtol=1e-5)


# ---------------------------------------------------------------- tiny model with known logits
def _known_logits_model(target: np.ndarray) -> Decoder:
    """A Decoder whose next-token logits are ``target`` at every position: attention and MLP
    outputs are zeroed, every embedding row is ones, and the head reads one coordinate."""
    v = len(target)
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=v,
        hidden_size=8,
        intermediate_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        max_position_embeddings=256,
    )
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    model.embed_tokens[...] = jnp.ones((v, 8))
    layers = model.layers  # stacked: every layer at once
    layers.self_attn.o_proj[...] = jnp.zeros_like(layers.self_attn.o_proj[...])
    layers.mlp.down_proj[...] = jnp.zeros_like(layers.mlp.down_proj[...])
    head = np.zeros((8, v), np.float32)
    head[0] = target
    model.lm_head[...] = jnp.asarray(head)
    return model


def test_end_to_end_sampling_matches_known_distribution():
    model = _known_logits_model(LOGITS)
    sampler = Sampler(model, config=SamplerConfig(decode_chunk=16))
    params = SamplingParams(max_new_tokens=40, temperature=0.7, top_k=6, n=64, seed=5)
    out = sampler.generate([[1, 2, 3], [4]], params)
    toks = np.concatenate([s.tokens for group in out for s in group])
    assert len(toks) == 2 * 64 * 40
    counts = np.bincount(toks, minlength=len(LOGITS))
    assert _chi2_pvalue(counts, _expected(LOGITS, temperature=0.7, top_k=6)) > 1e-3
    raw = jax.nn.log_softmax(jnp.asarray(LOGITS, jnp.float32))
    lp = np.concatenate([s.logprobs for group in out for s in group])
    np.testing.assert_allclose(lp, np.asarray(raw)[toks], atol=1e-6)
    assert all(s.finish_reason == "length" for group in out for s in group)


def test_results_do_not_depend_on_chunking_or_batching():
    model = _known_logits_model(LOGITS)
    params = SamplingParams(max_new_tokens=11, temperature=1.0, n=2, seed=9)
    a = Sampler(model, config=SamplerConfig(decode_chunk=3)).generate([[1, 2]], params)
    b = Sampler(model, config=SamplerConfig(decode_chunk=32, min_rows=8)).generate([[1, 2]], params)
    for x, y in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(x.tokens, y.tokens)


# ---------------------------------------------------------------- tiny checkpoints, strict parity
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny("qwen3", tmp_path_factory.mktemp("tiny") / "qwen3")
    return load_hf(path)


@pytest.fixture(scope="module")
def tiny_sampler(tiny):
    """Shared across tests: every Sampler compiles its own prefill and decode functions."""
    return Sampler(tiny)


def _training_logprobs(model, prompt, gen, total=64):
    seq = list(prompt) + list(gen)
    pad = total - len(seq)
    tokens = jnp.asarray([seq + [0] * pad], jnp.int32)
    mask = jnp.asarray([[1] * len(seq) + [0] * pad], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits, _ = model(tokens, positions, attention_mask=mask)
    logp = np.asarray(jax.nn.log_softmax(logits[0]))
    return np.asarray([logp[len(prompt) - 1 + i, g] for i, g in enumerate(gen)])


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama3", "llama_tied"])
def test_tiny_families_greedy_and_logprobs_strict(kind, tmp_path, one_torch_thread):
    """Every family feature (q/k norm, biases, llama3 RoPE, tied head) through the sampler's
    own cached forward: greedy == transformers, log-probs == training forward within 1e-5."""
    model = load_hf(save_tiny(kind, tmp_path / kind))
    hf = tiny_hf_model(kind)
    sampler = Sampler(model, config=SamplerConfig(decode_chunk=8))
    prompts = [[5, 17, 33, 3, 60, 8, 9], [44, 12], [70, 71, 72, 73]]
    greedy = sampler.generate(prompts, SamplingParams(max_new_tokens=20, temperature=0.0))
    sampled = sampler.generate(prompts, SamplingParams(max_new_tokens=20, seed=1))
    for prompt, (g,), (s,) in zip(prompts, greedy, sampled, strict=True):
        np.testing.assert_array_equal(g.tokens, hf_greedy(hf, prompt, 20))
        for out in (g, s):
            ref_lp = _training_logprobs(model, prompt, out.tokens)
            np.testing.assert_allclose(out.logprobs, ref_lp, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- sessions on the tiny model
def test_release_reuse_and_growth_keep_results(tiny_sampler):
    sampler = tiny_sampler
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    ref = sampler.generate([[9, 8, 7, 6, 5]], params)[0][0]
    sess = sampler.session(rows=1, length=64)
    (a,) = sess.add([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    sess.generate([a], SamplingParams(max_new_tokens=20, temperature=0.0))
    sess.release([a])
    (b,) = sess.add([[9, 8, 7, 6, 5]])
    assert b == a  # the freed row is reused; its stale slots must not leak in
    rows = sess.add([[9, 8, 7, 6, 5]] * 3)  # grows from 1 to 4 rows
    assert sess.num_rows == 4
    for s in sess.generate([b, *rows], params):
        np.testing.assert_array_equal(s.tokens, ref.tokens)
    with pytest.raises(SamplerError, match="not a live row"):
        sess.generate([a + 7], params)


def test_continue_and_fork_equal_scratch_strict(tiny, tiny_sampler):
    """Append a tool result, continue, fork mid-depth: == generating from scratch (1e-5)."""
    sampler = tiny_sampler
    turn = SamplingParams(max_new_tokens=9, temperature=1.0, seed=6)
    sess = sampler.session(rows=4, length=64)
    (row,) = sess.add([[5, 9, 14, 20, 31]])
    (first,) = sess.generate([row], turn)
    sess.append([row], [[40, 41, 42, 43, 44, 45, 46]])
    history = sess.tokens(row)
    before = sess.prefilled_tokens
    (second,) = sess.generate([row], turn)
    assert sess.prefilled_tokens - before == 7  # only the appended tokens
    branches = sess.fork(row, 2, length=len(history))
    outs = sess.generate(branches, turn)
    assert sess.prefilled_tokens - before == 7 + 2  # + one re-fed token per branch
    scratch = sampler.session(rows=4, length=64)
    (r,) = scratch.add([history])
    (ref,) = scratch.generate([r], turn)
    # `second` and `ref` are both their session's first row: the same random stream.
    np.testing.assert_array_equal(second.tokens, ref.tokens)
    np.testing.assert_allclose(second.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    ref_lp = _training_logprobs(tiny, history, ref.tokens)
    for got in outs:  # branches draw their own tokens; their log-probs match training
        np.testing.assert_allclose(
            got.logprobs, _training_logprobs(tiny, history, got.tokens), atol=1e-5, rtol=0
        )
    np.testing.assert_allclose(second.logprobs, ref_lp, atol=1e-5, rtol=0)


def test_generating_a_few_rows_of_a_large_session_uses_a_compact_batch(tiny_sampler):
    """Rows decoded on a compact copy are written back; the other rows are untouched."""
    sampler = tiny_sampler
    params = SamplingParams(max_new_tokens=7, temperature=1.0, seed=4)
    prompts = [[3 + i, 4 + i, 5 + i] for i in range(8)]
    sess = sampler.session(rows=8, length=64)
    rows = sess.add(prompts)
    a, b = sess.generate([rows[5], rows[2]], params)
    assert TRACE_COUNTS["put"] >= 1  # the write-back of a compact pass exists
    (c,) = sess.generate([rows[6]], params)
    full = sampler.session(rows=8, length=64)
    frows = full.add(prompts)
    ref = full.generate(frows, params)  # every row at once: no compaction
    for got, want in ((a, ref[5]), (b, ref[2]), (c, ref[6])):
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-6)
    # continuing a compacted row continues from its written-back cache
    (d,) = sess.generate([rows[5]], params)
    (e,) = full.generate([frows[5]], params)
    np.testing.assert_array_equal(d.tokens, e.tokens)


def test_same_bucket_does_not_recompile_and_new_bucket_does(tiny_sampler):
    sampler = tiny_sampler
    params = SamplingParams(max_new_tokens=5, temperature=0.9, top_p=0.8, seed=2)
    sampler.generate([[1, 2, 3]], params)
    before = dict(TRACE_COUNTS)
    sampler.generate([[4, 5, 6, 7, 8]], params)  # 5 tokens: same 8-token prefill bucket
    sampler.generate([[4, 5, 6, 7, 8]], SamplingParams(max_new_tokens=5, top_p=0.8, seed=3))
    assert dict(TRACE_COUNTS) == before
    sampler.generate([[4] * 12], params)  # 12 tokens: 16-token bucket → one new prefill
    assert TRACE_COUNTS["prefill"] == before["prefill"] + 1


def test_bfloat16_cache_halves_kv_bytes(tiny, tiny_sampler):
    s32 = tiny_sampler
    s16 = Sampler(tiny, config=SamplerConfig(cache_dtype="bfloat16"))
    kv = lambda s: Cache.nbytes(tiny.cfg, 8, 64, s.cache_dtype)  # noqa: E731
    pos = 8 * 64 * 4
    assert kv(s32) - pos == 2 * (kv(s16) - pos)
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    a = s16.generate([[1, 2, 3]], params)[0][0]
    b = s32.generate([[1, 2, 3]], params)[0][0]
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=0.05)
    assert s16.last_session.cache.k[0].dtype == jnp.bfloat16


def test_stop_token_ids_and_eos_finish_reasons(tiny, tiny_sampler):
    sampler = tiny_sampler
    free = sampler.generate([[5, 6]], SamplingParams(max_new_tokens=12, temperature=0.0))[0][0]
    stop = int(free.tokens[4])
    first = int(np.argmax(free.tokens == stop))
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=(stop,))
    (s,) = sampler.generate([[5, 6]], params)[0]
    assert s.finish_reason == "stop" and s.tokens.tolist() == free.tokens[: first + 1].tolist()
    eos_sampler = Sampler(load_tiny_with_eos(tiny, stop))
    (e,) = eos_sampler.generate([[5, 6]], SamplingParams(max_new_tokens=12, temperature=0.0))[0]
    assert e.finish_reason == "eos" and e.tokens[-1] == stop


def load_tiny_with_eos(model, eos: int):
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    clone.cfg = model.cfg.replace(eos_token_ids=(eos,))
    return clone


# ---------------------------------------------------------------- bad input
def test_bad_inputs_fail_with_clear_errors(tiny):
    sampler = Sampler(tiny, config=SamplerConfig(max_cache_length=64))
    ok = SamplingParams(max_new_tokens=4)
    with pytest.raises(SamplerError, match="74 slots is needed, but the limit is 64"):
        sampler.generate([[1] * 70], ok)
    sess = sampler.session(rows=2, length=32)
    with pytest.raises(SamplerError, match="longer than the cache of 32 slots"):
        sess.add([[1] * 33])
    with pytest.raises(SamplerError, match="prompt 1 is empty"):
        sampler.generate([[1, 2], []], ok)
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=0.0)
    with pytest.raises(SamplerError, match="stop token id 5000 is not in the vocabulary"):
        sampler.generate([[1, 2]], SamplingParams(stop_token_ids=(5000,)))
    with pytest.raises(SamplerError, match="stop strings need a tokenizer"):
        sampler.generate([[1, 2]], SamplingParams(stop=("</search>",)))
    with pytest.raises(SamplerError, match="outside the vocab"):
        sampler.generate([[1, 500]], ok)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        Sampler(tiny, config=SamplerConfig(max_cache_length=4096))
    with pytest.raises(ValueError, match="cache_dtype must be one of"):
        SamplerConfig(cache_dtype="float16")


def test_memory_budget_is_checked_before_allocating(tiny):
    budget = 200_000
    sampler = Sampler(tiny, config=SamplerConfig(memory_budget_bytes=budget))
    need = sampler.cache_nbytes(64, 128)
    assert need > budget
    with pytest.raises(SamplerError, match="over the memory budget"):
        sampler.session(rows=64, length=128)
    sess = sampler.session(rows=1, length=64)
    assert sess.nbytes == sampler.cache_nbytes(1, 64) <= budget
    with pytest.raises(SamplerError, match="over the memory budget"):
        sess.add([[1, 2]] * 64)  # growing past the budget fails too


# ---------------------------------------------------------------- sharding
def test_sharded_sampling_equals_single_device(tiny, tiny_sampler):
    shape = (2, 2, 2)
    mesh = parallel.make_mesh(parallel.MeshConfig(*shape))
    trained = parallel.reshard_model(tiny, mesh, parallel.TRAIN_RULES)
    sharded = Sampler(trained, mesh=mesh)
    single = tiny_sampler
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    for params in (
        SamplingParams(max_new_tokens=12, temperature=0.0),
        SamplingParams(max_new_tokens=12, temperature=1.0, n=2, seed=4),
    ):
        a = sharded.generate(prompts, params)
        b = single.generate(prompts, params)
        for ga, gb in zip(a, b, strict=True):
            for x, y in zip(ga, gb, strict=True):
                np.testing.assert_array_equal(x.tokens, y.tokens)
                np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-5)
    cache = sharded.last_session.cache
    assert sharded.last_session.num_rows % (shape[0] * shape[1]) == 0
    assert len(cache.k[0].sharding.device_set) == 8
    spec = sharded.state["layers"][0]["self_attn"]["q_proj"].get_value().sharding.spec
    assert "fsdp" not in str(spec) and "tensor" in str(spec)  # sampling layout
