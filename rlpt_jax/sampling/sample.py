"""Token sampling from next-token logits, and the raw-policy statistics training needs.

Shape legend: B batch (rows), V vocab, k top-k size.

Two distributions are involved and kept apart:
* the *raw policy* ``p = softmax(logits)`` of the float32 logits. The log-prob of the sampled
  token and the entropy are always taken under it, because that is what the training forward
  recomputes (``log_softmax`` of its logits) as the behaviour policy;
* the *sampling distribution*: logits / temperature, then top-k, then top-p (the order
  Hugging Face applies them), from which the token is drawn.

Drawing uses the inverse CDF with one uniform number per row instead of the Gumbel trick, so a
step costs B random numbers rather than B·V; the sort that top-p needs is skipped entirely
unless top-p < 1 (and shrinks to the k survivors when top-k is also set).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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


def raw_stats(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-prob of ``tokens`` [B] and entropy [B] under softmax(logits [B, V] float32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return chosen, entropy


def filter_logits(
    logits: jax.Array, temperature: jax.Array, top_p: jax.Array, *, top_k: int, use_top_p: bool
) -> jax.Array:
    """Sampling logits [B, V]: scaled by 1/temperature, -inf outside top-k and top-p.

    Tokens tied with the last kept value are kept too (a threshold, not an index cut).
    """
    z = logits.astype(jnp.float32) / temperature
    if top_k:
        kept = jax.lax.top_k(z, top_k)[0]  # [B, k], descending
        z = jnp.where(z >= kept[:, -1:], z, -jnp.inf)
    if use_top_p:
        ranked = kept if top_k else -jnp.sort(-z, axis=-1)  # descending
        probs = jax.nn.softmax(ranked, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        count = jnp.maximum(jnp.sum(before < top_p, axis=-1), 1)  # [B]
        threshold = jnp.take_along_axis(ranked, (count - 1)[:, None], axis=-1)
        z = jnp.where(z >= threshold, z, -jnp.inf)
    return z


def draw(z: jax.Array, uniform: jax.Array) -> jax.Array:
    """Inverse-CDF draw from softmax(z [B, V]) with uniform [B] in (0, 1) → tokens [B]."""
    probs = jax.nn.softmax(z, axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    target = uniform * cdf[:, -1]
    # A zero-probability token never has cdf[i-1] < target <= cdf[i], so it is never chosen.
    idx = jnp.sum(cdf < target[:, None], axis=-1)
    return jnp.minimum(idx, z.shape[-1] - 1).astype(jnp.int32)


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
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = filter_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
    return draw(z, uniform)
