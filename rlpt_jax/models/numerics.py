"""How the model computes the operations whose rounding depends on shapes: one policy object.

Shape legend: B batch, T tokens, D input width, V vocab, H head dim.

``Numerics`` is chosen once, when a ``Decoder`` is built (``Numerics.of(cfg)``, from
``ModelConfig.batch_invariant``), and every module, the sampler's scoring and the training
step's scoring call its methods instead of branching on a flag:

* ``FAST``: plain float32 (or the compute dtype) everywhere;
* batch-invariant (``batch_invariant=True``; why and how: ``rlpt_jax.models.decoder``'s
  module docstring): matmuls contract weights stored [out, in] (``x · Wᵀ``), and RMSNorm's
  normalisation, RoPE's rotation and the log-softmax run in float64 (``in_float64``),
  rounded once. ``transposed=True`` is the sampler's copy of such a model, whose projection
  weights are already held [out, in] (``rlpt_jax.sampling.engine.sampler_weights``).

Attention takes its numerics from the model config too (``attention.for_model``), and uses
``in_float64`` from here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def in_float64(fn, *args, keep: tuple[int, ...] = ()):
    """``fn(*args)`` evaluated in float64, its outputs (an array or a tuple of them) rounded
    back to ``args[0]``'s dtype.

    Floating args are upcast (exactly) before ``fn`` runs, except those at the positions in
    ``keep`` (for ops that widen by themselves, e.g. a dot with
    ``preferred_element_type=float64``, which spares materialising a float64 copy);
    integer and bool args pass through.
    The gradient is float64 too: the backward pass re-runs ``fn`` under ``jax.vjp`` inside the
    float64 context (a plain autodiff of the forward would build its transpose after the
    context closed, with float64 cotangents that float32 mode cannot represent).
    """

    def run(*a):
        with jax.enable_x64(True):
            wide = [
                x.astype(jnp.float64)
                if i not in keep and jnp.issubdtype(x.dtype, jnp.floating)
                else x
                for i, x in enumerate(a)
            ]
            return jax.tree.map(lambda y: y.astype(a[0].dtype), fn(*wide))

    @jax.custom_vjp
    def call(*a):
        return run(*a)

    def fwd(*a):
        return run(*a), a

    def bwd(a, ct):
        with jax.enable_x64(True):
            _, vjp = jax.vjp(run, *a)
            return vjp(ct)

    call.defvjp(fwd, bwd)
    return call(*args)


def project_transposed(x: jax.Array, w_t: jax.Array) -> jax.Array:
    """x [B, T, D] · w_tᵀ, with w_t [out, D] (the batch-invariant layout) → [B, T, out]."""
    b, t, d = x.shape
    dims = (((1,), (1,)), ((), ()))
    y = jax.lax.dot_general(x.reshape(b * t, d), w_t.astype(x.dtype), dims)
    return y.reshape(b, t, -1)


def logits_transposed(h: jax.Array, w_t: jax.Array) -> jax.Array:
    """h [..., D] · w_tᵀ with the output head stored [V, D] → float32 logits [..., V]."""
    return jnp.einsum("...D,VD->...V", h, w_t.astype(h.dtype)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The numerics policy (module docstring). Static: part of a model's graph definition."""

    batch_invariant: bool = False
    transposed: bool = False  # projection weights (and an untied head) held [out, in]

    @classmethod
    def of(cls, cfg) -> Numerics:
        """The policy a ``ModelConfig`` asks for."""
        return cls(batch_invariant=bool(cfg.batch_invariant))

    def project(self, x: jax.Array, w: jax.Array, out_shape: tuple[int, ...] = ()) -> jax.Array:
        """x [B, T, D] through a projection weight as this policy holds it → [B, T, *out].

        Training layout: w [D, *out], one 2-D matmul in x's dtype; batch-invariant, a
        transposed copy is contracted (the barrier keeps XLA from folding the transpose back
        into the matmul). ``transposed``: w is already [out, D]; ``out_shape`` then restores
        the output's trailing shape. Training, prefill and decode all project through here,
        so a token's activations do not depend on which path computed them.
        """
        b, t, d = x.shape
        if self.transposed:
            y = project_transposed(x, w)
            return y.reshape(b, t, *out_shape) if out_shape else y
        out = w.shape[1:]
        w2 = w.reshape(d, -1).astype(x.dtype)
        if self.batch_invariant:
            return project_transposed(x, jax.lax.optimization_barrier(w2.T)).reshape(b, t, *out)
        return (x.reshape(b * t, d) @ w2).reshape(b, t, *out)

    def normalize(self, x32: jax.Array, eps: float) -> jax.Array:
        """x / sqrt(mean(x²) + eps) over the last axis, x float32."""

        def norm(x):
            return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)

        return in_float64(norm, x32) if self.batch_invariant else norm(x32)

    def rotate(self, x32: jax.Array, emb: jax.Array) -> jax.Array:
        """Rotate-half RoPE of x [B, T, *, H] (float32) by angles emb [B, T, H]."""
        return in_float64(_rotate, x32, emb) if self.batch_invariant else _rotate(x32, emb)

    def head(self, h: jax.Array, w: jax.Array) -> jax.Array:
        """h [..., D] through an untied output head → float32 logits [..., V]; w as this
        policy holds it ([D, V], or [V, D] when ``transposed``). Batch-invariant heads
        contract [V, D], as the tied head does."""
        w = w.astype(h.dtype)
        if self.transposed:
            return logits_transposed(h, w)
        if self.batch_invariant:
            return logits_transposed(h, jax.lax.optimization_barrier(w.T))
        return jnp.einsum("...D,DV->...V", h, w).astype(jnp.float32)

    def logprob_entropy(
        self, logits: jax.Array, targets: jax.Array | None = None
    ) -> tuple[jax.Array | None, jax.Array]:
        """log softmax(logits)[target] and the entropy of softmax(logits), in float32.

        logits [..., V]; targets [...] int or None. The sampler and the training step both
        score tokens through here, so they agree to the last bit whenever their logits do
        (batch-invariant: in float64, so that the sums over V do not depend on how many rows
        are scored at once). The chosen logit is taken relative to the row maximum before
        the log-normaliser is subtracted (``(z - m) - log Σ exp(z - m)``): forming
        ``m + log Σ exp`` first would round to the spacing of floats near the maximum logit
        (~4e-6 at 40).
        """
        z = logits.astype(jnp.float32)
        if not self.batch_invariant:
            return _logprob_entropy(z, targets)
        if targets is None:
            return None, in_float64(lambda z: _logprob_entropy(z, None)[1], z)
        return in_float64(_logprob_entropy, z, targets)


FAST = Numerics()


def _rotate(x: jax.Array, emb: jax.Array) -> jax.Array:
    cos = jnp.cos(emb)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(emb)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _logprob_entropy(z: jax.Array, targets: jax.Array | None):
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
    probs = jnp.exp(shifted - lse[..., None])
    entropy = lse - jnp.sum(probs * shifted, axis=-1)
    if targets is None:
        return None, entropy
    picked = jnp.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    return picked - lse, entropy
