"""Jitted device side of the sampler: cache layout, cached forward, prefill, decode loop.

Shape legend: B cache rows, R rows of one prefill call, T new tokens per row, C decode steps
per chunk, S cache slots, D model width, N query heads, K kv heads, G = N / K, H head dim,
V vocab, L layers.

Why the sampler has its own cached forward instead of calling ``Decoder.hidden`` with a
``KVCache``: that path slices every layer out of the stacked [L, B, S, K, H] cache and stacks
the layers back after each call, so a decode step copies the whole cache (measured on
SmolLM2-135M, batch 16, S=256: 235 ms per step against 54 ms for the same step without a
cache). Here each layer's cache is its own array, written in place by a scatter (donated
buffers, ``lax.while_loop`` carry). Everything else — norms, MLPs, RoPE, the projection
helper, the output head, the log-prob/entropy scoring, parameters — is the model's own
modules and functions, the ones training uses; tests pin this forward to the training
forward and to ``Decoder.hidden``.

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

from rlpt_jax.models import attention
from rlpt_jax.models.config import ModelConfig
from rlpt_jax.models.decoder import (
    Decoder,
    KVCache,
    apply_rope,
    logits_transposed,
    project,
    project_transposed,
    rope_inv_freq,
)
from rlpt_jax.sampling import sample as sample_lib

# Number of times each jitted function was traced (a Python side effect runs only when
# tracing), so tests can assert that a second call with the same buckets does not recompile.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SampleCache:
    """The sampler's KV cache: one k and one v array [B, K, S, H] per layer, pos [B, S]."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, dtype) -> SampleCache:
        shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
            pos=jnp.full((batch, length), -1, jnp.int32),
        )

    @staticmethod
    def nbytes(cfg: ModelConfig, batch: int, length: int, dtype) -> int:
        return KVCache.nbytes(cfg, batch, length, dtype)

    def take(self, rows: jax.Array) -> SampleCache:
        return SampleCache(
            k=tuple(x[rows] for x in self.k),
            v=tuple(x[rows] for x in self.v),
            pos=self.pos[rows],
        )

    def put(self, rows: jax.Array, sub: SampleCache) -> SampleCache:
        """Rows ``rows`` replaced by ``sub``; out-of-range row indices are dropped."""
        return SampleCache(
            k=tuple(x.at[rows].set(s, mode="drop") for x, s in zip(self.k, sub.k, strict=True)),
            v=tuple(x.at[rows].set(s, mode="drop") for x, s in zip(self.v, sub.v, strict=True)),
            pos=self.pos.at[rows].set(sub.pos, mode="drop"),
        )

    def to_kv(self) -> KVCache:
        """The model's stacked layout (tests and interop)."""
        return KVCache(
            k=jnp.stack(self.k).swapaxes(2, 3), v=jnp.stack(self.v).swapaxes(2, 3), pos=self.pos
        )


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
    """The model as the sampler holds it: for a batch-invariant model, every projection
    weight (and an untied output head) transposed to a 2-D [out, in] matrix, its logical axes
    (first out axis, first in axis); any other model is returned as is. The input model is
    unchanged."""
    if not model.cfg.batch_invariant:
        return model
    graphdef, state = nnx.split(model)
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
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _project(x, w, batch_invariant: bool, out_shape=None):
    """x [R, T, D] through a projection weight as the sampler holds it (``sampler_weights``)."""
    if not batch_invariant:
        return project(x, w)
    y = project_transposed(x, w)
    return y if out_shape is None else y.reshape(*y.shape[:2], *out_shape)


def _mlp(mlp, x):
    if not mlp.batch_invariant:
        return mlp(x)
    g = project_transposed(x, mlp.gate_proj[...])
    u = project_transposed(x, mlp.up_proj[...])
    return project_transposed(jax.nn.silu(g) * u, mlp.down_proj[...])


def _attention(attn, x, positions, inv_freq, mask, kc, vc, slots):
    """One attention layer over the cache. x [R, T, D]; kc, vc [R, K, S, H]; slots [R, T];
    mask over the first W <= S slots (``mask.k_ord`` [R, W]): attention reads only those."""
    cfg = attn.cfg
    dt = x.dtype
    inv = cfg.batch_invariant
    n, kk, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = _project(x, attn.q_proj[...], inv, (n, h))  # [R, T, N, H]
    k = _project(x, attn.k_proj[...], inv, (kk, h))  # [R, T, K, H]
    v = _project(x, attn.v_proj[...], inv, (kk, h))
    if cfg.qkv_bias:
        q = q + attn.q_bias[...].astype(dt)
        k = k + attn.k_bias[...].astype(dt)
        v = v + attn.v_bias[...].astype(dt)
    if cfg.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = apply_rope(q, positions, inv_freq, batch_invariant=inv)
    k = apply_rope(k, positions, inv_freq, batch_invariant=inv)

    rows = jnp.arange(x.shape[0])[:, None]
    # Indexing [R, T] pairs around the K slice puts the [R, T] dims first: updates [R, T, K, H].
    kc = kc.at[rows, :, slots].set(k.astype(kc.dtype), mode="drop")
    vc = vc.at[rows, :, slots].set(v.astype(vc.dtype), mode="drop")

    # The cache is [R, K, S, H] so that both attention products read it without a transpose.
    w = mask.k_ord.shape[-1]
    keys, values = kc[:, :, :w].astype(dt), vc[:, :, :w].astype(dt)
    out = attention.for_model(cfg, q, keys, values, mask, "BKSH")
    o = attn.o_proj[...]
    y = _project(out, o if inv else o.reshape(n * h, -1), inv)
    if cfg.o_bias:
        y = y + attn.o_bias[...].astype(dt)
    return y, kc, vc


