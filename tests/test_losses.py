"""Policy losses against hand-computed values, gradients included.

The shared batch (B=2, T=6). d = logp − old_logp; "x" marks mask-0 tokens, which carry a
garbage log-ratio (5.0) that must not leak into anything.

    row 0  mask 1 1 0 1 1 1   d  0.1  0.3  x | −0.3  0.0  0.0   A = +1
           turns: turn 0 = tokens 0–1 (mean d 0.2), a tool token, turn 1 = tokens 3–5
           (mean d −0.1): two turns of different lengths, 5 loss tokens.
    row 1  mask 1 1 1 1 0 0   d  0.05 −0.3  0.2  0.0  x  x          A = −1
           one turn (mean d −0.0125), 4 loss tokens, padded.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlpt_jax.algos.losses import (
    PRESETS,
    LossConfig,
    aggregate,
    policy_loss,
    turn_ids_from_mask,
    turn_kl_entropy,
)

E = math.exp
MASK = np.array([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0]], np.float32)
D = np.array([[0.1, 0.3, 5.0, -0.3, 0.0, 0.0], [0.05, -0.3, 0.2, 0.0, 5.0, 5.0]], np.float32)
LOGP = np.array([[-1.0, -0.5, -2.0, -0.7, -1.2, -0.3], [-0.9, -1.1, -0.4, -2.2, 0.0, 0.0]])
LOGP = LOGP.astype(np.float32)
OLD = LOGP - D
ADV = np.array([1.0, -1.0], np.float32)
TOL = dict(rtol=2e-6, atol=2e-7)


def run(cfg: LossConfig, logp=LOGP, old=OLD, adv=ADV, mask=MASK, **kw):
    """Loss, metrics and d loss / d logp, all through jit."""
    f = jax.jit(functools.partial(policy_loss, cfg))
    loss, metrics = f(
        jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), **kw
    )
    grad = jax.jit(jax.grad(lambda lp: f(lp, old, adv, mask, **kw)[0]))(jnp.asarray(logp))
    return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(grad)


def agg4(row0: list[float], row1: list[float], norm_constant: float = 6.0) -> dict[str, float]:
    """The four aggregations of per-token values on the shared batch's 5 + 4 loss tokens."""
    s0, s1 = sum(row0), sum(row1)
    return {
        "token_mean": (s0 + s1) / 9,
        "seq_mean_token_mean": (s0 / 5 + s1 / 4) / 2,
        "seq_mean_token_sum": (s0 + s1) / 2,
        "constant": (s0 + s1) / (2 * norm_constant),
    }


def cfg_for(agg: str, **kw) -> LossConfig:
    return LossConfig(agg=agg, norm_constant=6.0 if agg == "constant" else None, **kw)


AGGS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant"]
# What each aggregation divides a token's loss by, per row (row 0 has 5 tokens, row 1 4):
# token_mean 9 tokens; seq_mean_token_mean B'=2 rows × row length; seq_mean_token_sum
# B'=2; constant B · norm_constant = 2 · 6.
NORMALISER = {
    "token_mean": (9.0, 9.0),
    "seq_mean_token_mean": (10.0, 8.0),
    "seq_mean_token_sum": (2.0, 2.0),
    "constant": (12.0, 12.0),
}


def grad_rows(row0: list[float], row1: list[float]) -> np.ndarray:
    """Place per-loss-token gradients into the [2, 6] layout (mask-0 slots get 0)."""
    g = np.zeros((2, 6))
    g[0, [0, 1, 3, 4, 5]] = row0
    g[1, [0, 1, 2, 3]] = row1
    return g


def test_turn_ids_from_mask():
    mask = jnp.array([[1, 1, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1] * 6])
    want = [[0, 0, -1, 1, 1, 1], [-1, 0, -1, 1, -1, 2], [-1] * 6, [0] * 6]
    got = jax.jit(turn_ids_from_mask)(mask)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == jnp.int32


