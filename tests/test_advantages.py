"""Group advantages against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlpt_jax.algos.advantages import (
    AdvantageConfig,
    drgrpo,
    group_advantages,
    grpo,
    rloo,
)

# Group 0: rewards 1, 0, 0, 1 -> mean 0.5, population std 0.5.
# Group 1: rewards 3, 0, 0, 0 -> mean 0.75, variance (2.25^2 + 3 * 0.75^2)/4
#          = (5.0625 + 1.6875)/4 = 1.6875, std = sqrt(1.6875).
REWARDS = [[1.0, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]]
EPS = 1e-6


def test_grpo_z_score_population_std():
    s1 = np.sqrt(1.6875)
    want = [
        [0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), -0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)],
        [2.25 / (s1 + EPS), -0.75 / (s1 + EPS), -0.75 / (s1 + EPS), -0.75 / (s1 + EPS)],
    ]
    got = grpo(REWARDS, eps=EPS)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_grpo_without_std_equals_drgrpo_mean_centred():
    want = [[0.5, -0.5, -0.5, 0.5], [2.25, -0.75, -0.75, -0.75]]
    np.testing.assert_allclose(grpo(REWARDS, scale_by_std=False), want, rtol=1e-12)
    np.testing.assert_allclose(drgrpo(REWARDS), want, rtol=1e-12)


def test_rloo_leave_one_out_baseline():
    # Group 0: sample 0 -> 1 - mean(0, 0, 1) = 1 - 1/3 = 2/3; sample 1 -> 0 - mean(1, 0, 1) = -2/3.
    # Group 1: sample 0 -> 3 - 0 = 3; samples 1..3 -> 0 - mean(3, 0, 0) = -1.
    want = [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [3.0, -1.0, -1.0, -1.0]]
    np.testing.assert_allclose(rloo(REWARDS), want, rtol=1e-12)


def test_all_equal_group_is_exactly_zero():
    # 0.1 * 3 / 3 is not exactly 0.1 in floating point; the group must still be all zeros.
    r = [[0.1, 0.1, 0.1]]
    for fn in (grpo, drgrpo, rloo):
        assert np.all(fn(r) == 0.0), fn.__name__


def test_jax_input_and_jit_match_numpy():
    r = jnp.asarray(REWARDS, dtype=jnp.float32)
    for fn in (grpo, drgrpo, rloo):
        got = jax.jit(fn)(r)
        assert isinstance(got, jax.Array)
        np.testing.assert_allclose(np.asarray(got), fn(REWARDS), rtol=1e-6, atol=1e-6)


def test_integer_rewards_are_promoted_to_float():
    np.testing.assert_allclose(drgrpo(np.array([[1, 0]])), [[0.5, -0.5]])
    np.testing.assert_allclose(np.asarray(drgrpo(jnp.array([[1, 0]]))), [[0.5, -0.5]])


def test_errors():
    with pytest.raises(ValueError, match=r"\[G, n\].*shape \(4,\)"):
        grpo([1.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo([[1.0], [0.0]])
    with pytest.raises(ValueError, match="kind='ppo'"):
        AdvantageConfig(kind="ppo")
    with pytest.raises(ValueError, match="eps"):
        AdvantageConfig(eps=0.0)
    with pytest.raises(ValueError, match="only applies"):
        AdvantageConfig(kind="rloo", scale_by_std=False)


def test_group_advantages_dispatch():
    np.testing.assert_allclose(
        group_advantages(REWARDS, AdvantageConfig(kind="rloo")), rloo(REWARDS)
    )
    np.testing.assert_allclose(
        group_advantages(REWARDS, AdvantageConfig(kind="grpo", scale_by_std=False)),
        drgrpo(REWARDS),
    )


def test_grpo_sample_std_as_verl_computes_it():
    """std_ddof=1 divides by n − 1, as verl's GRPO (torch.std) does for the AT²PO baselines.

    Group 0: sum of squares 4 · 0.25 = 1 → sample std √(1/3). Group 1: sum of squares
    4 · 1.6875 = 6.75 → sample std √2.25 = 1.5.
    """
    s0, s1 = np.sqrt(1 / 3), 1.5
    want = [
        [0.5 / (s0 + EPS), -0.5 / (s0 + EPS), -0.5 / (s0 + EPS), 0.5 / (s0 + EPS)],
        [2.25 / (s1 + EPS), -0.75 / (s1 + EPS), -0.75 / (s1 + EPS), -0.75 / (s1 + EPS)],
    ]
    np.testing.assert_allclose(grpo(REWARDS, eps=EPS, std_ddof=1), want, rtol=1e-12)
    got = group_advantages(REWARDS, AdvantageConfig(std_ddof=1))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got_jax = jax.jit(lambda r: grpo(r, std_ddof=1))(jnp.asarray(REWARDS, jnp.float32))
    np.testing.assert_allclose(np.asarray(got_jax), want, rtol=1e-6)
    assert np.all(grpo([[0.1, 0.1, 0.1]], std_ddof=1) == 0.0)


def test_sample_std_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        grpo([[1.0], [0.0]], std_ddof=1)
    with pytest.raises(ValueError, match="std_ddof must be 0 or 1"):
        AdvantageConfig(std_ddof=2)
    with pytest.raises(ValueError, match="std_ddof only applies"):
        AdvantageConfig(kind="drgrpo", std_ddof=1)
