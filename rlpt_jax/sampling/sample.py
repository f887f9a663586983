"""Token sampling from next-token logits, and the raw-policy statistics training needs.

Shape legend: B batch (rows), V vocab, k top-k size.

Two distributions are involved and kept apart:
* the *raw policy* ``p = softmax(logits)`` of the float32 logits. The log-prob of the sampled
  token and the entropy are always taken under it, because that is what the training forward
  recomputes (``log_softmax`` of its logits) as the behaviour policy;
* the *sampling distribution*: logits / temperature, then top-k, then top-p (the order
  Hugging Face applies them), from which the token is drawn.

Drawing uses the inverse CDF with one uniform number per row instead of the Gumbel trick, so a
step costs B random numbers rather than B·V. Nothing sorts the vocabulary: top-k and top-p
thresholds are found by bisection, and are skipped entirely when off.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlpt_jax.models.numerics import FAST, Numerics


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample one request.

    temperature: 0 means greedy (argmax of the raw logits); otherwise > 0.
    top_k: keep the k most likely tokens (0 = off). top_p: keep the smallest set of most
    likely tokens whose probability reaches top_p (1 = off). n: samples per prompt.
    stop: stop strings, detected on the decoded text of the generated tokens; the returned
    tokens end with the token that completed the string. stop_token_ids: extra single-token
    stops besides the model's EOS ids (finish reason ``stop``; EOS gives ``eos``).
    ignore_eos: do not stop at the model's EOS ids (benchmarks; explicit stops still apply).
    seed: the base random key; every token's randomness is folded from (seed, sample, position)
    so results do not depend on batching or chunking.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if int(self.top_k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if int(self.n) < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {self.n}")
        if isinstance(self.stop, str):
            raise TypeError("stop must be a tuple of strings, not a single string")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            if int(t) < 0:
                raise ValueError(f"stop token ids must be >= 0, got {t}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def raw_stats(
    logits: jax.Array, tokens: jax.Array, numerics: Numerics = FAST
) -> tuple[jax.Array, jax.Array]:
    """Log-prob of ``tokens`` [B] and entropy [B] under softmax(logits [B, V] float32).

    The same function the training step scores tokens with (``Numerics.logprob_entropy``).
    """
    return numerics.logprob_entropy(logits, tokens)


_BISECT_STEPS = 32  # halvings of a 101-wide logit interval: finer than float32 spacing
_CUT = 100.0  # tokens this far below the best logit (probability ratio e^-100) are ignored
_BLOCK = 256  # inverse-CDF block size


def _threshold(z: jax.Array, enough) -> jax.Array:
    """Largest t [B, 1] (by bisection) with ``enough(z >= t)`` still true.

    Sorting the vocabulary (or ``lax.top_k``, which sorts) costs ~0.2 s per step on a CPU at
    V=49152; 32 masked reductions cost a few milliseconds. Ties with the threshold are kept.
    """
    zmax = jnp.max(z, axis=-1, keepdims=True)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = enough(z >= mid)[:, None]
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _BISECT_STEPS, body, (zmax - _CUT, zmax + 1.0))
    return lo


def filter_logits(
    logits: jax.Array, temperature: jax.Array, top_p: jax.Array, *, top_k: int, use_top_p: bool
) -> jax.Array:
    """Sampling logits [B, V]: scaled by 1/temperature, -inf outside top-k, then top-p.

    top-k keeps the k largest; top-p then keeps the most likely tokens of the renormalised
    top-k distribution until their mass reaches top_p (at least one). Both are thresholds
    found by bisection, so tokens tied with the last kept one are kept too.
    """
    z = logits.astype(jnp.float32) / temperature
    if top_k:
        t = _threshold(z, lambda keep: jnp.sum(keep, axis=-1) >= top_k)
        z = jnp.where(z >= t, z, -jnp.inf)
    if use_top_p:
        probs = jax.nn.softmax(z, axis=-1)
        t = _threshold(z, lambda keep: jnp.sum(jnp.where(keep, probs, 0.0), axis=-1) >= top_p)
        z = jnp.where(z >= t, z, -jnp.inf)
    return z


def draw(z: jax.Array, uniform: jax.Array) -> jax.Array:
    """Inverse-CDF draw from softmax(z [B, V]) with uniform [B] in (0, 1) → tokens [B].

    Two levels (a cumulative sum over blocks of 256, then within the chosen block) because a
    full-vocabulary ``cumsum`` is slow on a CPU. A zero-probability token is never chosen.
    """
    b, v = z.shape
    probs = jax.nn.softmax(z, axis=-1)
    nb = -(-v // _BLOCK)
    blocks = jnp.pad(probs, ((0, 0), (0, nb * _BLOCK - v))).reshape(b, nb, _BLOCK)
    block_cdf = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [B, nb]
    target = uniform * block_cdf[:, -1]
    bi = jnp.minimum(jnp.sum(block_cdf < target[:, None], axis=-1), nb - 1)  # [B]
    before = jnp.where(bi > 0, jnp.take_along_axis(block_cdf, (bi - 1)[:, None], -1)[:, 0], 0.0)
    inner = jnp.take_along_axis(blocks, bi[:, None, None], axis=1)[:, 0]  # [B, 256]
    j = jnp.sum(jnp.cumsum(inner, axis=-1) < (target - before)[:, None], axis=-1)
    # Rounding can push the target past the block's own sum: clamp to its last live token.
    last_live = _BLOCK - 1 - jnp.argmax((inner > 0)[:, ::-1], axis=-1)
    j = jnp.minimum(j, last_live)
    return jnp.minimum(bi * _BLOCK + j, v - 1).astype(jnp.int32)


def argmax(logits: jax.Array) -> jax.Array:
    """First index of the maximum [B] (two plain reductions; ``jnp.argmax`` is slow on CPU)."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    idx = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(logits == best, idx, logits.shape[-1]), axis=-1).astype(jnp.int32)


def row_uniforms(seed: jax.Array, row_seed: jax.Array, position: jax.Array) -> jax.Array:
    """One uniform in (0, 1) per row from (seed [], row_seed [B], position [B])."""
    base = jax.random.key(seed)

    def one(r, p):
        key = jax.random.fold_in(jax.random.fold_in(base, r), p)
        return jax.random.uniform(key, (), jnp.float32, minval=jnp.finfo(jnp.float32).tiny)

    return jax.vmap(one)(row_seed, position)


def sample_tokens(
    logits: jax.Array,
    uniform: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
) -> jax.Array:
    """Tokens [B] from logits [B, V] (float32) and uniforms [B]."""
    if greedy:
        return argmax(logits)
    z = filter_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
    return draw(z, uniform)
