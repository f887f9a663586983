"""DAPO's rollout-side techniques: dynamic sampling and overlong reward shaping.

DAPO (Yu et al. 2025, arXiv 2503.14476) is four changes to GRPO. Two are loss settings of
:class:`rlpt_jax.algos.losses.LossConfig`: clip-higher (``clip_high=0.28`` above
``clip_low=0.2``, section 3.1) and token-level aggregation (``agg="token_mean"``, section
3.3). The other two act on rollouts and live here, as host-side numpy:

* **Dynamic sampling** (section 3.2, eq. 11): a group whose samples all got the same
  reward has zero advantage and teaches nothing, so it is dropped, and more prompts are
  sampled until the batch holds as many groups as asked for.
* **Overlong reward shaping** (section 3.4, eq. 13): a soft length penalty in the last
  ``L_cache`` tokens before the maximum length ``L_max``, added to the task reward.

Shape legend: G groups (prompts), n samples per group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class DAPOConfig:
    """Dynamic sampling and overlong shaping; both off by default (plain GRPO rollouts).

    ``dynamic_sampling``: drop groups whose rewards are all equal and refill the batch
    with groups of fresh prompts. ``max_rounds``: most sampling rounds per step, the first
    included (verl's ``filter_groups.max_num_gen_batches``); when they are used up the
    step trains on the groups it has, and ``dapo/missing_groups`` counts the shortfall.
    ``overlong_buffer``: ``L_cache`` in tokens, 0 = no shaping. ``overlong_penalty``: the
    penalty at the maximum length (1 in the paper's eq. 13; verl's ``penalty_factor``).
    """

    dynamic_sampling: bool = False
    max_rounds: int = 10
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError(f"DAPOConfig.max_rounds must be >= 1; got {self.max_rounds}")
        if self.overlong_buffer < 0:
            raise ValueError(
                f"DAPOConfig.overlong_buffer must be >= 0 (0 = off); got {self.overlong_buffer}"
            )
        if not 0 <= self.overlong_penalty < float("inf"):
            raise ValueError(
                f"DAPOConfig.overlong_penalty must be finite and >= 0; got {self.overlong_penalty}"
            )


def overlong_penalty(
    lengths: Sequence[int] | np.ndarray, max_len: int, buffer: int, factor: float = 1.0
) -> np.ndarray:
    """DAPO's soft overlong punishment (eq. 13), scaled by ``factor``; same shape as lengths.

    With ``L_max = max_len`` and ``L_cache = buffer``::

        R(y) = 0                                  |y| ≤ L_max − L_cache
        R(y) = ((L_max − L_cache) − |y|) / L_cache   L_max − L_cache < |y| ≤ L_max
        R(y) = −1                                 |y| > L_max

    so the penalty falls linearly from 0 to −1 across the last ``L_cache`` tokens. A
    ``buffer`` of 0 turns shaping off (all zeros).
    """
    lengths = np.asarray(lengths, np.float64)
    if buffer == 0:
        return np.zeros_like(lengths)
    if not 0 < buffer <= max_len:
        raise ValueError(
            f"overlong buffer L_cache={buffer} must be in (0, L_max={max_len}]: the penalty "
            f"starts L_cache tokens before the maximum length"
        )
    start = max_len - buffer
    return factor * np.clip((start - lengths) / buffer, -1.0, 0.0)


def informative(rewards: np.ndarray) -> np.ndarray:
    """``[G]`` bool: the group's rewards are not all equal (so its advantages are not 0)."""
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [G, n]; got shape {r.shape}")
    return ~(r == r[:, :1]).all(axis=1)


def fill_groups(
    sample_round: Callable[[int], Sequence[T]],
    rewards_of: Callable[[T], np.ndarray],
    want: int,
    max_rounds: int,
) -> tuple[list[T], dict[str, float]]:
    """Dynamic sampling: up to ``want`` informative groups from at most ``max_rounds``.

    ``sample_round(r)`` samples round ``r`` (0, 1, …) and returns its groups;
    ``rewards_of(group)`` is that group's ``[n]`` rewards. Rounds run until ``want``
    groups whose rewards differ are kept; the kept groups keep their sampling order and
    the surplus of the last round is dropped, as in the DAPO recipe. If no round yields
    an informative group, the first round's groups are returned (all-zero advantages: the
    step runs and learns nothing from them) and the shortfall is counted all the same.

    Metrics: ``dapo/rounds`` (rounds sampled), ``dapo/refills`` (rounds after the
    first), ``dapo/dropped_groups`` (all-equal groups discarded), ``dapo/kept_groups``
    and ``dapo/missing_groups`` (``want`` minus kept, > 0 when ``max_rounds`` ran out).
    """
    if want < 1 or max_rounds < 1:
        raise ValueError(f"want and max_rounds must be >= 1; got {want}, {max_rounds}")
    kept: list[T] = []
    first: list[T] = []
    dropped = rounds = 0
    while len(kept) < want and rounds < max_rounds:
        groups = list(sample_round(rounds))
        if rounds == 0:
            first = groups
        rounds += 1
        for g in groups:
            if informative(np.asarray(rewards_of(g), np.float64)[None, :])[0]:
                kept.append(g)
            else:
                dropped += 1
    metrics = {
        "dapo/rounds": float(rounds),
        "dapo/refills": float(rounds - 1),
        "dapo/dropped_groups": float(dropped),
        "dapo/kept_groups": float(min(len(kept), want)),
        "dapo/missing_groups": float(max(want - len(kept), 0)),
    }
    return (kept[:want] if kept else first[:want]), metrics
