"""The attention implementations compute one function: blockwise == xla within 1e-5
(float32), outputs and gradients, for causal, right-padded, left-padded, packed, cached
and grouped-query inputs; the mask semantics equal jax.nn.dot_product_attention's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlpt_jax.models import attention as attn
from rlpt_jax.models.decoder import Cache

B, T, H = 2, 37, 16  # T not a multiple of the blocks: padding inside blockwise


def _segments(kind: str) -> np.ndarray:
    seg = np.ones((B, T), np.int32)
    if kind == "right_padded":
        seg[0, 30:] = 0
        seg[1, 21:] = 0
    elif kind == "left_padded":
        seg[0, :9] = 0
        seg[1, :2] = 0
    elif kind == "packed":
        seg[0, 12:] = 2
        seg[0, 30:] = 0
        seg[1, 5:] = 2
        seg[1, 20:] = 3
    return seg


def _inputs(n_heads, n_kv, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, T, n_heads, H), jnp.float32)
    k = jax.random.normal(ks[1], (B, T, n_kv, H), jnp.float32)
    v = jax.random.normal(ks[2], (B, T, n_kv, H), jnp.float32)
    w = jax.random.normal(ks[3], (B, T, n_heads * H), jnp.float32)
    return q, k, v, w


def _close(a, b, tol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    err = np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))
    assert err <= tol, f"max relative error {err:.2e} > {tol}"


CASES = [  # (mask, (query heads, kv heads), (block_q, block_k))
    ("causal", (4, 2), (16, 5)),
    ("right_padded", (4, 2), (16, 5)),
    ("left_padded", (4, 2), (8, 8)),
    ("packed", (4, 2), (16, 5)),
    ("causal", (4, 4), (8, 8)),
    ("left_padded", (6, 1), (512, 512)),  # one block: T < block
]


@pytest.mark.parametrize("kind,heads,blocks", CASES)
def test_blockwise_equals_xla_with_gradients(kind, heads, blocks):
    seg = jnp.asarray(_segments(kind))
    valid = (seg != 0)[..., None]
    mask = attn.Mask.causal(seg)
    q, k, v, w = _inputs(*heads)

    def loss(q, k, v, impl):
        out = attn.attention(q, k, v, mask, impl=impl, block_q=blocks[0], block_k=blocks[1])
        return jnp.sum(jnp.where(valid, out * w, 0.0)), out

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (l_x, out_x), g_x = grad(q, k, v, "xla")
    (l_b, out_b), g_b = grad(q, k, v, "blockwise")
    _close(jnp.where(valid, out_b, 0), jnp.where(valid, out_x, 0))
    assert np.all(np.isfinite(np.asarray(out_b))), "padding rows must stay finite"
    _close(l_b, l_x)
    for a, b in zip(g_b, g_x):
        _close(a, b)


def test_blockwise_cached_layout_equals_xla():
    """The sampler's prefill: queries at positions over a cache [B, K, S, H] whose slots
    hold positions (-1 = empty), with slots beyond the queries' positions."""
    s = 48
    q, _, _, _ = _inputs(4, 2)
    ks = jax.random.split(jax.random.key(1), 2)
    kc = jax.random.normal(ks[0], (B, 2, s, H), jnp.float32)
    vc = jax.random.normal(ks[1], (B, 2, s, H), jnp.float32)
    key_pos = np.full((B, s), -1, np.int32)
    key_pos[0, :40] = np.arange(40)
    key_pos[1, :25] = np.arange(25)
    positions = np.stack([np.arange(3, 3 + T), np.arange(-12, T - 12)]).astype(np.int32)
    positions[1, positions[1] < 0] = -1  # padding queries
    mask = attn.Mask.cached(jnp.asarray(positions), jnp.asarray(key_pos))
    got = attn.attention(q, kc, vc, mask, kv_layout="BKSH", impl="blockwise", block_q=8, block_k=16)
    want = attn.attention(q, kc, vc, mask, kv_layout="BKSH", impl="xla")
    real = (positions >= 0)[..., None]
    _close(np.where(real, got, 0), np.where(real, want, 0))


@pytest.mark.parametrize("layout", ["BSKH", "BKSH"])
def test_mask_semantics_match_jax_dot_product_attention(layout):
    """The "cudnn" path's arguments (layout, GQA, mask) through XLA's implementation of the
    same jax.nn call: it must equal ours (cuDNN itself needs a GPU)."""
    seg = jnp.asarray(_segments("packed"))
    q, k, v, _ = _inputs(4, 2)
    if layout == "BKSH":
        k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
    mask = attn.Mask.causal(seg)
    got = attn.dot_product_attention(q, k, v, mask, layout, implementation=None)
    want = attn.attention(q, k, v, mask, kv_layout=layout, impl="xla")
    valid = (seg != 0)[..., None]
    _close(jnp.where(valid, got, 0), jnp.where(valid, want, 0))


