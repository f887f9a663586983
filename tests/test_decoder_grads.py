"""Hand-written backward passes in the decoder equal JAX's autodiff of the plain expression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlpt_jax.models.decoder import swiglu


def _plain_swiglu(x, w_gate, w_up, w_down):
    g = jnp.einsum("BTD,DF->BTF", x, w_gate)
    u = jnp.einsum("BTD,DF->BTF", x, w_up)
    return jnp.einsum("BTF,FD->BTD", jax.nn.silu(g) * u, w_down)


@pytest.mark.parametrize("shape", [(2, 5, 8, 12), (1, 1, 16, 4)])
def test_swiglu_values_and_gradients_equal_autodiff(shape):
    b, t, d, f = shape
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (b, t, d)) * 2.0  # silu' is exercised on both sides of 0
    w_gate = jax.random.normal(keys[1], (d, f)) * 0.5
    w_up = jax.random.normal(keys[2], (d, f)) * 0.5
    w_down = jax.random.normal(keys[3], (f, d)) * 0.5
    dy = jax.random.normal(keys[4], (b, t, d))

    def loss(fn):
        return lambda *args: jnp.sum(fn(*args) * dy)

    args = (x, w_gate, w_up, w_down)
    np.testing.assert_array_equal(swiglu(*args), _plain_swiglu(*args))
    ours = jax.grad(loss(swiglu), argnums=(0, 1, 2, 3))(*args)
    ref = jax.grad(loss(_plain_swiglu), argnums=(0, 1, 2, 3))(*args)
    for name, a, r in zip(("x", "gate", "up", "down"), ours, ref, strict=True):
        scale = float(jnp.max(jnp.abs(r)))
        assert scale > 0
        np.testing.assert_allclose(a, r, atol=1e-5 * scale, rtol=0, err_msg=name)