def forward(
    model: Decoder,
    tokens: jax.Array,
    positions: jax.Array,
    cache: SampleCache,
    write_index: jax.Array,
    window: int | None = None,
) -> tuple[jax.Array, SampleCache]:
    """Hidden states [R, T, D] after the final norm, and the updated cache.

    tokens, positions [R, T] (position -1 = padding); write_index [R]: slot of each row's
    first token. window: attend to the first ``window`` slots only (None: all S). Since
    slot = position, a window covering every query's position reads everything it may.
    """
    cfg = model.cfg
    dt = jnp.dtype(cfg.dtype)
    x = jnp.take(model.embed_tokens[...], tokens, axis=0).astype(dt)
    inv_freq = rope_inv_freq(cfg)
    slots = write_index[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    rows = jnp.arange(tokens.shape[0])[:, None]
    pos = cache.pos.at[rows, slots].set(positions.astype(jnp.int32), mode="drop")
    mask = attention.Mask.cached(positions, pos[:, :window])  # keys: window or S slots

    new_k, new_v = [], []
    for i, block in enumerate(model.layers):
        a, kc, vc = _attention(
            block.self_attn,
            block.input_layernorm(x),
            positions,
            inv_freq,
            mask,
            cache.k[i],
            cache.v[i],
            slots,
        )
        x = x + a
        x = x + _mlp(block.mlp, block.post_attention_layernorm(x))
        new_k.append(kc)
        new_v.append(vc)
    return model.norm(x), SampleCache(k=tuple(new_k), v=tuple(new_v), pos=pos)


def output_logits(model: Decoder, h: jax.Array) -> jax.Array:
    """h [R, D] → float32 logits [R, V] (the model's own head: the training step uses it too)."""
    if model.cfg.batch_invariant and not model.cfg.tie_word_embeddings:
        return logits_transposed(h, model.lm_head[...])  # stored [V, D] (sampler_weights)
    return model.logits(h)


def prefill(
    graphdef,
    constrain,
    state,
    cache: SampleCache,
    logits: jax.Array,
    rows: jax.Array,
    tokens: jax.Array,
    positions: jax.Array,
    write_index: jax.Array,
    last: jax.Array,
) -> tuple[SampleCache, jax.Array]:
    """Write tokens [R, T] into cache rows ``rows`` [R] and refresh their next-token logits.

    logits [B, V] holds every row's next-token logits; rows gets the logits after token
    ``last`` [R] (index into T). A row may appear several times (bucket padding) only with
    identical inputs, so the duplicate writes agree.
    """
    TRACE_COUNTS["prefill"] += 1
    model = nnx.merge(graphdef, state)
    sub = cache.take(rows)
    h, sub = forward(model, tokens, positions, sub, write_index)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    new = output_logits(model, h_last)
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
    cache: SampleCache,
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
        lp, ent = sample_lib.raw_stats(logits, tok, batch_invariant=model.cfg.batch_invariant)
        out_tok = out_tok.at[:, i].set(jnp.where(active, tok, -1))
        out_lp = out_lp.at[:, i].set(lp)
        out_ent = out_ent.at[:, i].set(ent)

        position = jnp.where(active, length, -1)
        h, cache = forward(model, tok[:, None], position[:, None], cache, length, static.window)
        new_logits = output_logits(model, h[:, 0])
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


def take_rows(constrain, cache: SampleCache, logits: jax.Array, perm: jax.Array):
    """Row i of the result = row perm[i] of the input (fork, compaction, growth by padding)."""
    TRACE_COUNTS["take"] += 1
    return constrain(cache.take(perm), logits[perm])


def put_rows(
    constrain,
    cache: SampleCache,
    logits: jax.Array,
    rows: jax.Array,
    sub: SampleCache,
    sub_logits: jax.Array,
):
    """Write a compact sub-batch back into rows ``rows`` (out-of-range entries dropped)."""
    TRACE_COUNTS["put"] += 1
    return constrain(cache.put(rows, sub), logits.at[rows].set(sub_logits, mode="drop"))