def test_resolve():
    assert attn.resolve("auto", "float32", platform="cpu") == "xla"
    assert attn.resolve("auto", "bfloat16", platform="gpu") == "blockwise"
    assert attn.resolve("auto", "float32", platform="gpu") == "blockwise"
    assert attn.resolve("auto", "bfloat16", platform="tpu") == "splash"
    assert attn.resolve("auto", "bfloat16", batch_invariant=True, platform="gpu") == "xla"
    with pytest.raises(ValueError, match="not batch invariant"):
        attn.resolve("blockwise", "float32", batch_invariant=True)
    with pytest.raises(ValueError, match="expected one of"):
        attn.resolve("flash", "float32")


# ----------------------------------------------------------------- inside the model forward


def _models(**overrides):
    from hf_fixtures import tiny_llama_config
    from rlpt_jax.models.decoder import init_model

    cfg = tiny_llama_config(vocab_size=61, qk_norm=True, **overrides)
    # Same seed, same parameters: only the attention implementation differs.
    return (
        init_model(cfg.replace(attention="xla"), seed=3),
        init_model(cfg.replace(attention="blockwise", attention_block=8), seed=3),
    )


def test_model_update_step_logprobs_and_grads_blockwise_equal_xla():
    """Training's log-prob path (the scanned, rematerialised layers) through both
    implementations: per-token log-probs and every parameter's gradient."""
    from flax import nnx

    from rlpt_jax.train.steps import token_logprobs

    seg = jnp.asarray(_segments("packed"))
    tokens = jax.random.randint(jax.random.key(4), (B, T), 0, 61)
    positions = jnp.asarray(np.maximum(np.cumsum(_segments("packed") != 0, axis=1) - 1, 0))

    def loss(model):
        logp, ent = token_logprobs(model, tokens, positions, seg, remat=True, with_entropy=True)
        return logp.sum() + 0.1 * ent.sum(), (logp, ent)

    results = []
    for model in _models():
        (value, aux), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        results.append((value, aux, jax.tree.leaves(nnx.state(grads))))
    (v_x, aux_x, g_x), (v_b, aux_b, g_b) = results
    _close(v_b, v_x)
    for a, b in zip(aux_b, aux_x):
        _close(a, b)
    for a, b in zip(g_b, g_x, strict=True):
        _close(a, b)


def test_sampler_prefill_blockwise_equals_xla():
    """The sampler's cached forward (prefill of 37 tokens into a 64-slot cache, then one
    decode step) through both implementations."""
    tokens = jax.random.randint(jax.random.key(5), (B, T), 0, 61)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    hidden = []
    for model in _models():
        cache = Cache.init(model.cfg, B, 64, jnp.float32)
        h, cache = model.hidden(tokens, positions, cache=cache)
        step = jnp.full((B, 1), 7, jnp.int32)
        h1, _ = model.hidden(
            step, positions[:, -1:] + 1, cache=cache, write_index=jnp.full((B,), T)
        )
        hidden.append((h, h1))
    for a, b in zip(hidden[1], hidden[0]):
        _close(a, b)


