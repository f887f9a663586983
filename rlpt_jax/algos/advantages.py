"""Group-relative advantages for outcome rewards.

Shape legend: G prompts (groups), n samples per prompt. Rewards are ``[G, n]``; every
function returns ``[G, n]`` advantages, one per sample, which the batch builder then
broadcasts over that sample's model tokens.

Each function accepts a numpy array (or anything ``np.asarray`` takes) and returns numpy
float64, or a JAX array (also inside ``jit``) and returns a JAX float array. Only array
methods shared by both libraries are used, so the math is written once.

Selection by name goes through the plain dict ``GROUP_ADVANTAGES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # numpy or JAX array


def _as_float_groups(rewards: Any, *, min_n: int, name: str) -> Array:
    """Return ``rewards`` as a float ``[G, n]`` array of the caller's library."""
    if isinstance(rewards, jax.Array):
        r = rewards
        if not jnp.issubdtype(r.dtype, jnp.floating):
            r = r.astype(jnp.result_type(float))
    else:
        r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(
            f"{name}: rewards must be [G, n] (G prompts, n samples each); got shape {r.shape}"
        )
    if r.shape[1] < min_n:
        raise ValueError(
            f"{name}: needs at least {min_n} samples per prompt; got n={r.shape[1]} "
            f"(rewards shape {r.shape})"
        )
    return r


def grpo(rewards: Any, *, scale_by_std: bool = True, eps: float = 1e-6, std_ddof: int = 0) -> Array:
    """GRPO group advantage (DeepSeekMath, Shao et al. 2024, outcome supervision).

    ``A_i = (r_i − mean_j r_j) / (std_j r_j + eps)``. The paper does not say which std:
    ``std_ddof=0`` is the population std (divide by n), ``std_ddof=1`` the sample std
    (divide by n − 1), which is what verl computes (``torch.std`` in
    ``core_algos.compute_grpo_outcome_advantage``), so the AT²PO reference code's
    baselines use it; it needs ``n ≥ 2``. With ``scale_by_std=False`` this is the
    mean-centred advantage only, identical to :func:`drgrpo`. A group whose rewards are
    all equal gets exactly zero advantage (the numerator is exactly zero only if the mean
    is exact, so it is forced).
    """
    if std_ddof not in (0, 1):
        raise ValueError(f"grpo: std_ddof must be 0 or 1; got {std_ddof}")
    min_n = 1 + std_ddof if scale_by_std else 1
    r = _as_float_groups(rewards, min_n=min_n, name="grpo")
    centred = _centre(r)
    if not scale_by_std:
        return centred
    return centred / (r.std(axis=1, keepdims=True, ddof=std_ddof) + eps)


def drgrpo(rewards: Any) -> Array:
    """Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-like training").

    ``A_i = r_i − mean_j r_j``: no division by the group std, which would up-weight
    prompts that are nearly always solved or always failed.
    """
    r = _as_float_groups(rewards, min_n=1, name="drgrpo")
    return _centre(r)


def rloo(rewards: Any) -> Array:
    """REINFORCE leave-one-out advantage (Kool et al. 2019; Ahmadian et al. 2024).

    ``A_i = r_i − (1/(n−1)) Σ_{j≠i} r_j = n/(n−1) · (r_i − mean_j r_j)``. The baseline
    excludes the sample itself, so it needs ``n ≥ 2``.
    """
    r = _as_float_groups(rewards, min_n=2, name="rloo")
    n = r.shape[1]
    others_mean = (r.sum(axis=1, keepdims=True) - r) / (n - 1)
    return _zero_if_all_equal(r, r - others_mean)


def _centre(r: Array) -> Array:
    return _zero_if_all_equal(r, r - r.mean(axis=1, keepdims=True))


def _zero_if_all_equal(r: Array, advantage: Array) -> Array:
    """Force exact zeros in groups with identical rewards (float means can be inexact)."""
    all_equal = (r == r[:, :1]).all(axis=1, keepdims=True)
    return advantage * ~all_equal


@dataclass(frozen=True)
class AdvantageConfig:
    """Which group advantage to use.

    ``kind``: one of ``GROUP_ADVANTAGES``. ``scale_by_std``, ``eps`` and ``std_ddof``
    (0: population std, 1: sample std as verl computes it) apply to ``"grpo"`` only.
    """

    kind: str = "grpo"
    scale_by_std: bool = True
    eps: float = 1e-6
    std_ddof: int = 0

    def __post_init__(self) -> None:
        if self.kind not in GROUP_ADVANTAGES:
            raise ValueError(
                f"AdvantageConfig.kind={self.kind!r}; expected one of {sorted(GROUP_ADVANTAGES)}"
            )
        if not self.eps > 0:
            raise ValueError(f"AdvantageConfig.eps must be > 0; got {self.eps}")
        if self.kind != "grpo" and not self.scale_by_std:
            raise ValueError(
                f"AdvantageConfig.scale_by_std=False only applies to kind='grpo'; "
                f"kind={self.kind!r} never scales"
            )
        if self.std_ddof not in (0, 1):
            raise ValueError(f"AdvantageConfig.std_ddof must be 0 or 1; got {self.std_ddof}")
        if self.kind != "grpo" and self.std_ddof:
            raise ValueError(
                f"AdvantageConfig.std_ddof only applies to kind='grpo'; "
                f"kind={self.kind!r} never divides by a std"
            )


GROUP_ADVANTAGES: dict[str, Callable[..., Array]] = {
    "grpo": grpo,
    "drgrpo": drgrpo,
    "rloo": rloo,
}


def group_advantages(rewards: Any, cfg: AdvantageConfig) -> Array:
    """Advantages ``[G, n]`` for rewards ``[G, n]`` as selected by ``cfg``."""
    if cfg.kind == "grpo":
        return grpo(rewards, scale_by_std=cfg.scale_by_std, eps=cfg.eps, std_ddof=cfg.std_ddof)
    return GROUP_ADVANTAGES[cfg.kind](rewards)