@pytest.mark.parametrize("agg", AGGS)
def test_ppo_dapo_clip_higher(agg: str):
    # ε_l = 0.2, ε_h = 0.28. Token loss max(−A s, −A clip(s, 0.8, 1.28)), s = e^d.
    # row 0 (A=+1): e^0.1 unclipped; e^0.3 = 1.35 > 1.28 → clipped high, loss −1.28, grad 0;
    #   e^−0.3 = 0.74 < 0.8 but A > 0 → unclipped (the clip is pessimistic); 1, 1.
    # row 1 (A=−1): e^0.05, e^0.2 = 1.22 and 1 unclipped; e^−0.3 = 0.74 < 0.8 → clipped low,
    #   loss +0.8, grad 0.
    cfg = cfg_for(agg, kind="ppo", clip_low=0.2, clip_high=0.28)
    loss, m, grad = run(cfg)
    row0 = [-E(0.1), -1.28, -E(-0.3), -1.0, -1.0]
    row1 = [E(0.05), 0.8, E(0.2), 1.0]
    assert loss == pytest.approx(agg4(row0, row1)[agg], rel=2e-6, abs=1e-6)
    # Unclipped: d(−A e^d)/d logp = −A s; divided by the aggregation's normaliser.
    n0, n1 = NORMALISER[agg]
    want_grad = grad_rows(
        [-E(0.1) / n0, 0.0, -E(-0.3) / n0, -1 / n0, -1 / n0],
        [E(0.05) / n1, 0.0, E(0.2) / n1, 1 / n1],
    )
    np.testing.assert_allclose(grad, want_grad, **TOL)
    assert m["clip_frac_low"] == pytest.approx(1 / 9)
    assert m["clip_frac_high"] == pytest.approx(1 / 9)
    assert m["clip_frac_dual"] == 0.0
    assert m["pg_loss"] == pytest.approx(loss)


def test_ppo_metrics():
    _, m, _ = run(LossConfig(kind="ppo", clip_low=0.2, clip_high=0.28))
    d = [0.1, 0.3, -0.3, 0.0, 0.0, 0.05, -0.3, 0.2, 0.0]  # the 9 loss tokens
    # approx_kl: mean of old − logp = −d; k3 of KL(old‖new): e^d − 1 − d.
    assert m["approx_kl"] == pytest.approx(-sum(d) / 9, abs=1e-7)
    assert m["approx_kl_k3"] == pytest.approx(sum(E(x) - 1 - x for x in d) / 9, rel=1e-5)
    assert m["ratio_min"] == pytest.approx(E(-0.3), rel=1e-6)
    assert m["ratio_max"] == pytest.approx(E(0.3), rel=1e-6)
    assert m["ratio_mean"] == pytest.approx(sum(E(x) for x in d) / 9, rel=1e-6)
    # h_turn: row 0 has turns with KL (k1, −mean d) −0.2 and +0.1; p = softmax = (1/(1+e^0.3),
    # e^0.3/(1+e^0.3)); H = −Σ p log p / log 2. Row 1 has one turn and is left out.
    p0 = 1 / (1 + E(0.3))
    p1 = 1 - p0
    h = -(p0 * math.log(p0) + p1 * math.log(p1)) / math.log(2)
    assert m["h_turn"] == pytest.approx(h, rel=1e-5)
    assert "entropy" not in m and "kl_ref" not in m


@pytest.mark.parametrize("agg", AGGS)
def test_gspo_sequence_ratio_unclipped(agg: str):
    # Row 0 mean d over its 5 loss tokens: (0.1 + 0.3 − 0.3 + 0 + 0)/5 = 0.02 → s = e^0.02.
    # Row 1: (0.05 − 0.3 + 0.2 + 0)/4 = −0.0125 → s = e^−0.0125. ε = 0.2/0.28: no clipping.
    # Every token of a row has the row's s; the gradient is −A s / normaliser per token.
    cfg = cfg_for(agg, kind="gspo", clip_low=0.2, clip_high=0.28)
    loss, m, grad = run(cfg)
    s0, s1 = E(0.02), E(-0.0125)
    assert loss == pytest.approx(agg4([-s0] * 5, [s1] * 4)[agg], rel=2e-6, abs=1e-6)
    n0, n1 = NORMALISER[agg]
    np.testing.assert_allclose(grad, grad_rows([-s0 / n0] * 5, [s1 / n1] * 4), **TOL)
    assert m["ratio_min"] == pytest.approx(s1, rel=1e-6)
    assert m["ratio_max"] == pytest.approx(s0, rel=1e-6)


