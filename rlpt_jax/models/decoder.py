"""One decoder-only transformer in Flax NNX for Llama 3, SmolLM2, Qwen2/2.5 and Qwen3.

Shape legend: B batch, T query length, S key/cache length, D model width, F MLP width,
N query heads, K kv heads, G = N / K query heads per kv head, H head dim, V vocab,
L layers.

Family differences are flags of ``ModelConfig``: Qwen2 adds q/k/v biases, Qwen3 an RMSNorm
per head on q and k before RoPE, Llama 3 rescales RoPE frequencies ("llama3"), SmolLM2
ties the output head to the embedding.

Attention masking is position based, which makes one code path serve training, prefill,
decode and forked branches:
* without a cache, query i attends to key j iff ``segment[j] == segment[i] != 0`` and
  ``j <= i`` (segment ids come from an attention mask or packing);
* with a cache, every cache slot remembers the position of the token written there
  (``-1`` = empty), and a query at position p attends to slots with ``0 <= pos <= p``.
  A padding query (position -1) writes an empty slot and its output is garbage that the
  caller ignores. Masked logits use a large finite negative so no row is ever NaN.

Layers. A model holds the L layers as one ``Block`` with stacked [L, ...] parameters
(``stacked_blocks``), the layout of checkpoints, and runs them with ``lax.scan``: nothing
is stacked per step, and a rematerialised scan keeps only each layer's input (a
Python-loop remat saves nothing on XLA:CPU, which merges the recomputation back into the
forward pass). Without remat, training holds them as a list of blocks (``unstacked``;
``rlpt_jax.train.state.with_layers``) and runs one layer at a time: a scan, or a loop over
slices, of stacked weights copies every layer's weights for the backward pass and
concatenates their gradients back (SmolLM2-135M, 8x256 tokens: +441 MB of XLA
temporaries). A cached forward
(prefill, decode) runs the same layer body one layer at a time over per-layer weights and
per-layer cache arrays: the sampler holds its copy of the weights unstacked
(``unstacked``, via ``rlpt_jax.sampling.engine.sampler_weights``), because on XLA:CPU a
slice of stacked weights is a copy and a cache carried through a scan is copied too, which
a decode step cannot afford (SmolLM2-135M, 2-core Xeon: ~30% fewer tokens/s at batch 1,
~10% at batch 16, measured while writing this).

Batch invariance (``ModelConfig.batch_invariant``). On XLA:CPU, float32 results depend on
the shapes an op runs at: a matmul of a few rows (a decode step) sums over the contracted
axis in another order than one of many rows (a training forward), and so do reductions
and elementwise kernels (RMSNorm, softmax, cos/sin) at different lengths. The differences
are last-bit roundings, but 30 layers compound them to ~1e-5 in a token's log-prob. With
``batch_invariant`` the model's numerics policy (``Decoder.numerics``, a
``rlpt_jax.models.numerics.Numerics``) removes each source:
* matmuls contract weights stored [out, in] (``x · Wᵀ``). XLA:CPU's packed matmul kernel
  then sums in the same order at every row count >= 2 (found by measurement on this
  jaxlib; ``bench/rounding_probe.py`` re-checks it). The training forward transposes the
  weights inside the step (one extra copy of the weights per step); the sampler keeps a
  transposed copy (``rlpt_jax.sampling.engine.sampler_weights``) and never decodes fewer
  than 2 rows;
* RMSNorm's normalisation, RoPE's rotation and attention (scores, softmax, weighted sum)
  run in float64 (``in_float64``) and are rounded once to float32: float64 sums of float32
  products are exact enough that the order of summation no longer shows after rounding.
Everything else is elementwise with one rounding per op and therefore already invariant.
The result: the sampler's log-probs equal the training forward's bit for bit (float32,
XLA:CPU; ``tests/test_sampler_smollm2.py``). Elsewhere (GPU, TPU) the float64 parts still
remove the reduction-order dependence, but matmul order is up to the backend's kernels.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlpt_jax.models import attention
from rlpt_jax.models.config import ModelConfig
from rlpt_jax.models.numerics import FAST, Numerics


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cache:
    """The KV cache, passed into and returned from the model.

    k, v: one [B, K, S, H] array per layer, in the cache dtype (kv heads before slots, so
    that both attention products read a layer's cache without a transpose; one array per
    layer, so that a layer's write is an in-place scatter into its own buffer); pos: [B, S]
    int32 position of the token in each slot, -1 where empty. Forking a prefix into branches
    is a gather along B.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    pos: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> Cache:
        shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
            pos=jnp.full((batch, length), -1, jnp.int32),
        )

    @staticmethod
    def nbytes(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> int:
        per = cfg.num_layers * batch * length * cfg.num_kv_heads * cfg.head_dim
        return 2 * per * jnp.dtype(dtype).itemsize + batch * length * 4

    def take(self, rows: jax.Array) -> Cache:
        """Rows ``rows`` of the cache (fork: the same row repeated)."""
        return Cache(
            k=tuple(x[rows] for x in self.k), v=tuple(x[rows] for x in self.v), pos=self.pos[rows]
        )

    def put(self, rows: jax.Array, sub: Cache) -> Cache:
        """Rows ``rows`` replaced by ``sub``; out-of-range row indices are dropped."""
        return Cache(
            k=tuple(x.at[rows].set(s, mode="drop") for x, s in zip(self.k, sub.k, strict=True)),
            v=tuple(x.at[rows].set(s, mode="drop") for x, s in zip(self.v, sub.v, strict=True)),
            pos=self.pos.at[rows].set(sub.pos, mode="drop"),
        )


def _param(init, rngs: nnx.Rngs, shape, dtype, axes: tuple[str | None, ...]) -> nnx.Param:
    assert len(axes) == len(shape), (axes, shape)
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x²) + eps) · w, normalised in float32 (as Hugging Face does), by the
    model's numerics (batch-invariant: in float64, rounded once to float32)."""

    def __init__(self, dim: int, eps: float, param_dtype, *, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = _param(nnx.initializers.ones, rngs, (dim,), param_dtype, ("norm",))

    def __call__(self, x: jax.Array, numerics: Numerics) -> jax.Array:
        y = numerics.normalize(x.astype(jnp.float32), self.eps)
        return (self.weight[...].astype(jnp.float32) * y.astype(x.dtype)).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
    """RoPE inverse frequencies [H/2], with Llama 3 frequency-band rescaling if configured."""
    h = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    sc = cfg.rope_scaling_dict
    if sc is None or sc.get("rope_type", sc.get("type")) != "llama3":
        return inv
    factor = float(sc["factor"])
    low, high = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
    old_len = float(sc["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old_len / low, old_len / high
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(
    x: jax.Array, positions: jax.Array, inv_freq: jax.Array, numerics: Numerics = FAST
) -> jax.Array:
    """Rotate-half RoPE. x: [B, T, *, H]; positions: [B, T]. The angles are float32 products
    (as Hugging Face forms them); the rotation is the numerics' (batch-invariant: cos, sin and
    the rotation in float64 on those angles)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return numerics.rotate(x.astype(jnp.float32), emb).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = _dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.cfg = cfg
        self.q_proj = _param(init, rngs, (d, n, h), pd, ("embed", "q_heads", "head_dim"))
        self.k_proj = _param(init, rngs, (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.v_proj = _param(init, rngs, (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.o_proj = _param(init, rngs, (n, h, d), pd, ("q_heads", "head_dim", "embed"))
        zeros = nnx.initializers.zeros
        if cfg.qkv_bias:
            self.q_bias = _param(zeros, rngs, (n, h), pd, ("q_heads", "head_dim"))
            self.k_bias = _param(zeros, rngs, (k, h), pd, ("kv_heads", "head_dim"))
            self.v_bias = _param(zeros, rngs, (k, h), pd, ("kv_heads", "head_dim"))
        if cfg.o_bias:
            self.o_bias = _param(zeros, rngs, (d,), pd, ("embed",))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps, pd, rngs=rngs)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps, pd, rngs=rngs)

    def __call__(self, x, positions, inv_freq, mask, cache: LayerCache | None, numerics):
        """x [B, T, D] → ([B, T, D], the cache with this layer's k and v written)."""
        cfg = self.cfg
        dt = x.dtype
        n, kk, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = numerics.project(x, self.q_proj[...], (n, h))  # [B, T, N, H]
        k = numerics.project(x, self.k_proj[...], (kk, h))  # [B, T, K, H]
        v = numerics.project(x, self.v_proj[...], (kk, h))
        if cfg.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if cfg.qk_norm:
            q, k = self.q_norm(q, numerics), self.k_norm(k, numerics)
        q = apply_rope(q, positions, inv_freq, numerics)
        k = apply_rope(k, positions, inv_freq, numerics)

        if cache is None:
            out = attention.for_model(cfg, q, k, v, mask, "BSKH")
        else:
            cache = cache.write(k, v)
            w = mask.k_ord.shape[-1]  # the window of slots this call reads
            keys, values = cache.read(w)
            out = attention.for_model(cfg, q, keys.astype(dt), values.astype(dt), mask, "BKSH")
        o = self.o_proj[...]
        y = numerics.project(out, o if numerics.transposed else o.reshape(n * h, -1))
        if cfg.o_bias:
            y = y + self.o_bias[...].astype(dt)
        return y, cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCache:
    """One layer's part of a ``Cache``: its k and v [B, K, S, H] and the slots [B, T] that
    the call's tokens go to."""

    k: jax.Array
    v: jax.Array
    slots: jax.Array

    def write(self, k: jax.Array, v: jax.Array) -> LayerCache:
        """k, v [B, T, K, H] into the slots; slots past the end are dropped (a clamped
        write would silently overwrite earlier tokens)."""
        rows = jnp.arange(k.shape[0])[:, None]
        # [B, T] index pairs around the K slice put the [B, T] dims first: [B, T, K, H].
        s = self.slots
        return dataclasses.replace(
            self,
            k=self.k.at[rows, :, s].set(k.astype(self.k.dtype), mode="drop"),
            v=self.v.at[rows, :, s].set(v.astype(self.v.dtype), mode="drop"),
        )

    def read(self, window: int) -> tuple[jax.Array, jax.Array]:
        """Keys and values of the first ``window`` slots, [B, K, window, H]."""
        return self.k[:, :, :window], self.v[:, :, :window]


class MLP(nnx.Module):
    """SwiGLU: down(silu(x·gate) ⊙ (x·up))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        pd = _dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.gate_proj = _param(init, rngs, (d, f), pd, ("embed", "mlp"))
        self.up_proj = _param(init, rngs, (d, f), pd, ("embed", "mlp"))
        self.down_proj = _param(init, rngs, (f, d), pd, ("mlp", "embed"))

    def __call__(self, x, numerics: Numerics):
        dt = x.dtype
        if numerics.batch_invariant:
            g = numerics.project(x, self.gate_proj[...])
            u = numerics.project(x, self.up_proj[...])
            return numerics.project(jax.nn.silu(g) * u, self.down_proj[...])
        return swiglu(
            x,
            self.gate_proj[...].astype(dt),
            self.up_proj[...].astype(dt),
            self.down_proj[...].astype(dt),
        )


def _swiglu_forward(x, w_gate, w_up, w_down):
    g = jnp.einsum("BTD,DF->BTF", x, w_gate)
    u = jnp.einsum("BTD,DF->BTF", x, w_up)
    return jnp.einsum("BTF,FD->BTD", jax.nn.silu(g) * u, w_down), (g, u)


@jax.custom_vjp
def swiglu(x, w_gate, w_up, w_down):
    """down(silu(x·gate) ⊙ (x·up)); x [B, T, D]. The same values as the plain expression;
    the backward pass is written out (below) because XLA:CPU fuses the autodiff one's
    elementwise work with transposes of [B·T, F] arrays and runs it ~1.5x slower."""
    return _swiglu_forward(x, w_gate, w_up, w_down)[0]


def _swiglu_fwd(x, w_gate, w_up, w_down):
    y, (g, u) = _swiglu_forward(x, w_gate, w_up, w_down)
    return y, (x, g, u, w_gate, w_up, w_down)


def _swiglu_bwd(res, dy):
    x, g, u, w_gate, w_up, w_down = res
    sig = jax.nn.sigmoid(g)
    silu = g * sig
    da = jnp.einsum("BTD,FD->BTF", dy, w_down)
    dg = da * u * (sig * (1 + g * (1 - sig)))  # silu'(g) = σ(g)(1 + g(1 − σ(g)))
    du = da * silu
    dx = jnp.einsum("BTF,DF->BTD", dg, w_gate) + jnp.einsum("BTF,DF->BTD", du, w_up)
    return (
        dx,
        jnp.einsum("BTD,BTF->DF", x, dg),
        jnp.einsum("BTD,BTF->DF", x, du),
        jnp.einsum("BTF,BTD->FD", silu * u, dy),
    )


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = _dtype(cfg.param_dtype)
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(d, eps, pd, rngs=rngs)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(d, eps, pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, inv_freq, mask, cache, numerics: Numerics):
        h = self.input_layernorm(x, numerics)
        a, cache = self.self_attn(h, positions, inv_freq, mask, cache, numerics)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x, numerics), numerics)
        return x, cache


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """One ``Block`` whose every parameter has a leading [L] axis (logical axis "layers"),
    the layers initialised one after another from ``rngs``."""
    return stacked(nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)]))


def stacked(layers: Block | nnx.List) -> Block:
    """The inverse of ``unstacked``: a list of L blocks as one ``Block`` whose parameters
    are the blocks' stacked along a new leading [L] axis (logical axis "layers"); a stacked
    ``Block`` is returned as is."""
    if not isinstance(layers, nnx.List):
        return layers
    blocks = list(layers)
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(b) for b in blocks))
    flat = [
        (path, var.replace(logical_axes=("layers", *var.get_metadata()["logical_axes"])))
        for path, var in nnx.to_flat_state(state)
    ]
    return nnx.merge(nnx.graphdef(blocks[0]), nnx.from_flat_state(flat))


def unstacked(layers: Block | nnx.List) -> nnx.List:
    """``Decoder.layers`` as a list of L blocks with their own arrays (a list is returned as
    is): the stacked parameters sliced along [L], "layers" dropped from their logical axes."""
    if isinstance(layers, nnx.List):
        return layers
    graphdef, state = nnx.split(layers)
    flat = nnx.to_flat_state(state)
    n = flat[0][1].get_value().shape[0]

    def one(i):
        return nnx.from_flat_state(
            [
                (path, var.replace(var.get_value()[i], logical_axes=var.logical_axes[1:]))
                for path, var in flat
            ]
        )

    return nnx.List([nnx.merge(graphdef, one(i)) for i in range(n)])


class Decoder(nnx.Module):
    """The language model. ``__call__`` returns (logits [B, T, V] float32, cache or None).

    Training, scoring, prefill and decode all go through ``hidden`` (module docstring,
    "Layers"). ``numerics``: the policy every op that rounds goes through
    (``rlpt_jax.models.numerics``), chosen here from the config; the sampler's copy of a
    batch-invariant model has ``transposed`` set (``engine.sampler_weights``).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.numerics = Numerics.of(cfg)
        pd = _dtype(cfg.param_dtype)
        self.embed_tokens = _param(
            nnx.initializers.normal(0.02),
            rngs,
            (cfg.vocab_size, cfg.hidden_size),
            pd,
            ("vocab", "embed"),
        )
        self.layers = stacked_blocks(cfg, rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(
                nnx.initializers.normal(0.02),
                rngs,
                (cfg.hidden_size, cfg.vocab_size),
                pd,
                ("embed", "vocab"),
            )

    def hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        cache: Cache | None = None,
        write_index: jax.Array | None = None,
        window: int | None = None,
        remat: bool = False,
        tree: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        """Final-norm hidden states [B, T, D] (compute dtype) and the updated cache.

        tokens, positions: [B, T] int. Without a cache, ``segment_ids`` [B, T] (0 = padding;
        default all ones) restricts attention to the same segment, causally. With a cache,
        the T tokens are written at per-row slots ``write_index .. write_index+T`` ([B];
        default 0; slots past the end are dropped) and attend to every filled slot whose
        position is not later than theirs; ``window``: read only the first ``window`` slots
        (None: all), enough when every query's position is below it (slot = position in the
        sampler). ``remat``: recompute each layer in the backward pass; inside the scan only
        the layer inputs [L, B, T, D] are kept (a Python-loop remat saves nothing on XLA:CPU,
        which merges the recomputation back into the forward pass). ``tree``: rows that pack
        turn trees depth first, as ``(node, end)`` [B, T] (``attention.Mask.within_tree``;
        no cache): a token attends to its own node and its ancestors only, and
        ``positions`` are its positions along its path.
        """
        cfg = self.cfg
        dt = _dtype(cfg.dtype)
        x = jnp.take(self.embed_tokens[...], tokens, axis=0).astype(dt)
        inv_freq = rope_inv_freq(cfg)
        b, t = tokens.shape

        if cache is None:
            seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
            mask = attention.Mask.causal(seg)
            if tree is not None:
                mask = mask.within_tree(*tree)
            slots, pos = None, None
        else:
            if write_index is None:
                write_index = jnp.zeros((b,), jnp.int32)
            slots = write_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
            rows = jnp.arange(b)[:, None]
            pos = cache.pos.at[rows, slots].set(positions.astype(jnp.int32), mode="drop")
            mask = attention.Mask.cached(positions, pos[:, :window])

        numerics = self.numerics

        def layer(block, x, lc):
            return block(x, positions, inv_freq, mask, lc, numerics)

        if cache is not None or isinstance(self.layers, nnx.List):
            # One layer at a time, each with its own weights and cache arrays (module
            # docstring, "Layers"): the sampler's copy, training without remat, or a
            # stacked model sliced per call.
            new_k, new_v = [], []
            run = nnx.remat(layer) if remat else layer
            for i, block in enumerate(unstacked(self.layers)):
                lc = None if cache is None else LayerCache(cache.k[i], cache.v[i], slots)
                x, lc = run(block, x, lc)
                if lc is not None:
                    new_k.append(lc.k)
                    new_v.append(lc.v)
            kv = (tuple(new_k), tuple(new_v))
        else:
            layer_def, layer_params = nnx.split(self.layers)

            def body(x, params):
                return layer(nnx.merge(layer_def, params), x, None)[0], None

            if remat:
                body = jax.checkpoint(body)
            # Without remat (a stacked model outside the training loop, which trains a list
            # then) the scan is unrolled: a rolled one stacks every layer's residuals
            # through dynamic-update-slices and runs the step 15% slower on XLA:CPU
            # (bench/train_step.py, SmolLM2-135M 8x256: 182 vs 211 tok/s, Xeon 2 cores).
            x, _ = jax.lax.scan(body, x, layer_params, unroll=1 if remat else True)
        new_cache = None if cache is None else Cache(k=kv[0], v=kv[1], pos=pos)
        return self.norm(x, numerics), new_cache

    def logits(self, h: jax.Array) -> jax.Array:
        """h [..., D] → float32 logits [..., V]; the tied embedding (and a transposed head) is
        contracted as stored [V, D], without materialising its transpose."""
        if self.cfg.tie_word_embeddings:
            w = self.embed_tokens[...].astype(h.dtype)
            return jnp.einsum("...D,VD->...V", h, w).astype(jnp.float32)
        return self.numerics.head(h, self.lm_head[...])

    def __call__(
        self,
        tokens,
        positions,
        *,
        segment_ids=None,
        attention_mask=None,
        cache=None,
        write_index=None,
        window=None,
        remat=False,
    ):
        if attention_mask is not None:
            if segment_ids is not None:
                raise ValueError("give either attention_mask or segment_ids, not both")
            segment_ids = attention_mask.astype(jnp.int32)
        h, cache = self.hidden(
            tokens,
            positions,
            segment_ids=segment_ids,
            cache=cache,
            write_index=write_index,
            window=window,
            remat=remat,
        )
        return self.logits(h), cache


def init_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A randomly initialised model (tests, benchmarks)."""
    return Decoder(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Decoder:
    """The model's structure with ShapeDtypeStruct leaves: nothing is allocated."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
