"""Sampler on the embedded SmolLM2-135M: parity with transformers, with the training forward,
continuation and forking against generation from scratch, stop strings, recompilation."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_fixtures import hf_greedy
from rlpt_jax.models.hf_io import load_hf
from rlpt_jax.models.tokenizer import Tokenizer
from rlpt_jax.sampling import TRACE_COUNTS, Sampler, SamplerConfig, SamplingParams, engine
from rlpt_jax.train.steps import token_logprobs

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n",
    "1, 2, 3,",
]
GREEDY = SamplingParams(max_new_tokens=32, temperature=0.0)
# One sampling configuration for the whole file (each distinct one compiles the decode loop).
SAMPLED = SamplingParams(max_new_tokens=12, temperature=0.5, top_k=5, top_p=0.9, seed=3)


def _setup(model_dir, batch_invariant: bool):
    model = load_hf(model_dir, batch_invariant=batch_invariant)
    tok = Tokenizer(model_dir)
    # One row, slot and prefill bucket for the whole file: each new shape compiles the 30-layer
    # model again, which dominates this file's run time.
    cfg = SamplerConfig(min_rows=4, min_cache_length=128, min_length_bucket=64)
    return model, tok, Sampler(model, tok, cfg)


def _greedy_out(setup):
    _, tok, sampler = setup
    prompts = [tok.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 4
    return prompts, sampler.generate(prompts, GREEDY)


@pytest.fixture(scope="module")
def setup(embedded_model_dir):
    return _setup(embedded_model_dir, batch_invariant=False)


@pytest.fixture(scope="module")
def greedy_out(setup):
    return _greedy_out(setup)


@nnx.jit(static_argnames="entropy")
def _training_logprobs_jit(model, tokens, positions, segment_ids, entropy=False):
    return token_logprobs(model, tokens, positions, segment_ids, with_entropy=entropy)


# Two numerics (ModelConfig.batch_invariant). The default, fast path: float32 log-probs of the
# same tokens computed along different paths differ by up to ~1.5e-5 on a few tokens of
# SmolLM2's 30 layers (greedy vs training 1.47e-5, continued turn vs from scratch 1.39e-5;
# medians far below 1e-5). On XLA:CPU several operations choose their implementation, and so
# their float32 rounding order, from the array's shape (bench/rounding_probe.py prints which):
# x·W runs a sequential-FMA kernel below ~48 rows and a packed kernel above; RMSNorm, softmax
# and cos/sin round differently at different lengths. The batch-invariant path removes every
# source (rlpt_jax.models.decoder docstring: x·Wᵀ matmuls, float64 norms, RoPE, attention
# and scoring) and its sampler log-probs equal the training forward's bit for bit; it decodes
# ~30% slower at batch 16 (bench/sampler.py). The 1e-5 bound is checked on both; the
# fast path's check is xfail(strict=True), so it fails loudly once that path meets it too.
_KNOWN_GAP = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="fast path: SmolLM2 log-probs along different float32 paths differ by up to 1.5e-5",
)


@pytest.fixture(scope="module")
def invariant_setup(embedded_model_dir):
    return _setup(embedded_model_dir, batch_invariant=True)


@pytest.fixture(scope="module")
def invariant_greedy_out(invariant_setup):
    return _greedy_out(invariant_setup)


def _training_logprobs(model, prompt, gen, total=64, entropy=False):
    """Teacher-forced log-probs of gen after prompt, exactly as the training step computes
    them (``token_logprobs``): one row right-padded to ``total`` with segment ids 1/0. With
    ``entropy``, also the entropies of the distributions the tokens were drawn from."""
    seq = list(prompt) + list(gen)
    pad = total - len(seq)
    tokens = np.asarray([seq + [0] * pad], np.int32)
    mask = np.asarray([[1] * len(seq) + [0] * pad], np.int32)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logp, ent = _training_logprobs_jit(
        model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask), entropy=entropy
    )
    logp = np.asarray(logp[0, len(prompt) : len(seq)])
    return (logp, np.asarray(ent[0, len(prompt) : len(seq)])) if entropy else logp


@pytest.mark.parametrize("numerics", ["fast", "batch_invariant"])
def test_greedy_equals_transformers_generate(
    embedded_model_dir, numerics, request, one_torch_thread
):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    fixture = "greedy_out" if numerics == "fast" else "invariant_greedy_out"
    prompts, out = request.getfixturevalue(fixture)
    for prompt, (sample,) in zip(prompts, out, strict=True):
        ref = hf_greedy(hf, prompt, 32)
        np.testing.assert_array_equal(sample.tokens, ref)
        assert sample.finish_reason == ("eos" if len(ref) < 32 else "length")
    assert sum(s.finish_reason == "length" for (s,) in out) >= 3  # 32 real decode steps


@pytest.mark.parametrize("numerics", [pytest.param("fast", marks=_KNOWN_GAP), "batch_invariant"])
def test_logprobs_equal_training_forward(numerics, request):
    """Within 1e-5 of the training step's log-probs: the four greedy generations, and a
    turn generated after a host-appended tool result (continued through the cache), which
    also equals generating that turn from scratch."""
    prefix = "" if numerics == "fast" else "invariant_"
    model, tok, sampler = request.getfixturevalue(prefix + "setup")
    prompts, out = request.getfixturevalue(prefix + "greedy_out")
    errors = []
    for prompt, (sample,) in zip(prompts, out, strict=True):
        errors.append(_max_error_vs_training(model, prompt, sample))
    prompt, tool = tok.encode(PROMPTS[0]), tok.encode(" <result>Paris is in France.</result> So")
    sess = sampler.session(rows=4, length=128)
    (row,) = sess.add([prompt])
    turn = SamplingParams(max_new_tokens=10, temperature=0.0)
    (first,) = sess.generate([row], turn)
    sess.append([row], [tool])
    (second,) = sess.generate([row], turn)
    history = prompt + first.tokens.tolist() + tool
    errors.append(_max_error_vs_training(model, history, second))
    # The same turn generated from scratch (history prefilled, not decoded) — the issue's
    # continuation bound, also 1e-5: the decoded and the prefilled first turn differ in the
    # last float32 bits too.
    fresh = sampler.generate([history], turn)[0][0]
    np.testing.assert_array_equal(second.tokens, fresh.tokens)
    errors.append(float(np.max(np.abs(second.logprobs - fresh.logprobs))))
    assert max(errors) <= 1e-5, (
        f"max |difference| of log-probs per generation (4 greedy vs training, continued turn vs "
        f"training, continued turn vs from scratch): {errors}"
    )
    if numerics == "batch_invariant":  # the documented property: not close, identical
        assert max(errors) == 0.0, errors


def test_batch_invariant_sampled_logprobs_and_entropies_are_the_training_ones(invariant_setup):
    """A sampled (T=0.5, top-k, top-p) generation on the batch-invariant model: log-probs and
    entropies equal the training step's bit for bit, batched with other rows or alone."""
    model, tok, sampler = invariant_setup
    prompts = [tok.encode(p) for p in PROMPTS]
    batched = sampler.generate(prompts, SAMPLED)
    alone = sampler.generate(prompts[:1], SAMPLED)[0][0]  # same seed stream as row 0
    np.testing.assert_array_equal(alone.tokens, batched[0][0].tokens)
    for prompt, (sample,) in zip(prompts, batched, strict=True):
        logp, ent = _training_logprobs(
            model, prompt, sample.tokens, len(prompt) + len(sample.tokens), entropy=True
        )
        np.testing.assert_array_equal(sample.logprobs, logp)
        np.testing.assert_array_equal(sample.entropies, ent)
    np.testing.assert_array_equal(alone.logprobs, batched[0][0].logprobs)