def test_gspo_sequence_ratio_clipped():
    # ε_l = 0.005, ε_h = 0.01: row 0 s = e^0.02 = 1.0202 > 1.01 with A > 0 → loss −1.01;
    # row 1 s = e^−0.0125 = 0.9876 < 0.995 with A < 0 → loss +0.995. Both flat: grad 0.
    cfg = LossConfig(kind="gspo", clip_low=0.005, clip_high=0.01, agg="seq_mean_token_mean")
    loss, m, grad = run(cfg)
    assert loss == pytest.approx((-1.01 + 0.995) / 2, rel=1e-6)
    np.testing.assert_array_equal(grad, np.zeros((2, 6)))
    assert m["clip_frac_high"] == pytest.approx(5 / 9)
    assert m["clip_frac_low"] == pytest.approx(4 / 9)


@pytest.mark.parametrize("agg", AGGS)
def test_atpo_turn_ratio(agg: str):
    # Turn ratios s = e^{turn mean d}: row 0 turn 0 e^0.2 = 1.221, turn 1 e^−0.1 = 0.905;
    # row 1 e^−0.0125 = 0.988. ε_l = ε_h = 0.15:
    #   row 0 turn 0 (A=+1): 1.221 > 1.15 → clipped high, loss −1.15, grad 0;
    #   row 0 turn 1 (A=+1): unclipped, loss −e^−0.1 per token, grad −s A / normaliser;
    #   row 1 (A=−1): 0.988 inside (0.85, 1.15), loss e^−0.0125, grad +s / normaliser.
    cfg = cfg_for(agg, kind="atpo", clip_low=0.15, clip_high=0.15)
    loss, m, grad = run(cfg)
    s01, s1 = E(-0.1), E(-0.0125)
    assert loss == pytest.approx(
        agg4([-1.15, -1.15] + [-s01] * 3, [s1] * 4)[agg], rel=2e-6, abs=1e-6
    )
    n0, n1 = NORMALISER[agg]
    np.testing.assert_allclose(grad, grad_rows([0, 0] + [-s01 / n0] * 3, [s1 / n1] * 4), **TOL)
    assert m["clip_frac_high"] == pytest.approx(2 / 9)
    assert m["clip_frac_low"] == 0.0
    assert m["ratio_mean"] == pytest.approx((2 * E(0.2) + 3 * s01 + 4 * s1) / 9, rel=1e-6)


def test_atpo_per_token_advantages_clip_low():
    # AT²PO gives each turn its own advantage. Row 0: turn 0 A=+1, turn 1 A=−0.5; row 1 A=−1.
    # ε_l = 0.05, ε_h = 0.15. Row 0 turn 1: s = e^−0.1 = 0.905 < 0.95 with A < 0 → clipped
    # low, loss −A·0.95 = 0.475, grad 0. Turn 0 as before: clipped high, −1.15.
    # Row 1: s = 0.988 ≥ 0.95 → unclipped, loss e^−0.0125, grad s/8 (2 rows × 4 tokens).
    adv = np.array([[1, 1, 0, -0.5, -0.5, -0.5], [-1, -1, -1, -1, 0, 0]], np.float32)
    cfg = LossConfig(kind="atpo", clip_low=0.05, clip_high=0.15, agg="seq_mean_token_mean")
    loss, m, grad = run(cfg, adv=adv)
    s1 = E(-0.0125)
    assert loss == pytest.approx(((-2.3 + 3 * 0.475) / 5 + s1) / 2, rel=2e-6)
    np.testing.assert_allclose(grad, grad_rows([0.0] * 5, [s1 / 8] * 4), **TOL)
    assert m["clip_frac_low"] == pytest.approx(3 / 9)
    assert m["clip_frac_high"] == pytest.approx(2 / 9)


def test_atpo_explicit_turn_ids():
    # Row 1 split by the caller into turns {0, 1} (d mean (0.05 − 0.3)/2 = −0.125) and
    # {2, 3} (mean 0.1); mask-0 slots carry arbitrary ids. Wide clip: nothing clipped.
    turn_ids = np.array([[0, 0, 9, 1, 1, 1], [0, 0, 1, 1, 7, -1]], np.int32)
    cfg = LossConfig(kind="atpo", clip_low=0.5, clip_high=0.5, agg="token_mean")
    loss, _, grad = run(cfg, turn_ids=jnp.asarray(turn_ids))
    row0 = [-E(0.2)] * 2 + [-E(-0.1)] * 3
    row1 = [E(-0.125)] * 2 + [E(0.1)] * 2
    assert loss == pytest.approx((sum(row0) + sum(row1)) / 9, rel=2e-6)
    np.testing.assert_allclose(grad, grad_rows([x / 9 for x in row0], [x / 9 for x in row1]), **TOL)


