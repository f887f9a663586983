"""Jitted device side of the sampler: cache layout, cached forward, prefill, decode loop.

Shape legend: B cache rows, R rows of one prefill call, T new tokens per row, C decode steps
per chunk, S cache slots, D model width, N query heads, K kv heads, G = N / K, H head dim,
V vocab, L layers.

The forward is the model's own (``Decoder.hidden`` with a ``Cache``): the layers run in a
``lax.scan`` whose carry holds every layer's cache, each layer writing its new keys and
values in place by a scatter (donated buffers, ``lax.while_loop`` carry), so a decode step
never copies the cache.

Slot = position: a row's token at position p lives in slot p. Writes past the end of the
cache are dropped (scatter ``mode="drop"``), and padding tokens carry position -1, which
marks their slot empty; a query at position p attends to slots holding 0 <= pos <= p, so
stale slots beyond a row's length (after a cut or a truncating fork) are never read.
It also lets a decode chunk read only the front of the cache that its rows can reach
(``decode_window``).

Batch-invariant models (``ModelConfig.batch_invariant``) keep their projection weights
transposed, [out, in], in the sampler (``sampler_weights``), so that decode steps contract
them as ``x · Wᵀ`` like the training forward does, without transposing per step.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlpt_jax.models.decoder import Cache, Decoder, unstacked
from rlpt_jax.sampling import sample as sample_lib

# Number of times each jitted function was traced (a Python side effect runs only when
# tracing), so tests can assert that a second call with the same buckets does not recompile.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


_TRANSPOSED = {  # module attribute -> number of leading [in] axes of its training layout
    "q_proj": 1,
    "k_proj": 1,
    "v_proj": 1,
    "o_proj": 2,
    "gate_proj": 1,
    "up_proj": 1,
    "down_proj": 1,
    "lm_head": 1,
}


def sampler_weights(model: Decoder) -> Decoder:
    """The model as the sampler holds it: the layers unstacked (``decoder.unstacked``: a
    decode step on XLA:CPU cannot afford slicing stacked weights), and for a batch-invariant
    model every projection weight (and an untied output head) transposed to a 2-D [out, in]
    matrix, logical axes (first out axis, first in axis), with ``numerics.transposed`` set.
    The input model is unchanged."""
    held = nnx.merge(*nnx.split(model))  # new modules; the arrays are shared, not copied
    held.layers = unstacked(model.layers)
    if not model.cfg.batch_invariant:
        return held
    graphdef, state = nnx.split(held)
    flat = []
    for path, var in nnx.to_flat_state(state):
        n_in = _TRANSPOSED.get(str(path[-1]))
        if n_in is not None:
            value = var.get_value() if hasattr(var, "get_value") else var.value
            axes = var.get_metadata()["logical_axes"]
            rows = math.prod(value.shape[:n_in])
            var = var.replace(
                jnp.transpose(value.reshape(rows, -1)), logical_axes=(axes[n_in], axes[0])
            )
        flat.append((path, var))
    held = nnx.merge(graphdef, nnx.from_flat_state(flat))
    held.numerics = dataclasses.replace(held.numerics, transposed=True)
    return held


def prefill(
    graphdef,
    constrain,
    state,
    cache: Cache,
    logits: jax.Array,
    rows: jax.Array,
    tokens: jax.Array,
    positions: jax.Array,
    write_index: jax.Array,
    last: jax.Array,
) -> tuple[Cache, jax.Array]:
    """Write tokens [R, T] into cache rows ``rows`` [R] and refresh their next-token logits.

    logits [B, V] holds every row's next-token logits; rows gets the logits after token
    ``last`` [R] (index into T). A row may appear several times (bucket padding) only with
    identical inputs, so the duplicate writes agree.
    """
    TRACE_COUNTS["prefill"] += 1
    model = nnx.merge(graphdef, state)
    sub = cache.take(rows)
    h, sub = model.hidden(tokens, positions, cache=sub, write_index=write_index)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    new = model.logits(h_last)
    return constrain(cache.put(rows, sub), logits.at[rows].set(new))


@dataclasses.dataclass(frozen=True)
class DecodeStatic:
    """Compile-time knobs of the decode loop (each distinct value compiles once)."""

    steps: int
    greedy: bool
    top_k: int
    use_top_p: bool
    window: int | None = None  # cache slots attention reads (None: all); see decode_window


def decode_window(needed: int, slots: int, smallest: int = 128) -> int | None:
    """Cache slots a decode chunk must read when its queries reach slot ``needed`` − 1: the
    next power of two (at least ``smallest``), or None for the whole cache of ``slots``.

    A decode step's attention streams every slot it reads, so reading only the occupied
    front of a cache bucket (slot = position) saves work while rows are short (SmolLM2-135M,
    batch 16, 128 new tokens in a 256-slot bucket: 320 -> 336 tok/s); powers of two keep the
    number of compiled decode loops logarithmic in the cache size. Windows of 128 slots and
    more give bit-identical results to reading the whole cache on XLA:CPU (tested); a
    64-slot window does not (its reductions group terms differently), hence ``smallest``.
    """
    w = max(smallest, 1 << max(0, needed - 1).bit_length())
    return None if w >= slots else w


def decode_chunk(
    graphdef,
    constrain,
    static: DecodeStatic,
    state,
    cache: Cache,
    logits: jax.Array,
    length: jax.Array,
    active: jax.Array,
    budget: jax.Array,
    row_seed: jax.Array,
    stop_ids: jax.Array,
    seed: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
):
    """Up to C = static.steps decode steps over all B rows; stops early when no row is active.

    length [B]: tokens in each row (= position of the next token); active [B] bool; budget [B]:
    tokens each row may still sample; stop_ids [n] (-1 = unused). Each step samples from
    ``logits``, records (token, raw log-prob, raw entropy), writes the token into the cache and
    computes the next logits; inactive rows write an empty slot and keep their logits.

    Returns (cache, logits, length, active, tokens [B, C] (-1 where not sampled),
    logprobs [B, C], entropies [B, C], steps run).
    """
    TRACE_COUNTS["decode"] += 1
    model = nnx.merge(graphdef, state)
    b, c = length.shape[0], static.steps
    out_tok = jnp.full((b, c), -1, jnp.int32)
    out_lp = jnp.zeros((b, c), jnp.float32)
    out_ent = jnp.zeros((b, c), jnp.float32)

    def cond(carry):
        i, active = carry[0], carry[4]
        return (i < c) & jnp.any(active)

    def body(carry):
        i, cache, logits, length, active, budget, out_tok, out_lp, out_ent = carry
        uniform = sample_lib.row_uniforms(seed, row_seed, length)
        tok = sample_lib.sample_tokens(
            logits,
            uniform,
            temperature,
            top_p,
            greedy=static.greedy,
            top_k=static.top_k,
            use_top_p=static.use_top_p,
        )
        lp, ent = sample_lib.raw_stats(logits, tok, model.numerics)
        out_tok = out_tok.at[:, i].set(jnp.where(active, tok, -1))
        out_lp = out_lp.at[:, i].set(lp)
        out_ent = out_ent.at[:, i].set(ent)

        position = jnp.where(active, length, -1)
        h, cache = model.hidden(
            tok[:, None], position[:, None], cache=cache, write_index=length, window=static.window
        )
        new_logits = model.logits(h[:, 0])
        logits = jnp.where(active[:, None], new_logits, logits)

        length = length + active.astype(jnp.int32)
        budget = budget - active.astype(jnp.int32)
        stopped = jnp.any(tok[:, None] == stop_ids[None, :], axis=-1) | (budget <= 0)
        active = active & ~stopped
        return i + 1, cache, logits, length, active, budget, out_tok, out_lp, out_ent

    carry = (0, cache, logits, length, active, budget, out_tok, out_lp, out_ent)
    i, cache, logits, length, active, _, out_tok, out_lp, out_ent = jax.lax.while_loop(
        cond, body, carry
    )
    cache, logits = constrain(cache, logits)
    return cache, logits, length, active, out_tok, out_lp, out_ent, i


def take_rows(constrain, cache: Cache, logits: jax.Array, perm: jax.Array):
    """Row i of the result = row perm[i] of the input (fork, compaction, growth by padding)."""
    TRACE_COUNTS["take"] += 1
    return constrain(cache.take(perm), logits[perm])


def put_rows(
    constrain,
    cache: Cache,
    logits: jax.Array,
    rows: jax.Array,
    sub: Cache,
    sub_logits: jax.Array,
):
    """Write a compact sub-batch back into rows ``rows`` (out-of-range entries dropped)."""
    TRACE_COUNTS["put"] += 1
    return constrain(cache.put(rows, sub), logits.at[rows].set(sub_logits, mode="drop"))