def test_entropies_and_logprobs_are_a_real_distribution(greedy_out):
    for _, (sample,) in zip(*greedy_out, strict=True):
        assert np.all(sample.entropies >= 0) and np.all(np.isfinite(sample.entropies))
        assert not np.allclose(sample.logprobs, 0)  # a real distribution, not one-hot
        assert np.all(sample.logprobs <= 0)


def _max_error_vs_training(model, prompt, sample) -> float:
    ref = _training_logprobs(model, prompt, sample.tokens, total=len(prompt) + len(sample.tokens))
    return float(np.max(np.abs(sample.logprobs - ref)))


def _assert_matches_training(model, prompt, sample):
    ref = _training_logprobs(model, prompt, sample.tokens, total=len(prompt) + len(sample.tokens))
    np.testing.assert_allclose(sample.logprobs, ref, atol=1e-5, rtol=0)


def test_logprobs_close_to_training_forward_median(setup, greedy_out):
    """The typical token agrees far better than the bound; entropies are real."""
    model, _, _ = setup
    prompts, out = greedy_out
    for prompt, (sample,) in zip(prompts, out, strict=True):
        ref = _training_logprobs(model, prompt, sample.tokens, len(prompt) + len(sample.tokens))
        assert np.median(np.abs(sample.logprobs - ref)) <= 1e-5
        assert np.all(sample.entropies >= 0) and np.all(np.isfinite(sample.entropies))
        assert not np.allclose(sample.logprobs, 0)  # a real distribution, not one-hot