def test_atpo_log_ratio_clamp():
    # One turn with mean d = 30 is clamped to 10 before exp: s = e^10, finite. A = −1,
    # ε = 0.2: loss max(e^10, 1.2) = e^10; gradient −A s / 2 = e^10 / 2 per token.
    logp = np.zeros((1, 2), np.float32)
    old = np.full((1, 2), -30.0, np.float32)
    cfg = LossConfig(kind="atpo", agg="token_mean")
    loss, _, grad = run(
        cfg, logp=logp, old=old, adv=np.array([-1.0], np.float32), mask=np.ones((1, 2))
    )
    assert loss == pytest.approx(E(10.0), rel=1e-6)
    np.testing.assert_allclose(grad, [[E(10.0) / 2, E(10.0) / 2]], rtol=1e-6)


@pytest.mark.parametrize("agg", AGGS)
def test_on_policy_grpo_gradient_is_plain_policy_gradient(agg: str):
    # logp == old_logp: every ratio is 1, nothing is clipped, and ∂ℓ/∂logp_t = −A s = −A, so
    # the gradient is −A_i / normaliser on loss tokens and 0 elsewhere.
    cfg = cfg_for(agg, kind="ppo", clip_low=0.2, clip_high=0.2)
    loss, m, grad = run(cfg, old=LOGP)
    np.testing.assert_allclose(
        grad, grad_rows([-1 / NORMALISER[agg][0]] * 5, [1 / NORMALISER[agg][1]] * 4), **TOL
    )
    # Per-token loss −A: −1 on row 0's 5 tokens, +1 on row 1's 4 tokens.
    assert loss == pytest.approx(agg4([-1.0] * 5, [1.0] * 4)[agg], rel=1e-6)
    assert m["h_turn"] == pytest.approx(1.0)  # equal turn KLs (0, 0): uniform, entropy log 2


def test_aggregations_differ_on_rows_of_different_length():
    # Same per-token values as the on-policy case: −1 × 5 tokens and +1 × 4 tokens.
    # token_mean (−5 + 4)/9 = −1/9; seq_mean_token_mean (−1 + 1)/2 = 0;
    # seq_mean_token_sum (−5 + 4)/2 = −1/2; constant (−5 + 4)/(2 · 6) = −1/12.
    x = jnp.asarray(np.where(np.arange(2)[:, None] == 0, -1.0, 1.0) * np.ones((2, 6)), jnp.float32)
    want = {
        "token_mean": -1 / 9,
        "seq_mean_token_mean": 0.0,
        "seq_mean_token_sum": -0.5,
        "constant": -1 / 12,
    }
    got = {a: float(aggregate(x, jnp.asarray(MASK), cfg_for(a))) for a in AGGS}
    for a in AGGS:
        assert got[a] == pytest.approx(want[a], abs=1e-7), a
    assert len(set(round(v, 6) for v in got.values())) == 4


