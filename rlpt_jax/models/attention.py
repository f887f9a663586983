"""Attention: one entry point (``attention``) and the implementations it chooses from.

Shape legend: B batch, T queries, S keys, N query heads, K kv heads, G = N / K, H head dim.

Every implementation computes the same function, softmax(q·kᵀ/√H, masked) · v with grouped
query heads, and takes the mask as a ``Mask`` (four small [B, T] / [B, S] arrays), never
as a [T, S] buffer, so that an implementation that never materialises the scores does not
have to materialise the mask either:

* ``"xla"``: scores [B, K, G, T, S] in float32 (float64 with ``batch_invariant``), then a
  softmax. Memory grows with T·S: at 10k tokens the scores of one layer are 400 MB per head.
* ``"blockwise"``: online softmax in plain JAX. Queries are cut into blocks of
  ``block_q`` (``lax.map``), keys into blocks of ``block_k`` (``lax.scan``), and a running
  max, normaliser and output are carried over key blocks, so the largest temporary is one
  [B, K, G, block_q, block_k] score tile. The backward pass is written out (custom VJP):
  it keeps only the output and the log-normaliser per query and recomputes each score tile,
  so training memory grows linearly in T as well (plain autodiff of the scan would store
  every tile). Works on every backend; results equal ``"xla"`` up to float rounding.
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's fused
  flash attention (GPU, bfloat16/float16 only).
* ``"splash"``: Pallas splash attention (``jax.experimental.pallas.ops.tpu``), TPU's
  flash kernel; tested on CPU in Pallas interpret mode. It expresses only the no-cache
  mask (causal within segments): a cached call (the sampler's prefill) runs blockwise.
* ``"auto"``: ``splash`` on TPU, ``blockwise`` on GPU, ``xla`` on CPU (short CPU runs; and
  the batch-invariant mode needs it). ``cudnn`` is opt-in until ``bench/accelerator.py``
  has measured it on a GPU: its arguments are pinned on CPU through XLA's implementation
  of the same call, but no GPU has run it here.

``batch_invariant`` models use ``"xla"`` only: the blockwise sums depend on the block
grid, which differs between a decode step and a training forward.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

# Masked logits: a large finite negative, so that no row is ever NaN.
NEG = -1e30
IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Mask:
    """Query i may attend to key j iff ``k_seg[j] == q_seg[i] != 0`` and
    ``k_ord[j] <= q_ord[i]``, and in a tree mask also ``k_end[j] >= q_node[i]``.
    q_ord, q_seg, q_node [B, T]; k_ord, k_seg, k_end [B, S]; int32.

    A tree mask (``within_tree``) packs the nodes of a tree into one row in depth-first
    order: ``q_node`` is the pre-order index of the token's node, ``k_end`` the last
    pre-order index in its node's subtree. A key before the query (causal) belongs to an
    ancestor of the query's node, or to that node itself, exactly when the query's node
    lies in the key node's subtree: ``q_node <= k_end``. Tokens of earlier sibling
    subtrees end before the query's node and are masked.
    """

    q_ord: jax.Array
    q_seg: jax.Array
    k_ord: jax.Array
    k_seg: jax.Array
    q_node: jax.Array | None = None
    k_end: jax.Array | None = None
    # Built by ``causal``: ord = index, queries = keys (what splash attention can express).
    by_index: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @classmethod
    def causal(cls, segment_ids: jax.Array) -> Mask:
        """No cache: causal by index within a segment; segment 0 is padding."""
        b, t = segment_ids.shape
        idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        seg = segment_ids.astype(jnp.int32)
        return cls(q_ord=idx, q_seg=seg, k_ord=idx, k_seg=seg, by_index=True)

    @classmethod
    def cached(cls, positions: jax.Array, key_pos: jax.Array) -> Mask:
        """A cache whose slots hold ``key_pos`` [B, S] (-1 = empty): a query at position p
        reads the filled slots at positions <= p (a padding query, p = -1, reads none)."""
        filled = (key_pos >= 0).astype(jnp.int32)
        return cls(
            q_ord=positions.astype(jnp.int32),
            q_seg=jnp.ones(positions.shape, jnp.int32),
            k_ord=key_pos.astype(jnp.int32),
            k_seg=filled,
        )

    def within_tree(self, node: jax.Array, end: jax.Array) -> Mask:
        """This no-cache mask restricted to a packed tree's ancestor paths: ``node``,
        ``end`` [B, T] the pre-order index of each token's node and the last one of its
        subtree (class docstring)."""
        return dataclasses.replace(
            self, q_node=node.astype(jnp.int32), k_end=end.astype(jnp.int32), by_index=False
        )

    def tree_arrays(self) -> tuple[jax.Array, jax.Array]:
        """(q_node, k_end); for a mask without a tree, zeros, under which ``k_end >=
        q_node`` always holds (the blockwise kernel always takes both)."""
        if self.q_node is None:
            return jnp.zeros_like(self.q_ord), jnp.zeros_like(self.k_ord)
        return self.q_node, self.k_end

    def dense(self) -> jax.Array:
        """[B, T, S] bool."""
        return _allowed(self.q_ord, self.q_seg, self.k_ord, self.k_seg, self.q_node, self.k_end)


def _allowed(q_ord, q_seg, k_ord, k_seg, q_node=None, k_end=None):
    ks, ko = k_seg[:, None, :], k_ord[:, None, :]
    allowed = (ks == q_seg[:, :, None]) & (ks != 0) & (ko <= q_ord[:, :, None])
    if q_node is not None:
        allowed &= k_end[:, None, :] >= q_node[:, :, None]
    return allowed


def resolve(impl: str, dtype: str, batch_invariant: bool = False, platform: str | None = None):
    """The implementation ``impl`` stands for on ``platform`` (default: JAX's backend)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention={impl!r}; expected one of {list(IMPLEMENTATIONS)}")
    if batch_invariant and impl not in ("auto", "xla"):
        raise ValueError(
            f"attention={impl!r} is not batch invariant (its sums follow the block grid); "
            "use attention='xla' (or 'auto') with batch_invariant=True"
        )
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    del dtype  # cudnn (16-bit only) joins "auto" once measured on a GPU
    if batch_invariant or platform == "cpu":
        return "xla"
    return "splash" if platform == "tpu" else "blockwise"


def attention(
    q: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    mask: Mask,
    *,
    kv_layout: str = "BSKH",
    impl: str = "xla",
    batch_invariant: bool = False,
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
    """softmax(q · keysᵀ / √H, masked) · values → [B, T, N·H] in q's dtype.

    q [B, T, N, H]; keys, values [B, S, K, H] (``kv_layout="BSKH"``, a training forward) or
    [B, K, S, H] (``"BKSH"``, the sampler's cache). ``impl``: a resolved implementation
    (``resolve``), not ``"auto"``.
    """
    b, t, n, h = q.shape
    kk = keys.shape[2] if kv_layout == "BSKH" else keys.shape[1]
    g = n // kk
    if impl == "xla":
        return _xla(q.reshape(b, t, kk, g, h), keys, values, mask, kv_layout, batch_invariant)
    if batch_invariant:
        raise ValueError(f"attention={impl!r} with batch_invariant; see attention.resolve")
    if impl == "blockwise":
        qg = q.reshape(b, t, kk, g, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
        if kv_layout == "BSKH":
            keys, values = keys.swapaxes(1, 2), values.swapaxes(1, 2)
        out = blockwise(qg, keys, values, mask, block_q=block_q, block_k=block_k)
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n * h)
    if impl == "splash" and mask.by_index:
        if kv_layout == "BKSH":
            keys, values = keys.swapaxes(1, 2), values.swapaxes(1, 2)
        return splash(q, keys, values, mask.q_seg, block=block_q)
    if impl == "splash":  # a cache (the sampler's prefill) or a tree: splash's masks are static
        return attention(
            q,
            keys,
            values,
            mask,
            kv_layout=kv_layout,
            impl="blockwise",
            block_q=block_q,
            block_k=block_k,
        )
    if impl == "cudnn":
        return dot_product_attention(q, keys, values, mask, kv_layout, "cudnn")
    raise ValueError(f"attention={impl!r}; expected one of {list(IMPLEMENTATIONS[1:])}")


def for_model(cfg, q, keys, values, mask: Mask, kv_layout: str) -> jax.Array:
    """``attention`` with the implementation, numerics and block size of a ``ModelConfig``
    (the call both the model's and the sampler's forwards make)."""
    return attention(
        q,
        keys,
        values,
        mask,
        kv_layout=kv_layout,
        impl=cfg.attention_impl,
        batch_invariant=cfg.batch_invariant,
        block_q=cfg.attention_block,
        block_k=cfg.attention_block,
    )


def dot_product_attention(q, keys, values, mask, kv_layout="BSKH", implementation=None):
    """Through ``jax.nn.dot_product_attention`` (``implementation="cudnn"``: cuDNN's fused
    kernel; None: XLA's, which tests use to pin the layout and mask on CPU)."""
    b, t, n, h = q.shape
    if kv_layout == "BKSH":
        keys, values = keys.swapaxes(1, 2), values.swapaxes(1, 2)
    out = jax.nn.dot_product_attention(
        q,
        keys.astype(q.dtype),
        values.astype(q.dtype),
        mask=mask.dense()[:, None],
        implementation=implementation,
    )
    return out.reshape(b, t, n * h)


def splash(q, keys, values, segment_ids, *, block: int = 512, interpret: bool | None = None):
    """Pallas splash attention (TPU; ``interpret`` mode elsewhere, e.g. tests on CPU).

    q [B, T, N, H]; keys, values [B, T, K, H]; causal by index within ``segment_ids``
    [B, T]. One kernel per kv head group (splash's multi-query form), mapped over batch
    and kv heads. T is padded to a whole block (a multiple of 128) with segment 0; the
    padding is cut from the output.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    b, t, n, h = q.shape
    kk = keys.shape[2]
    g = n // kk
    bs = -(-min(block, t) // 128) * 128  # splash blocks are whole multiples of 128 lanes
    tp = -(-t // bs) * bs
    pad = ((0, 0), (0, tp - t))
    seg = jnp.pad(segment_ids.astype(jnp.int32), pad)
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    sizes = sk.BlockSizes(
        block_q=bs,
        block_kv=bs,
        block_kv_compute=bs,
        block_q_dkv=bs,
        block_kv_dkv=bs,
        block_kv_dkv_compute=bs,
        block_q_dq=bs,
        block_kv_dq=bs,
    )
    heads = sm.MultiHeadMask([sm.CausalMask((tp, tp)) for _ in range(g)])
    kernel = sk.make_splash_mqa_single_device(heads, block_sizes=sizes, interpret=interpret)
    qh = jnp.pad(q * (1.0 / math.sqrt(h)), (*pad, (0, 0), (0, 0)))
    qh = qh.reshape(b, tp, kk, g, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kh = jnp.pad(keys.astype(q.dtype), (*pad, (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    vh = jnp.pad(values.astype(q.dtype), (*pad, (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    def one(qi, ki, vi, si):  # qi [G, T, H], ki, vi [T, H], si [T]
        return kernel(qi, ki, vi, segment_ids=sk.SegmentIds(q=si, kv=si))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over kv heads
    out = jax.vmap(per_head)(qh, kh, vh, seg)  # [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4)[:, :t].reshape(b, t, n * h)


def _xla(qg, keys, values, mask, kv_layout, batch_invariant):
    b, t, kk, g, h = qg.shape
    if kv_layout == "BSKH":
        eqs = ("BTKGH,BSKH->BKGTS", "BKGTS,BSKH->BTKGH")
    elif t == 1:
        # A decode step drops the T axis from both products: with it, XLA:CPU transposes
        # around each of the [B·K] tiny dots; without it, it fuses them into multiply-
        # reduce loops that stream the cache once (SmolLM2-135M, batch 16, S=256: 40 ms per
        # decode step against 59 ms).
        qg = qg.reshape(b, kk, g, h)
        eqs = ("BKGH,BKSH->BKGS", "BKGS,BKSH->BKGH")
    else:
        eqs = ("BTKGH,BKSH->BKGTS", "BKGTS,BKSH->BTKGH")
    allowed = mask.dense()
    if t == 1 and kv_layout != "BSKH":
        allowed = allowed[:, 0]
    out = _dense(qg, keys.astype(qg.dtype), values.astype(qg.dtype), allowed, *eqs, batch_invariant)
    return out.reshape(b, t, kk * g * h)


def _dense(qg, keys, values, allowed, scores_eq, out_eq, batch_invariant):
    """Scores and softmax in float32 (float64 with ``batch_invariant``)."""
    from rlpt_jax.models.numerics import in_float64  # the one float64 helper

    def core(qg, keys, values, allowed, wide=False):
        if wide:  # float32 in, exact float64 products and sums out (no float64 copy of keys)
            scores = jnp.einsum(scores_eq, qg, keys, preferred_element_type=jnp.float64)
        else:
            scores = jnp.einsum(scores_eq, qg, keys).astype(jnp.float32)
        scores = scores * (1.0 / math.sqrt(qg.shape[-1]))
        logits = jnp.where(jnp.expand_dims(allowed, (1, 2)), scores, NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
        return jnp.einsum(out_eq, probs, values)

    if batch_invariant:
        wide = functools.partial(core, wide=True)
        return in_float64(wide, qg, keys, values, allowed, keep=(0, 1))
    return core(qg, keys, values, allowed)


# ----------------------------------------------------------------------------- blockwise


def blockwise(q, k, v, mask: Mask, *, block_q: int = 512, block_k: int = 512) -> jax.Array:
    """Online-softmax attention. q [B, K, G, T, H]; k, v [B, K, S, H] → [B, K, G, T, H].

    T and S are padded to whole blocks; padded keys get segment 0 (never attended), padded
    queries segment 0 (attend to nothing; cut from the output). A query that may attend to
    nothing (padding) gets a finite, meaningless output, as with ``"xla"``.
    """
    t, s = q.shape[3], k.shape[2]
    bq, bk = min(block_q, t), min(block_k, s)
    q_node, k_end = mask.tree_arrays()

    def pad(x, axis, size):
        extra = -x.shape[axis] % size
        if not extra:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths)

    out = _flash(
        pad(q, 3, bq),
        pad(k, 2, bk),
        pad(v, 2, bk),
        (pad(mask.q_ord, 1, bq), pad(mask.q_seg, 1, bq), pad(q_node, 1, bq)),
        (pad(mask.k_ord, 1, bk), pad(mask.k_seg, 1, bk), pad(k_end, 1, bk)),
        bq,
        bk,
    )
    return out[:, :, :, :t]


def _q_blocks(x, axis, size):
    """Split ``axis`` of x into blocks of ``size`` and move the block index to the front."""
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _from_blocks(x, axis):
    """Inverse of ``_q_blocks``: x [n, ...] with the blocks back at ``axis``."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])


def _tile_scores(qi, kj, qm, km, valid):
    """Scaled, masked float32 scores of one tile: qi [B, K, G, bq, H], kj [B, K, bk, H]
    → [B, K, G, bq, bk]; qm, km: the tile's (ord, seg, node) and (ord, seg, end); valid
    [B]: False masks the whole tile (a schedule's padding entry, see ``_schedule``)."""
    sc = jnp.einsum("bkgqh,bksh->bkgqs", qi, kj, preferred_element_type=jnp.float32)
    sc = sc * (1.0 / math.sqrt(qi.shape[-1]))
    # The mask of a tile is the same in every layer: without the barrier XLA hoists it out
    # of the layer loop and precomputes every tile's mask, one [T, T] buffer after all.
    sc, qm, km = jax.lax.optimization_barrier((sc, qm, km))
    (qo, qs, qn), (ko, ks, ke) = qm, km
    allowed = _allowed(qo, qs, ko, ks, qn, ke) & valid[:, None, None]
    return jnp.where(allowed[:, None, None], sc, NEG)


_BIG = jnp.iinfo(jnp.int32).max


def _schedule(qm, km, bq, bk):
    """Which tiles can hold a visible (query, key) pair, so that the loops visit only those.

    From per-tile bounds over the tiles' real tokens (segment != 0): tile (i, j) is
    visited iff some key of j may precede some query of i in order (min k_ord <= max
    q_ord), the segment ranges overlap, and some key's subtree may contain some query's
    node (max k_end >= min q_node). Each bound is necessary for a visible pair, so a
    skipped tile is fully masked and skipping it changes nothing: not even rounding, since
    a fully masked tile adds exact zeros once a row has met a visible key. This is what
    makes attention cost follow the mask: half the tiles of a causal row, the tiles of
    each token's ancestor path in a packed tree, the filled part of a cache.

    Returns (vis [B, nq, nk] bool, order [nq, B, nk] int32: per row the visible key
    blocks first, ascending, then the others; count [nq] int32: the most visible key
    blocks of any row), and the same three with queries and keys swapped, for the
    backward pass's key-block loop.
    """

    def bounds(m, size):
        o, s, e = (x.reshape(x.shape[0], -1, size) for x in m)
        real = s != 0
        lo = lambda x: jnp.min(jnp.where(real, x, _BIG), -1)  # noqa: E731
        hi = lambda x: jnp.max(jnp.where(real, x, -_BIG), -1)  # noqa: E731
        return lo(o), hi(o), lo(s), hi(s), lo(e), hi(e)

    qo_lo, qo_hi, qs_lo, qs_hi, qn_lo, _ = bounds(qm, bq)
    ko_lo, _, ks_lo, ks_hi, _, ke_hi = bounds(km, bk)
    q, k = (lambda x: x[:, :, None]), (lambda x: x[:, None, :])
    vis = (k(ko_lo) <= q(qo_hi)) & (k(ks_lo) <= q(qs_hi)) & (k(ks_hi) >= q(qs_lo))
    vis &= k(ke_hi) >= q(qn_lo)

    def ordered(v):  # v [B, n, m] → (order [n, B, m], count [n])
        order = jnp.argsort(~v, axis=-1, stable=True).astype(jnp.int32)
        return order.transpose(1, 0, 2), v.sum(-1).max(0).astype(jnp.int32)

    vis_t = vis.transpose(0, 2, 1)
    return (vis, *ordered(vis)), (vis_t, *ordered(vis_t))


def _visit(count, order, vis_row, blocks, body, init):
    """``init`` carried through ``body(carry, tiles, valid)`` over the first ``count``
    scheduled blocks of one block row: ``order`` [B, m], ``vis_row`` [B, m], ``blocks`` a
    pytree of [m, B, ...] arrays from which each row takes its own scheduled block. A
    dynamic trip count (a while loop; the custom VJP never differentiates through it)."""
    rows = jnp.arange(order.shape[0])

    def step(n, carry):
        idx = order[:, n]
        tiles = jax.tree.map(lambda x: x[idx, rows], blocks)
        return body(carry, tiles, vis_row[rows, idx])

    return jax.lax.fori_loop(0, count, step, init)


def _kv_tiles(k, v, km, bk):
    return _q_blocks(k, 2, bk), _q_blocks(v, 2, bk), tuple(_q_blocks(x, 1, bk) for x in km)


def _q_mask_blocks(qm, bq):
    return tuple(_q_blocks(x, 1, bq) for x in qm)


def _forward(q, k, v, qm, km, bq, bk):
    """(output [B, K, G, T, H] in q's dtype, log-normaliser [B, K, G, T] float32)."""
    b, kk, g, _, h = q.shape
    kv = _kv_tiles(k, v, km, bk)
    (vis, order, count), _ = _schedule(qm, km, bq, bk)

    def one_block(args):
        qi, qmi, order_i, vis_i, count_i = args

        def step(carry, tile, valid):
            m, norm, acc = carry
            kj, vj, kmj = tile
            sc = _tile_scores(qi, kj, qmi, kmj, valid)
            m_new = jnp.maximum(m, sc.max(-1))
            p = jnp.exp(sc - m_new[..., None])
            scale = jnp.exp(m - m_new)
            norm = norm * scale + p.sum(-1)
            pv = jnp.einsum(
                "bkgqs,bksh->bkgqh", p.astype(v.dtype), vj, preferred_element_type=jnp.float32
            )
            return m_new, norm, acc * scale[..., None] + pv

        init = (
            jnp.full((b, kk, g, bq), NEG, jnp.float32),
            jnp.zeros((b, kk, g, bq), jnp.float32),
            jnp.zeros((b, kk, g, bq, h), jnp.float32),
        )
        m, norm, acc = _visit(count_i, order_i, vis_i, kv, step, init)
        # A row with a visible key: norm >= 1 (the tile holding its maximum adds exp(0)).
        # A row without one (padding) visited only masked tiles, or none: keep it finite.
        norm = jnp.maximum(norm, 1e-30)
        return (acc / norm[..., None]).astype(q.dtype), m + jnp.log(norm)

    xs = (_q_blocks(q, 3, bq), _q_mask_blocks(qm, bq), order, vis.transpose(1, 0, 2), count)
    out, lse = jax.lax.map(one_block, xs)
    return _from_blocks(out, 3), _from_blocks(lse, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, qm, km, bq, bk):
    return _forward(q, k, v, qm, km, bq, bk)[0]


def _flash_fwd(q, k, v, qm, km, bq, bk):
    out, lse = _forward(q, k, v, qm, km, bq, bk)
    return out, (q, k, v, qm, km, out, lse)


def _flash_bwd(bq, bk, res, dout):
    """Flash attention's backward: with P = exp(S − lse) recomputed per tile and
    D = rowsum(dO ⊙ O), dV = Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − D), dQ = dS·K/√H, dK = dSᵀ·Q/√H.
    Two passes, each visiting the other side's scheduled tiles (``_schedule``): dQ (map
    over query blocks, loop over their key tiles), then dK, dV (map over key blocks, loop
    over their query tiles)."""
    q, k, v, qm, km, out, lse = res
    scale = 1.0 / math.sqrt(q.shape[-1])
    do = dout.astype(jnp.float32)
    d = jnp.sum(do * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]
    q_side = tuple(_q_blocks(x, 3, bq) for x in (q, do, lse[..., None], d[..., None])) + (
        _q_mask_blocks(qm, bq),
    )
    kv = _kv_tiles(k, v, km, bk)
    (vis, order, count), (vis_t, order_t, count_t) = _schedule(qm, km, bq, bk)

    def grads(qi, doi, lsei, di, qmi, kj, vj, kmj, valid):
        p = jnp.exp(_tile_scores(qi, kj, qmi, kmj, valid) - lsei)  # [B, K, G, bq, bk]
        # A padding query's lse is about NEG, so a masked score need not give p = 0 there.
        p = jnp.where(valid[:, None, None, None, None], p, 0.0)
        dp = jnp.einsum("bkgqh,bksh->bkgqs", doi, vj, preferred_element_type=jnp.float32)
        return p, p * (dp - di)

    def dq_block(args):
        (qi, doi, lsei, di, qmi), order_i, vis_i, count_i = args

        def step(dq, tile, valid):
            kj, vj, kmj = tile
            _, ds = grads(qi, doi, lsei, di, qmi, kj, vj, kmj, valid)
            return dq + jnp.einsum("bkgqs,bksh->bkgqh", ds, kj.astype(jnp.float32))

        dq = _visit(count_i, order_i, vis_i, kv, step, jnp.zeros(qi.shape, jnp.float32))
        return dq * scale

    def dkv_block(args):
        (kj, vj, kmj), order_j, vis_j, count_j = args

        def step(carry, tile, valid):
            dk, dv = carry
            qi, doi, lsei, di, qmi = tile
            p, ds = grads(qi, doi, lsei, di, qmi, kj, vj, kmj, valid)
            dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p, doi)
            dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds, qi.astype(jnp.float32))
            return dk, dv

        zeros = jnp.zeros(kj.shape, jnp.float32)
        dk, dv = _visit(count_j, order_j, vis_j, q_side, step, (zeros, zeros))
        return dk * scale, dv

    dq = jax.lax.map(dq_block, (q_side, order, vis.transpose(1, 0, 2), count))
    dk, dv = jax.lax.map(dkv_block, (kv, order_t, vis_t.transpose(1, 0, 2), count_t))
    dq, dk, dv = _from_blocks(dq, 3), _from_blocks(dk, 2), _from_blocks(dv, 2)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