def test_sampled_logprobs_use_raw_distribution(setup):
    """At T=0.5 with top-k the recorded log-prob is still the raw policy's, not the filtered
    distribution's (which would be larger)."""
    model, tok, sampler = setup
    prompt = tok.encode(PROMPTS[1])
    (sample,) = sampler.generate([prompt], SAMPLED)[0]
    _assert_matches_training(model, prompt, sample)


def test_continue_and_fork_equal_generation_from_scratch(setup):
    """Host appends a 'tool result' and continues; a fork at mid-depth re-generates a turn.
    Both equal generating from scratch on the concatenated sequence, and the prefill counter
    shows the shared prefix was not recomputed."""
    model, tok, sampler = setup
    prompt = tok.encode(PROMPTS[0])
    tool = tok.encode(" <result>Paris is in France.</result> So")
    turn = SamplingParams(max_new_tokens=10, temperature=0.0)

    sess = sampler.session(rows=4, length=128)
    (row,) = sess.add([prompt])
    (first,) = sess.generate([row], turn)
    sess.append([row], [tool])
    (second,) = sess.generate([row], turn)
    assert sess.prefilled_tokens == len(prompt) + len(tool)  # prompt once, then only the tool
    history = prompt + first.tokens.tolist() + tool
    assert sess.tokens(row) == history + second.tokens.tolist()

    # Fork the state after the tool result (before the second turn acted): 2 branches.
    before = sess.prefilled_tokens
    branches = sess.fork(row, 2, length=len(history))
    outs = sess.generate(branches, turn)
    assert sess.prefilled_tokens - before == 2  # each branch re-feeds only its last token

    fresh = sampler.generate([history], turn)[0][0]
    assert sampler.last_session.prefilled_tokens == len(history)
    for s in (second, *outs):
        np.testing.assert_array_equal(s.tokens, fresh.tokens)
    # Forks decode exactly like the continued row (same cache, same step).
    for s in outs:
        np.testing.assert_array_equal(s.logprobs, second.logprobs)
    # Log-probs against generation from scratch and against the training step (1e-5; bit for
    # bit on the batch-invariant model): test_logprobs_equal_training_forward.

    # Forking the full row (no truncation) shares its next-token logits: nothing prefilled.
    before = sess.prefilled_tokens
    (b,) = sess.fork(row, 1)
    (cont,) = sess.generate([b], turn)
    assert sess.prefilled_tokens == before
    assert sess.decoded_tokens == sum(len(s.tokens) for s in (first, second, *outs, cont))


