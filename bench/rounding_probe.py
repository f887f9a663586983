"""Probe: which XLA:CPU operations round differently depending on an array's shape.

The sampler's decode step and the training forward compute the same functions on the same
tokens, but with different shapes: a decode step has one row per sequence, a training
forward has batch x length rows, and attention softmaxes run over a cache window instead of
the sequence. On XLA:CPU several operations pick their implementation (and with it the order
of their float32 roundings) from the shape, which is why the sampler's log-probs and the
training forward's differ by ~1e-5 on SmolLM2-135M with the default (fast) numerics. This
script prints, for each such operation, which shapes give bit-identical results to a large
reference shape, and times x·Wᵀ against x·W at decode shapes.

    .venv/bin/python bench/rounding_probe.py   # table, then one JSON object on the last line

The batch-invariant numerics (``ModelConfig.batch_invariant``) rely on two rows of this
table: x·Wᵀ identical at every row count from 2 up, and the float64 RMSNorm and softmax
(``in_float64``) identical at every shape. Re-run it after a jax/jaxlib update; if either
stops holding, ``tests/test_batch_invariant.py`` fails too.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlpt_jax.comparison import machine_info
from rlpt_jax.models.numerics import in_float64

ROWS = (1, 2, 4, 8, 16, 32, 48, 64)
REF_ROWS = 512


def _same(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _dot_rows(k: int, n: int, transposed: bool, rng) -> list[int]:
    """Row counts whose x·W equals the first rows of a 512-row x·W, bit for bit.

    transposed: W is stored [N, K] and contracted on its last axis (x·Wᵀ, PyTorch's layout).
    """
    w = rng.standard_normal((n, k) if transposed else (k, n)).astype(np.float32)
    x = rng.standard_normal((REF_ROWS, k)).astype(np.float32)
    if transposed:
        f = jax.jit(lambda x, w: jax.lax.dot_general(x, w, (((1,), (1,)), ((), ()))))
    else:
        f = jax.jit(lambda x, w: x @ w)
    ref = np.asarray(f(x, w))
    return [m for m in ROWS if _same(f(x[:m], w), ref[:m])]


def _maybe_wide(fn, wide: bool):
    return jax.jit((lambda x: in_float64(fn, x)) if wide else fn)


def _norm_rows(rng, wide: bool = False) -> list[int]:
    """Row counts whose RMSNorm (the model's formula) equals that of a 2048-row batch;
    ``wide``: computed in float64 and rounded once (the batch-invariant path)."""
    x = (rng.standard_normal((2048, 576)) * 3).astype(np.float32)
    f = _maybe_wide(lambda x: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5), wide)
    ref = np.asarray(f(x))
    return [m for m in ROWS if _same(f(x[:m]), ref[:m])]


def _softmax_lengths(rng, wide: bool = False) -> list[int]:
    """Lengths L whose softmax over L scores equals the softmax of the same scores followed by
    masked (-1e30) slots up to 256, as a decode step sees them in its cache window."""
    s = rng.standard_normal((64, 256)).astype(np.float32)
    f = _maybe_wide(lambda s: jax.nn.softmax(s, -1), wide)
    out = []
    for length in (16, 37, 40, 48, 64, 100, 128):
        padded = np.full_like(s, -1e30)
        padded[:, :length] = s[:, :length]
        if _same(f(s[:, :length]), np.asarray(f(padded))[:, :length]):
            out.append(length)
    return out


def _time(f, *args, reps: int = 7, n: int = 30) -> float:
    for _ in range(3):
        jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            r = f(*args)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def _decode_dots_ms(rows: int, rng) -> tuple[float, float]:
    """ms for one decode step's projections at `rows` rows, in SmolLM2-135M's shapes (30
    layers of q, k, v, o, gate, up, down, chained through cheap elementwise glue), with the
    weights stored [K, N] (x·W) and stored [N, K] (x·Wᵀ)."""
    d, f, kv = 576, 1536, 192
    names = {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d), "g": (d, f), "u": (d, f)}
    names["down"] = (f, d)
    layers = [
        {n: rng.standard_normal(s).astype(np.float32) * 0.03 for n, s in names.items()}
        for _ in range(30)
    ]
    x = jnp.asarray(rng.standard_normal((rows, d)).astype(np.float32))

    def step(x, layers, transposed):
        def lin(a, w):
            if transposed:
                return jax.lax.dot_general(a, w, (((1,), (1,)), ((), ())))
            return a @ w

        for p in layers:
            att = lin(x, p["q"]) * jnp.tile(lin(x, p["k"]) + lin(x, p["v"]), (1, d // kv))
            x = x + lin(att, p["o"])
            x = x + lin(jax.nn.silu(lin(x, p["g"])) * lin(x, p["u"]), p["down"])
        return x

    plain = [{n: jnp.asarray(w) for n, w in p.items()} for p in layers]
    trans = [{n: jnp.asarray(np.ascontiguousarray(w.T)) for n, w in p.items()} for p in layers]
    t_plain = _time(jax.jit(lambda x, ws: step(x, ws, False)), x, plain)
    t_trans = _time(jax.jit(lambda x, ws: step(x, ws, True)), x, trans)
    return t_plain, t_trans


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, float32")
    print(f"{'operation':44s} {'shapes identical to the reference':40s}")
    rows = {}
    for k, n in ((576, 1536), (1536, 576)):
        for transposed in (False, True):
            name = f"x·W{'ᵀ' if transposed else ''} K={k} N={n} (rows vs {REF_ROWS})"
            rows[name] = _dot_rows(k, n, transposed, rng)
    rows["RMSNorm D=576 (rows vs 2048)"] = _norm_rows(rng)
    rows["RMSNorm in float64 (rows vs 2048)"] = _norm_rows(rng, wide=True)
    rows["softmax over L (vs L + masked slots)"] = _softmax_lengths(rng)
    rows["softmax in float64 (vs L + masked slots)"] = _softmax_lengths(rng, wide=True)
    for name, ok in rows.items():
        print(f"{name:44s} {ok}")
    print(f"(rows tried: {list(ROWS)}; lengths tried: [16, 37, 40, 48, 64, 100, 128])")

    plain_ms, trans_ms = _decode_dots_ms(16, rng)
    print(
        f"decode-step projections at 16 rows: x·W {plain_ms:.1f} ms, x·Wᵀ {trans_ms:.1f} ms "
        f"({trans_ms / plain_ms:.2f}x)"
    )
    summary = {
        "dot_rows_identical": {k: v for k, v in rows.items() if k.startswith("x·")},
        "rmsnorm_rows_identical": rows["RMSNorm D=576 (rows vs 2048)"],
        "rmsnorm_float64_rows_identical": rows["RMSNorm in float64 (rows vs 2048)"],
        "softmax_lengths_identical": rows["softmax over L (vs L + masked slots)"],
        "softmax_float64_lengths_identical": rows["softmax in float64 (vs L + masked slots)"],
        "decode_dots_ms_plain": round(plain_ms, 2),
        "decode_dots_ms_transposed": round(trans_ms, 2),
        "machine": machine_info(),  # the CPU model and ISA flags: roundings differ by CPU
    }
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()  # before the first computation
    main()
