"""Clipped policy-gradient losses on per-token arrays: PPO/GRPO/DAPO, GSPO and ATPO.

Shape legend: B sequences in the batch, T tokens per sequence (padded).

Inputs are the training batch's per-token arrays, all ``[B, T]``: ``logp`` (current
policy log-prob of each sampled token, the one array that carries gradient),
``old_logp`` (behaviour policy), ``loss_mask`` (1 on model tokens, 0 on prompt, tool
results and padding), optional ``ref_logp`` (reference policy, for a KL penalty),
``turn_ids`` and per-token ``entropy``; ``advantages`` is ``[B, T]`` or ``[B]``
(broadcast over the row). Every function is pure and jittable with static shapes;
:class:`LossConfig` is hashable so it can be a static argument.

The three ``kind`` values differ only in the importance ratio ``s_t`` of token ``t``
of sequence ``i``; the clipped objective on top is shared:

* ``"ppo"``  — token ratio ``s_t = π(y_t)/π_old(y_t)`` (PPO, Schulman et al. 2017,
  eq. 7). GRPO is this with symmetric clipping, DAPO's clip-higher is
  ``clip_high > clip_low`` (Yu et al. 2025, section 3.1).
* ``"gspo"`` — sequence ratio, GSPO-token (Zheng et al. 2025):
  ``log s_t = sg[mean_{t'∈i}(log π − log π_old)] + log π(y_t) − sg[log π(y_t)]``.
* ``"atpo"`` — turn ratio (AT²PO, spec at2po.md §3): as GSPO but the mean runs over
  the tokens of ``t``'s own turn ``k(t)``. The value is the turn's geometric-mean
  ratio, the gradient is the token's own ``s_t ∇log π(y_t)``.

For GSPO and ATPO the mean log-ratio is clamped to ``±log_ratio_clamp`` before ``exp``;
for PPO the per-token log-ratio is. Per-token loss (ε_l = ``clip_low``, ε_h =
``clip_high``, ``A`` the advantage):

    ℓ_t = max(−A·s_t, −A·clip(s_t, 1 − ε_l, 1 + ε_h))
    dual clip (Ye et al. 2020), for A < 0 only:  ℓ_t = min(ℓ_t, −c·A)

Turns are given by ``turn_ids`` (any int in ``0..T−1`` on mask-1 tokens; the value on
mask-0 tokens is ignored) or, if None, are the maximal runs of mask 1 in each row
(:func:`turn_ids_from_mask`). Turn means are segment sums over B·T fixed segments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.special import entr

Array = jax.Array

KINDS = ("ppo", "gspo", "atpo")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")
KL_KINDS = ("k1", "k2", "k3")
OLD_LOGPROBS = ("recompute", "sampler")


@dataclass(frozen=True)
class LossConfig:
    """Policy loss options.

    ``kind``: ratio, one of ``KINDS``. ``clip_low``/``clip_high``: ε_l in (0, 1) and
    ε_h > 0. ``dual_clip``: c > 1 or None. ``agg``: one of ``AGGREGATIONS`` (see
    :func:`aggregate`); ``norm_constant`` (> 0) is required by, and only allowed with,
    ``agg="constant"``. ``kl_coef`` ≥ 0 weighs the KL to the reference policy of type
    ``kl_kind``; ``entropy_coef`` ≥ 0 weighs an entropy bonus. ``log_ratio_clamp`` > 0
    bounds the log-ratio before ``exp``. Settings from the papers are in ``PRESETS``.

    ``old_logprobs`` says where ``old_logp`` (π_old) comes from, which the training loop
    arranges: ``"recompute"`` scores the batch with the training forward before the first
    update, as verl does, so the first mini-batch's ratios are exactly 1 (up to the
    forward's own batch-size dependence); ``"sampler"`` uses the log-probs the sampler
    recorded, which saves that forward but differs from the training forward by its
    numerics (bf16 cache, other kernels) unless the model is batch-invariant — with the
    ATPO clip of 3e-3/4e-3 such a difference alone can clip.
    """

    kind: str = "ppo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    agg: str = "token_mean"
    norm_constant: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    log_ratio_clamp: float = 10.0
    old_logprobs: str = "recompute"

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, KINDS)
        _one_of("old_logprobs", self.old_logprobs, OLD_LOGPROBS)
        _one_of("agg", self.agg, AGGREGATIONS)
        _one_of("kl_kind", self.kl_kind, KL_KINDS)
        if not 0 < self.clip_low < 1:
            raise ValueError(f"LossConfig.clip_low must be in (0, 1); got {self.clip_low}")
        if not self.clip_high > 0:
            raise ValueError(f"LossConfig.clip_high must be > 0; got {self.clip_high}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"LossConfig.dual_clip must be None or > 1; got {self.dual_clip}")
        if self.agg == "constant":
            if self.norm_constant is None or not self.norm_constant > 0:
                raise ValueError(
                    f"LossConfig.agg='constant' needs norm_constant > 0 (Dr.GRPO uses the "
                    f"maximum response length); got {self.norm_constant}"
                )
        elif self.norm_constant is not None:
            raise ValueError(
                f"LossConfig.norm_constant only applies to agg='constant'; agg={self.agg!r}"
            )
        for name, value in (("kl_coef", self.kl_coef), ("entropy_coef", self.entropy_coef)):
            if not 0 <= value < float("inf"):
                raise ValueError(f"LossConfig.{name} must be finite and >= 0; got {value}")
        if not 0 < self.log_ratio_clamp < float("inf"):
            raise ValueError(
                f"LossConfig.log_ratio_clamp must be finite and > 0; got {self.log_ratio_clamp}"
            )


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"LossConfig.{name}={value!r}; expected one of {list(allowed)}")


# Numbers as published (at2po.md "Baselines", §3). Dr.GRPO needs the run's maximum
# response length: LossConfig(agg="constant", norm_constant=max_len) on top of "grpo".
PRESETS: dict[str, LossConfig] = {
    "grpo": LossConfig(kind="ppo", clip_low=0.2, clip_high=0.2, kl_coef=0.001),
    "dapo": LossConfig(kind="ppo", clip_low=0.2, clip_high=0.28),
    "gspo": LossConfig(kind="gspo", clip_low=3e-4, clip_high=4e-4, agg="seq_mean_token_mean"),
    "atpo": LossConfig(kind="atpo", clip_low=3e-3, clip_high=4e-3, agg="seq_mean_token_mean"),
}


def turn_ids_from_mask(mask: Array) -> Array:
    """Turn index of each token: maximal runs of mask 1 numbered 0, 1, … per row.

    ``[B, T]`` → int32 ``[B, T]``, −1 where the mask is 0. E.g. mask ``1 1 0 0 1 0`` →
    ``0 0 −1 −1 1 −1``. Jittable.
    """
    m = jnp.asarray(mask) > 0
    prev = jnp.pad(m[:, :-1], ((0, 0), (1, 0)))
    starts = m & ~prev
    ids = jnp.cumsum(starts, axis=1) - 1
    return jnp.where(m, ids, -1).astype(jnp.int32)


def _segment_sums(x: Array, mask: Array, seg_ids: Array) -> tuple[Array, Array, Array]:
    """Masked per-row segment sums. Returns (sum ``[B, T]``, count ``[B, T]``, flat ids).

    Segment ``j`` of row ``b`` collects the mask-1 tokens with ``seg_ids == j``; ids are
    clipped into ``0..T−1`` (mask-0 tokens contribute nothing wherever they land).
    """
    b, t = x.shape
    flat = (jnp.clip(seg_ids, 0, t - 1) + t * jnp.arange(b)[:, None]).reshape(-1)
    values = jnp.where(mask > 0, x, 0.0).reshape(-1)
    sums = jax.ops.segment_sum(values, flat, num_segments=b * t)
    counts = jax.ops.segment_sum(mask.reshape(-1), flat, num_segments=b * t)
    return sums.reshape(b, t), counts.reshape(b, t), flat


def _group_log_ratio(
    logp: Array, log_ratio: Array, mask: Array, seg_ids: Array, clamp: float
) -> Array:
    """``sg[clamp(mean_{t'∈g(t)} log_ratio)] + logp − sg[logp]`` for groups ``seg_ids``."""
    sums, counts, flat = _segment_sums(log_ratio, mask, seg_ids)
    means = (sums / jnp.maximum(counts, 1.0)).reshape(-1)[flat].reshape(logp.shape)
    group = jax.lax.stop_gradient(jnp.clip(means, -clamp, clamp))
    own = jnp.where(mask > 0, logp - jax.lax.stop_gradient(logp), 0.0)
    return group + own


def _log_ratio_ppo(
    logp: Array, log_ratio: Array, mask: Array, turn_ids: Array, clamp: float
) -> Array:
    return jnp.clip(log_ratio, -clamp, clamp)


def _log_ratio_gspo(
    logp: Array, log_ratio: Array, mask: Array, turn_ids: Array, clamp: float
) -> Array:
    return _group_log_ratio(logp, log_ratio, mask, jnp.zeros_like(turn_ids), clamp)


def _log_ratio_atpo(
    logp: Array, log_ratio: Array, mask: Array, turn_ids: Array, clamp: float
) -> Array:
    return _group_log_ratio(logp, log_ratio, mask, turn_ids, clamp)


_LOG_RATIO: dict[str, Callable[..., Array]] = {
    "ppo": _log_ratio_ppo,
    "gspo": _log_ratio_gspo,
    "atpo": _log_ratio_atpo,
}


def _token_mean(x: Array, mask: Array, cfg: LossConfig) -> Array:
    """``Σ_{i,t} m·x / Σ_{i,t} m`` — every loss token weighs the same (DAPO)."""
    return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(mask.sum(), 1.0)


def _seq_sums(x: Array, mask: Array) -> tuple[Array, Array, Array]:
    row_sum = jnp.sum(jnp.where(mask > 0, x, 0.0), axis=1)
    row_len = mask.sum(axis=1)
    n_rows = jnp.maximum(jnp.sum(row_len > 0), 1.0)
    return row_sum, row_len, n_rows


def _seq_mean_token_mean(x: Array, mask: Array, cfg: LossConfig) -> Array:
    """``(1/B') Σ_i (Σ_t m·x / Σ_t m)`` — each sequence weighs the same (GRPO)."""
    row_sum, row_len, n_rows = _seq_sums(x, mask)
    return jnp.sum(row_sum / jnp.maximum(row_len, 1.0)) / n_rows


def _seq_mean_token_sum(x: Array, mask: Array, cfg: LossConfig) -> Array:
    """``(1/B') Σ_i Σ_t m·x`` — longer sequences weigh more."""
    row_sum, _, n_rows = _seq_sums(x, mask)
    return jnp.sum(row_sum) / n_rows


def _constant(x: Array, mask: Array, cfg: LossConfig) -> Array:
    """``Σ_{i,t} m·x / (B · norm_constant)`` — Dr.GRPO (Liu et al. 2025): no length bias."""
    assert cfg.norm_constant is not None  # guaranteed by LossConfig
    return jnp.sum(jnp.where(mask > 0, x, 0.0)) / (x.shape[0] * cfg.norm_constant)


_AGGREGATORS: dict[str, Callable[[Array, Array, LossConfig], Array]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "constant": _constant,
}


def aggregate(x: Array, loss_mask: Array, cfg: LossConfig) -> Array:
    """Reduce per-token values ``[B, T]`` to a scalar as ``cfg.agg`` says.

    B' is the number of rows with at least one mask-1 token (at least 1), so padding
    rows added to fill a shape bucket change nothing; ``"constant"`` divides by the
    full B by definition. Fully masked input gives 0.
    """
    return _AGGREGATORS[cfg.agg](x, loss_mask.astype(x.dtype), cfg)


def _kl_k1(logp: Array, ref_logp: Array, clamp: float) -> Array:
    return logp - ref_logp


def _kl_k2(logp: Array, ref_logp: Array, clamp: float) -> Array:
    return 0.5 * jnp.square(logp - ref_logp)


def _kl_k3(logp: Array, ref_logp: Array, clamp: float) -> Array:
    d = jnp.clip(ref_logp - logp, -clamp, clamp)
    return jnp.exp(d) - d - 1.0


# Estimators of KL(π‖π_ref) from samples of π (Schulman 2020, "Approximating KL
# divergence"): with d = log π_ref − log π, k1 = −d, k2 = d²/2, k3 = e^d − d − 1.
_KL: dict[str, Callable[[Array, Array, float], Array]] = {
    "k1": _kl_k1,
    "k2": _kl_k2,
    "k3": _kl_k3,
}


def policy_loss(
    cfg: LossConfig,
    logp: Array,
    old_logp: Array,
    advantages: Array,
    loss_mask: Array,
    *,
    ref_logp: Array | None = None,
    turn_ids: Array | None = None,
    entropy: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Clipped policy loss (module docstring) plus optional KL and entropy terms.

    ``loss = agg(ℓ) + kl_coef · agg(KL_kind(π‖π_ref)) − entropy_coef · agg(entropy)``,
    every term reduced with the same aggregation :func:`aggregate`.

    Returns ``(loss, metrics)``; metrics (no gradient) are means over mask-1 tokens:
    ``pg_loss``; ``clip_frac_low`` (A < 0 and s < 1 − ε_l), ``clip_frac_high`` (A > 0
    and s > 1 + ε_h) and ``clip_frac_dual`` (A < 0 and s > c): tokens whose gradient the
    clip removes; ``approx_kl`` (k1, old_logp − logp) and ``approx_kl_k3`` of
    KL(π_old‖π); ``ratio_min/mean/max`` of the ratio s used by ``kind``; ``h_turn``
    (:func:`turn_kl_entropy`); ``kl_ref`` if ``ref_logp`` is given; ``entropy`` if
    ``entropy`` is given. With no mask-1 token at all every metric is 0.
    """
    shape = _check_shapes(logp, old_logp, advantages, loss_mask, ref_logp, turn_ids, entropy)
    if cfg.kl_coef > 0 and ref_logp is None:
        raise ValueError("LossConfig.kl_coef > 0 needs ref_logp (reference policy log-probs)")
    if cfg.entropy_coef > 0 and entropy is None:
        raise ValueError("LossConfig.entropy_coef > 0 needs the per-token entropy array")

    mask = loss_mask.astype(logp.dtype)
    on = mask > 0
    adv = jnp.broadcast_to(advantages[:, None] if advantages.ndim == 1 else advantages, shape)
    adv = adv.astype(logp.dtype)
    if turn_ids is None:
        turn_ids = turn_ids_from_mask(loss_mask)
    log_ratio = jnp.where(on, logp - old_logp, 0.0)
    ratio = jnp.exp(_LOG_RATIO[cfg.kind](logp, log_ratio, mask, turn_ids, cfg.log_ratio_clamp))

    per_token = _clipped_objective(ratio, adv, cfg)
    pg_loss = aggregate(per_token, mask, cfg)
    loss = pg_loss
    if ref_logp is not None:
        kl = jnp.where(on, _KL[cfg.kl_kind](logp, ref_logp, cfg.log_ratio_clamp), 0.0)
        loss = loss + cfg.kl_coef * aggregate(kl, mask, cfg)
    if entropy is not None:
        loss = loss - cfg.entropy_coef * aggregate(entropy, mask, cfg)

    sg = jax.lax.stop_gradient
    metrics = _metrics(cfg, sg(ratio), adv, mask, sg(log_ratio), turn_ids)
    metrics["pg_loss"] = sg(pg_loss)
    if ref_logp is not None:
        metrics["kl_ref"] = _masked_mean(sg(kl), mask)
    if entropy is not None:
        metrics["entropy"] = _masked_mean(sg(entropy), mask)
    return loss, metrics


def _check_shapes(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    loss_mask: Array,
    ref_logp: Array | None,
    turn_ids: Array | None,
    entropy: Array | None,
) -> tuple[int, ...]:
    if logp.ndim != 2:
        raise ValueError(f"logp must be [B, T]; got shape {logp.shape}")
    shape = logp.shape
    named = {
        "old_logp": old_logp,
        "loss_mask": loss_mask,
        "ref_logp": ref_logp,
        "turn_ids": turn_ids,
        "entropy": entropy,
    }
    for name, x in named.items():
        if x is not None and x.shape != shape:
            raise ValueError(f"{name} must match logp's shape {shape}; got {x.shape}")
    if advantages.shape not in (shape, shape[:1]):
        raise ValueError(
            f"advantages must be [B, T] {shape} or [B] {shape[:1]}; got {advantages.shape}"
        )
    return shape


def _clipped_objective(ratio: Array, adv: Array, cfg: LossConfig) -> Array:
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = jnp.maximum(unclipped, clipped)
    if cfg.dual_clip is not None:
        loss = jnp.where(adv < 0, jnp.minimum(loss, -cfg.dual_clip * adv), loss)
    return loss


def _masked_mean(x: Array, mask: Array) -> Array:
    return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(mask.sum(), 1.0)


def _metrics(
    cfg: LossConfig, ratio: Array, adv: Array, mask: Array, log_ratio: Array, turn_ids: Array
) -> dict[str, Array]:
    on = mask > 0
    any_on = jnp.any(on)
    low = (ratio < 1.0 - cfg.clip_low) & (adv < 0)
    high = (ratio > 1.0 + cfg.clip_high) & (adv > 0)
    if cfg.dual_clip is None:
        dual = jnp.zeros_like(on)
    else:
        dual = (ratio > cfg.dual_clip) & (adv < 0)
    lr = jnp.clip(log_ratio, -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio_min = jnp.where(any_on, jnp.min(jnp.where(on, ratio, jnp.inf)), 0.0)
    ratio_max = jnp.where(any_on, jnp.max(jnp.where(on, ratio, -jnp.inf)), 0.0)
    return {
        "clip_frac_low": _masked_mean(low.astype(mask.dtype), mask),
        "clip_frac_high": _masked_mean(high.astype(mask.dtype), mask),
        "clip_frac_dual": _masked_mean(dual.astype(mask.dtype), mask),
        "approx_kl": _masked_mean(-log_ratio, mask),
        "approx_kl_k3": _masked_mean(jnp.exp(lr) - 1.0 - lr, mask),
        "ratio_min": ratio_min,
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_max": ratio_max,
        "h_turn": turn_kl_entropy(-log_ratio, mask, turn_ids),
    }


def turn_kl_entropy(token_kl: Array, loss_mask: Array, turn_ids: Array) -> Array:
    """AT²PO's turn-KL entropy diagnostic ``H_turn`` (spec at2po.md §3), a scalar.

    Per sequence i with turns k = 1..N_i: ``KL_k = mean_{t∈k} token_kl_t``; here (from
    :func:`policy_loss`) ``token_kl = old_logp − logp``, the k1 estimate of
    KL(π_old‖π), which is minus the turn's mean log-ratio that ATPO's ratio uses (it may
    be negative; the softmax does not mind). ``p = softmax_k(KL_k)``,
    ``H_i = −Σ_k p_k log p_k / log N_i`` ∈ [0, 1]: 1 when the policy moved equally on
    every turn, near 0 when one turn took all the change. ``H_i = 0`` when N_i ≤ 1;
    the result is the mean of ``H_i`` over sequences with N_i ≥ 2 (0 if there are none).
    """
    mask = loss_mask.astype(token_kl.dtype)
    sums, counts, _ = _segment_sums(token_kl, mask, turn_ids)
    present = counts > 0
    n_turns = present.sum(axis=1)
    kl_turn = jnp.where(present, sums / jnp.maximum(counts, 1.0), 0.0)
    top = jnp.max(jnp.where(present, kl_turn, -jnp.inf), axis=1, keepdims=True)
    top = jnp.where(n_turns[:, None] > 0, top, 0.0)
    weight = jnp.where(present, jnp.exp(kl_turn - top), 0.0)
    p = weight / jnp.maximum(weight.sum(axis=1, keepdims=True), jnp.finfo(weight.dtype).tiny)
    multi = n_turns >= 2
    h = entr(p).sum(axis=1) / jnp.log(jnp.maximum(n_turns, 2).astype(p.dtype))
    h = jnp.where(multi, h, 0.0)
    return jax.lax.stop_gradient(h.sum() / jnp.maximum(multi.sum(), 1))