def test_stop_strings_cut_after_completing_token(setup):
    _, tok, sampler = setup
    prompt = tok.encode("Count with commas: 1, 2, 3, 4,")
    free = sampler.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0.0))[0][0]
    text = tok.decode(free.tokens)
    assert " 6," in text
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop=(" 6,", "never-seen"))
    (s,) = sampler.generate([prompt], params)[0]
    assert s.finish_reason == "stop"
    assert tok.decode(s.tokens).endswith(" 6,")
    assert not tok.decode(s.tokens[:-1]).endswith(" 6,")  # cut after the completing token
    np.testing.assert_array_equal(s.tokens, free.tokens[: len(s.tokens)])
    np.testing.assert_allclose(s.logprobs, free.logprobs[: len(s.tokens)], atol=1e-6)


def test_stop_string_then_continue_equals_scratch(setup):
    """A stop mid-chunk leaves stale sampled tokens in the cache; continuing must ignore them."""
    _, tok, sampler = setup
    prompt = tok.encode("Count with commas: 1, 2, 3, 4,")
    sess = sampler.session(rows=1, length=128)
    (row,) = sess.add([prompt])
    (a,) = sess.generate([row], SamplingParams(max_new_tokens=20, temperature=0.0, stop=(" 6,",)))
    assert a.finish_reason == "stop"
    sess.append([row], [tok.encode(" 100,")])
    (b,) = sess.generate([row], SamplingParams(max_new_tokens=6, temperature=0.0))
    history = prompt + a.tokens.tolist() + tok.encode(" 100,")
    ref = sampler.generate([history], SamplingParams(max_new_tokens=6, temperature=0.0))[0][0]
    np.testing.assert_array_equal(b.tokens, ref.tokens)
    np.testing.assert_allclose(b.logprobs, ref.logprobs, atol=1e-5, rtol=0)


def test_same_bucket_does_not_recompile(setup):
    _, tok, sampler = setup
    params = dataclasses.replace(SAMPLED, max_new_tokens=8)
    sampler.generate([tok.encode("Hello there, my friend")], params)
    before = dict(TRACE_COUNTS)
    out = sampler.generate([tok.encode("Good morning")], params)  # same buckets
    assert dict(TRACE_COUNTS) == before
    assert len(out[0][0].tokens) >= 1


def test_n_samples_are_seeded_and_reproducible(setup):
    _, tok, sampler = setup
    prompt = tok.encode(PROMPTS[1])
    params = dataclasses.replace(SAMPLED, max_new_tokens=8, n=3, seed=7)
    a = sampler.generate([prompt], params)[0]
    b = sampler.generate([prompt], params)[0]
    assert sampler.last_session.prefilled_tokens == len(prompt)  # one prefill for 3 samples
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.tokens, y.tokens)
    assert len({tuple(s.tokens) for s in a}) > 1  # the n samples differ
    c = sampler.generate([prompt], dataclasses.replace(params, seed=8))[0]
    assert [tuple(s.tokens) for s in c] != [tuple(s.tokens) for s in a]


def test_decode_window_is_bit_identical_to_reading_the_whole_cache(setup, monkeypatch):
    """Decode chunks read only the front of the cache their rows can reach (powers of two from
    128 slots). Same tokens, log-probs and entropies, bit for bit, as reading all 512 slots."""
    model, tok, _ = setup
    prompts = [tok.encode(p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=150, temperature=1.0, seed=11, ignore_eos=True)
    cfg = SamplerConfig(min_rows=4, min_cache_length=512, min_length_bucket=64)
    used = []
    window_of = engine.decode_window

    def spy(needed, slots):
        used.append(window_of(needed, slots))
        return used[-1]

    monkeypatch.setattr(engine, "decode_window", spy)
    windowed = Sampler(model, tok, cfg).generate(prompts, params)
    assert {128, 256} <= set(used)  # the windows were really used, and changed
    monkeypatch.setattr(engine, "decode_window", lambda needed, slots: None)
    whole = Sampler(model, tok, cfg).generate(prompts, params)
    for (a,), (b,) in zip(windowed, whole, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.logprobs, b.logprobs)
        np.testing.assert_array_equal(a.entropies, b.entropies)