def test_update_step_memory_grows_linearly_with_blockwise():
    """XLA's compiled temporaries of the update step (bench/attention_memory.py): ×4 tokens
    costs ~×16 with "xla" (the [T, T] scores) and at most ~×4 with "blockwise". This
    failed (×8.5) while XLA hoisted every tile's mask out of the layer loop."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "attention_memory.py"
    spec = importlib.util.spec_from_file_location("attention_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    xla = [bench.temp_mb("xla", t, 128) for t in (512, 2048)]
    blockwise = [bench.temp_mb("blockwise", t, 128) for t in (512, 2048)]
    assert xla[1] / xla[0] > 10, xla
    assert blockwise[1] / blockwise[0] < 4, blockwise
    assert blockwise[1] < xla[1] / 10, (blockwise, xla)


@pytest.mark.parametrize("kind", ["causal", "left_padded", "packed"])
def test_splash_interpret_equals_xla_with_gradients(kind):
    """Pallas splash attention (TPU's kernel) in interpret mode on CPU, with GQA."""
    seg = jnp.asarray(_segments(kind))
    valid = (seg != 0)[..., None]
    mask = attn.Mask.causal(seg)
    q, k, v, w = _inputs(4, 2)

    def loss(q, k, v, impl):
        out = attn.attention(q, k, v, mask, impl=impl, block_q=16, block_k=16)
        return jnp.sum(jnp.where(valid, out * w, 0.0)), out

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (l_x, out_x), g_x = grad(q, k, v, "xla")
    (l_s, out_s), g_s = grad(q, k, v, "splash")
    _close(jnp.where(valid, out_s, 0), jnp.where(valid, out_x, 0))
    _close(l_s, l_x)
    for a, b in zip(g_s, g_x):
        _close(a, b)


def _tile_any(dense: np.ndarray, bq: int, bk: int) -> np.ndarray:
    """[B, T, S] bool → [B, nq, nk]: whether each tile holds a visible pair."""
    b, t, s = dense.shape
    pad = np.zeros((b, -(-t // bq) * bq, -(-s // bk) * bk), bool)
    pad[:, :t, :s] = dense
    return pad.reshape(b, pad.shape[1] // bq, bq, -1, bk).any(axis=(2, 4))


def _schedule(mask: attn.Mask, bq: int, bk: int):
    """The blockwise kernel's tile schedule of ``mask`` (padded as ``blockwise`` pads)."""
    q_node, k_end = mask.tree_arrays()

    def pad(x, size):
        return np.pad(np.asarray(x), ((0, 0), (0, -x.shape[1] % size)))

    qm = tuple(jnp.asarray(pad(x, bq)) for x in (mask.q_ord, mask.q_seg, q_node))
    km = tuple(jnp.asarray(pad(x, bk)) for x in (mask.k_ord, mask.k_seg, k_end))
    return attn._schedule(qm, km, bq, bk)


def _tree_mask() -> attn.Mask:
    """Two packed trees (``Mask.within_tree``), nodes in pre-order. Row 0: root [0, 8),
    its child A [8, 16), A's child B [16, 24), the root's second child C [24, 37). Row 1:
    root [0, 4) with two leaves, [4, 20) and [20, 37)."""
    node = np.zeros((B, T), np.int32)
    end = np.zeros((B, T), np.int32)
    for row, spans in enumerate(
        [[(0, 8, 3), (8, 16, 2), (16, 24, 2), (24, 37, 3)], [(0, 4, 2), (4, 20, 1), (20, 37, 2)]]
    ):
        for n, (a, b, e) in enumerate(spans):
            node[row, a:b], end[row, a:b] = n, e
    seg = jnp.ones((B, T), jnp.int32)
    return attn.Mask.causal(seg).within_tree(jnp.asarray(node), jnp.asarray(end))


def test_blockwise_equals_xla_on_a_tree_mask_with_gradients():
    mask = _tree_mask()
    q, k, v, w = _inputs(4, 2)

    def loss(q, k, v, impl):
        return jnp.sum(attn.attention(q, k, v, mask, impl=impl, block_q=4, block_k=8) * w)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    (l_x, g_x), (l_b, g_b) = grad(q, k, v, "xla"), grad(q, k, v, "blockwise")
    _close(l_b, l_x)
    for a, b in zip(g_b, g_x):
        _close(a, b)


@pytest.mark.parametrize("kind", ["causal", "right_padded", "left_padded", "packed", "tree"])
def test_tile_schedule_visits_every_visible_tile_and_skips_masked_ones(kind):
    """The blockwise kernel visits only the tiles ``_schedule`` lists: every tile holding a
    visible pair must be listed (or outputs would be wrong), and the causal upper triangle
    and a tree's other branches must not be (or nothing is saved)."""
    bq, bk = 4, 8
    mask = _tree_mask() if kind == "tree" else attn.Mask.causal(jnp.asarray(_segments(kind)))
    (vis, order, count), (vis_t, order_t, count_t) = _schedule(mask, bq, bk)
    vis, needed = np.asarray(vis), _tile_any(np.asarray(mask.dense()), bq, bk)
    assert np.all(vis[needed]), "a tile with a visible pair is not visited"
    np.testing.assert_array_equal(np.asarray(vis_t), vis.transpose(0, 2, 1))
    nq, nk = vis.shape[1:]
    upper = np.arange(nk)[None, :] * bk > np.arange(nq)[:, None] * bq + bq - 1
    assert not vis[:, upper].any(), "a tile above the causal diagonal is visited"
    # each row's visited blocks come first, in ascending order; count = the most of any row
    for b in range(B):
        for i in range(nq):
            listed = np.asarray(order)[i, b, : vis[b, i].sum()]
            np.testing.assert_array_equal(listed, np.nonzero(vis[b, i])[0])
    np.testing.assert_array_equal(np.asarray(count), vis.sum(-1).max(0))
    np.testing.assert_array_equal(np.asarray(count_t), vis.sum(1).max(0))
    if kind == "tree":  # C's queries (row 0, blocks 6-9) skip the tiles of A and B [8, 24)
        assert not vis[0, 6:, 1:3].any()
        assert vis.sum() < (~upper).sum() * B * 0.8