def test_dual_clip():
    # B=1, T=3, A=−1, ε = 0.2, c = 3. d = 1.5, 0.2, −0.5:
    #   token 0: s = e^1.5 = 4.48; max(4.48, 1.2) = 4.48, dual cap min(4.48, 3) = 3, grad 0;
    #   token 1: s = e^0.2 = 1.221; max(1.221, 1.2) = 1.221 unclipped, grad +s/3;
    #   token 2: s = e^−0.5 = 0.607 < 0.8 → clipped low, 0.8, grad 0.
    logp = np.array([[-1.0, -1.0, -1.0]], np.float32)
    old = logp - np.array([[1.5, 0.2, -0.5]], np.float32)
    adv = np.array([-1.0], np.float32)
    mask = np.ones((1, 3), np.float32)
    cfg = LossConfig(dual_clip=3.0)
    loss, m, grad = run(cfg, logp=logp, old=old, adv=adv, mask=mask)
    assert loss == pytest.approx((3.0 + E(0.2) + 0.8) / 3, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.0, E(0.2) / 3, 0.0]], **TOL)
    assert m["clip_frac_dual"] == pytest.approx(1 / 3)
    assert m["clip_frac_low"] == pytest.approx(1 / 3)
    # s > 1 + ε_h on tokens 0 and 1 with A < 0 is not a clip: the max keeps −A·s there.
    assert m["clip_frac_high"] == 0.0
    # Without the dual clip token 0 keeps 4.48 and its gradient s/3.
    loss, _, grad = run(LossConfig(), logp=logp, old=old, adv=adv, mask=mask)
    assert loss == pytest.approx((E(1.5) + E(0.2) + 0.8) / 3, rel=1e-6)
    assert grad[0, 0] == pytest.approx(E(1.5) / 3, rel=1e-6)
    # The cap is for A < 0 only: on the shared batch (A = +1 row; A = −1 row with every
    # s < 3) the dual clip changes nothing.
    with_dual, without = run(LossConfig(dual_clip=3.0)), run(LossConfig())
    assert with_dual[0] == pytest.approx(without[0], rel=1e-7)
    np.testing.assert_array_equal(with_dual[2], without[2])


@pytest.mark.parametrize("kl_kind", ["k1", "k2", "k3"])
def test_kl_penalty(kl_kind: str):
    # A = 0 so the policy term is 0. logp = (−1, −2), ref = (−1.5, −1): δ = ref − logp =
    # (−0.5, 1). k1 = −δ = (0.5, −1); k2 = δ²/2 = (0.125, 0.5); k3 = e^δ − δ − 1.
    # loss = 0.1 · token mean. Gradients w.r.t. logp: k1 → 1; k2 → −δ; k3 → 1 − e^δ.
    logp = np.array([[-1.0, -2.0]], np.float32)
    ref = np.array([[-1.5, -1.0]], np.float32)
    delta = [-0.5, 1.0]
    per_token = {
        "k1": [-x for x in delta],
        "k2": [x * x / 2 for x in delta],
        "k3": [E(x) - x - 1 for x in delta],
    }[kl_kind]
    dk = {"k1": [1.0, 1.0], "k2": [-x for x in delta], "k3": [1 - E(x) for x in delta]}[kl_kind]
    cfg = LossConfig(kl_coef=0.1, kl_kind=kl_kind)
    loss, m, grad = run(
        cfg,
        logp=logp,
        old=logp,
        adv=np.zeros(1, np.float32),
        mask=np.ones((1, 2)),
        ref_logp=jnp.asarray(ref),
    )
    assert loss == pytest.approx(0.1 * sum(per_token) / 2, rel=1e-6)
    assert m["kl_ref"] == pytest.approx(sum(per_token) / 2, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.1 * g / 2 for g in dk]], **TOL)


def test_entropy_bonus_and_metric():
    # On-policy, token_mean: pg = (−5 + 4)/9 = −1/9 (see the on-policy test). Entropy 0.5 on
    # row 0's loss tokens and 2.0 on row 1's (garbage 100 on masked slots):
    # token mean (5·0.5 + 4·2)/9 = 10.5/9; loss = −1/9 − 0.01 · 10.5/9.
    ent = np.where(MASK > 0, np.array([[0.5], [2.0]]), 100.0).astype(np.float32)
    cfg = LossConfig(entropy_coef=0.01)
    loss, m, _ = run(cfg, old=LOGP, entropy=jnp.asarray(ent))
    assert loss == pytest.approx(-1 / 9 - 0.01 * 10.5 / 9, rel=1e-6)
    assert m["entropy"] == pytest.approx(10.5 / 9, rel=1e-6)


def test_row_advantages_equal_broadcast_token_advantages():
    cfg = LossConfig(kind="atpo", clip_low=0.15, clip_high=0.15)
    full = np.broadcast_to(ADV[:, None], (2, 6)).copy()
    a = run(cfg)
    b = run(cfg, adv=full)
    assert a[0] == pytest.approx(b[0], rel=1e-7)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-7)


@pytest.mark.parametrize("kind", ["ppo", "gspo", "atpo"])
@pytest.mark.parametrize("agg", AGGS)
def test_padding_row_changes_nothing_but_constant_and_never_nans(kind: str, agg: str):
    # A third, fully masked row with −inf log-probs (worst-case padding). Means over
    # non-empty rows ignore it; "constant" divides by B = 3 instead of 2.
    logp = np.concatenate([LOGP, np.full((1, 6), -np.inf, np.float32)])
    old = np.concatenate([OLD, np.full((1, 6), -np.inf, np.float32)])
    mask = np.concatenate([MASK, np.zeros((1, 6), np.float32)])
    adv = np.concatenate([ADV, [np.float32(1.0)]])
    cfg = cfg_for(agg, kind=kind)
    loss2, m2, _ = run(cfg)
    loss3, m3, grad3 = run(cfg, logp=logp, old=old, adv=adv, mask=mask)
    scale = 2 / 3 if agg == "constant" else 1.0
    assert loss3 == pytest.approx(loss2 * scale, rel=1e-6)
    assert np.all(np.isfinite(grad3)) and np.all(grad3[2] == 0)
    for k in m2:
        assert np.isfinite(m3[k]), k
        if k != "pg_loss":
            assert m3[k] == pytest.approx(m2[k], rel=1e-6, abs=1e-7), k


def test_fully_masked_batch_is_zero_without_nan():
    cfg = LossConfig(kind="atpo", agg="seq_mean_token_mean")
    mask = np.zeros((2, 6), np.float32)
    loss, m, grad = run(cfg, mask=mask)
    assert loss == 0.0
    assert all(v == 0.0 for v in m.values()), m
    np.testing.assert_array_equal(grad, np.zeros((2, 6)))


def test_turn_kl_entropy_definition():
    # Row 0: three turns with equal KL 0.2 (9.9 is on a mask-0 token) → uniform p → H = 1.
    # Row 1: turns with KL 0 and log 3 (token values constant within each turn):
    #   p = (1/4, 3/4), H = −(¼ log ¼ + ¾ log ¾) / log 2.
    # Row 2: a single turn → 0 and left out of the mean. Result: (1 + H1) / 2.
    kl = np.array([[0.2, 9.9, 0.2, 0.2], [0.0, 0.0, math.log(3), math.log(3)], [0.5] * 4])
    mask = np.array([[1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], np.float32)
    turns = np.array([[0, 0, 1, 2], [0, 0, 1, 1], [0, 0, 0, 0]], np.int32)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    got = jax.jit(turn_kl_entropy)(jnp.asarray(kl, jnp.float32), mask, turns)
    assert float(got) == pytest.approx((1 + h1) / 2, rel=1e-6)
    # Only single-turn rows: 0 by definition.
    assert float(turn_kl_entropy(jnp.asarray(kl[2:], jnp.float32), mask[2:], turns[2:])) == 0.0


def test_missing_inputs_and_bad_shapes():
    with pytest.raises(ValueError, match="needs ref_logp"):
        run(LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy array"):
        run(LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match=r"advantages must be \[B, T\]"):
        run(LossConfig(), adv=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="loss_mask must match"):
        run(LossConfig(), mask=np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"logp must be \[B, T\]"):
        policy_loss(LossConfig(), jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), jnp.ones(3))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(kind="grpo"), "kind='grpo'"),
        (dict(agg="mean"), "agg='mean'"),
        (dict(kl_kind="k4"), "kl_kind='k4'"),
        (dict(clip_low=1.0), "clip_low"),
        (dict(clip_high=0.0), "clip_high"),
        (dict(dual_clip=1.0), "dual_clip"),
        (dict(agg="constant"), "needs norm_constant"),
        (dict(norm_constant=4.0), "only applies to agg='constant'"),
        (dict(kl_coef=-0.1), "kl_coef"),
        (dict(entropy_coef=float("nan")), "entropy_coef"),
        (dict(log_ratio_clamp=0.0), "log_ratio_clamp"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kw)


def test_presets_match_the_papers():
    assert (PRESETS["atpo"].kind, PRESETS["atpo"].clip_low, PRESETS["atpo"].clip_high) == (
        "atpo",
        3e-3,
        4e-3,
    )
    assert PRESETS["atpo"].agg == "seq_mean_token_mean" and PRESETS["atpo"].kl_coef == 0.0
    assert (PRESETS["dapo"].clip_low, PRESETS["dapo"].clip_high) == (0.2, 0.28)
    assert (PRESETS["gspo"].clip_low, PRESETS["gspo"].clip_high) == (3e-4, 4e-4)
