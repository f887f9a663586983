"""Benchmark on a GPU or TPU: Qwen3-shaped models (random weights, no download) in bfloat16.

Four parts, each guarded (a failure, e.g. out of memory, is a row of the table and an
``{"error": ...}`` entry of the JSON, not a crash):

* ``update``: the policy update step (forward + backward + AdamW, PPO-clip loss, remat on,
  as the paper configs run it) on a batch of ``--batch`` × ``--length`` tokens:
  tokens/s, model TFLOP/s and MFU against the device's peak dense bfloat16 FLOP/s. Model
  FLOPs per token follow ``bench/train_step.py`` (PaLM appendix B: 6·N for the N matmul
  parameters, the output head counted once, plus 12·L·T·N·H for attention scores and values,
  no causal halving, remat's recomputation not counted). The peak comes from a table of
  known devices keyed on ``jax.devices()[0].device_kind`` or from ``--peak_tflops``;
  neither: MFU is "unknown" (null in the JSON).
* ``decode``: the project's sampler (``rlpt_jax.sampling.Sampler``, bfloat16 KV cache, as
  the training loop configures it) decoding ``--new_tokens`` tokens per row at T=1 for
  batches of 64 and 256 random prompts of ``--prompt`` tokens, EOS ignored; the prefill is
  timed apart, so decode tokens/s counts only the decode loop.
* ``prefill``: one row of ``--prefill_len`` tokens written to a fresh sampler cache
  (chunked as the sampler chunks it): tokens/s.
* ``attention``: the update step on one row of 8k and of 16k tokens with
  ``attention="auto"`` (what it resolves to is shown) against ``"xla"`` (plus ``"cudnn"`` on
  a GPU, which ``rlpt_jax.models.attention`` keeps opt-in until measured): XLA's compiled
  temporaries (``memory_analysis().temp_size_in_bytes``) and the step time; an
  out-of-memory at compile or run time is reported as "OOM".

Models: ``qwen3-0.6b``, ``qwen3-1.7b`` and ``qwen3-4b`` (``rlpt_jax.models.presets``),
compute dtype bfloat16, parameters float32 by default (the paper configs' master weights;
``--param_dtype bfloat16`` for pure bfloat16). One device is used, whatever the device count.

On a CPU (no accelerator), or with ``--tiny``, every part runs only a tiny Qwen3-shaped
model (2 layers, width 64) at short lengths: that checks the script runs
(``tests/test_bench_accelerator.py``), the numbers mean nothing.

    .venv/bin/python bench/accelerator.py                    # everything, JSON last
    .venv/bin/python bench/accelerator.py --models qwen3-0.6b --parts update,attention
    .venv/bin/python bench/accelerator.py --time_budget 500  # skip what would start later

Each finished part also prints a ``# part ...`` progress line as it completes, so a run
cut short still shows what it measured. Environment: ``XLA_PYTHON_CLIENT_MEM_FRACTION``
defaults to 0.95 here (JAX's 0.75 leaves an 80 GB GPU short for the 4B step); ``--tiny``
adds ``--xla_backend_optimization_level=0`` to ``XLA_FLAGS`` (half the compile time); a
user's own setting of either wins.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Dense (no sparsity) bfloat16 peak per JAX device, TFLOP/s, from the vendors' data sheets.
# First match wins (more specific patterns first). TPU v2/v3 expose each TensorCore as a
# device, so their entries are per core (half the chip).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bb200\b", 2250.0),
    (r"\bh100\b.*\bpcie\b", 756.0),
    (r"\bh100\b.*\bnvl\b", 835.0),
    (r"\bg?h[12]00\b", 989.0),  # H100 SXM, H200, GH200
    (r"\ba100\b", 312.0),
    (r"\bl40s\b", 362.0),
    (r"\bl4\b", 121.0),
    (r"\btpu v6 ?(lite|e)\b", 918.0),  # Trillium (v6e)
    (r"\btpu v5 ?(lite|e)\b", 197.0),  # v5e
    (r"\btpu v5p?\b", 459.0),  # v5p reports "TPU v5"
    (r"\btpu v4\b", 275.0),
    (r"\btpu v3\b", 61.5),
    (r"\btpu v2\b", 22.5),
)

# The tiny shape: Qwen3-0.6B's config with these fields replaced.
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)

MODELS = ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b")
PARTS = ("update", "decode", "prefill", "attention")

# Full-size and tiny settings; flags override the full-size ones.
FULL = dict(
    batch=8,
    length=2048,
    chunk=1024,
    steps=3,
    decode_batches=(64, 256),
    prompt=128,
    new_tokens=128,
    prefill_len=16384,
    attn_lengths=(8192, 16384),
    attn_steps=2,
)
SMALL = dict(
    batch=2,
    length=64,
    chunk=32,
    steps=2,
    decode_batches=(64, 256),
    prompt=8,
    new_tokens=8,
    prefill_len=128,
    attn_lengths=(128, 256),
    attn_steps=1,
)


def peak_tflops(device_kind: str) -> float | None:
    """The table's dense bfloat16 peak for a ``device_kind``, or None if unknown."""
    kind = device_kind.lower()
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, kind):
            return tflops
    return None


def failure(e: BaseException) -> dict:
    """A caught exception as a JSON entry: "OOM" for out-of-memory, else its first line."""
    msg = f"{type(e).__name__}: {e}"
    oom = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM", "MemoryError")
    short = "OOM" if any(s in msg for s in oom) else msg.strip().splitlines()[0][:200]
    return {"error": short, "detail": msg[:1000]}


def _free() -> None:
    gc.collect()


# ----------------------------------------------------------------------------- models


def model_config(name: str, *, param_dtype: str, attention: str = "auto", max_len: int = 0):
    from rlpt_jax.models.config import ModelConfig
    from rlpt_jax.models.presets import preset

    d = dict(preset("qwen3-0.6b"), **TINY) if name == "tiny" else preset(name)
    d = dict(d)
    d["max_position_embeddings"] = max(int(d["max_position_embeddings"]), max_len)
    return ModelConfig.from_hf_dict(
        d, dtype="bfloat16", param_dtype=param_dtype, attention=attention
    )


def n_params(cfg) -> int:
    """Every parameter (embedding, head if untied, norms included)."""
    d, h = cfg.hidden_size, cfg.head_dim
    layer = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * h + cfg.num_heads * h * d
    layer += 3 * d * cfg.intermediate_size + 2 * d + (2 * h if cfg.qk_norm else 0)
    head = 0 if cfg.tie_word_embeddings else d * cfg.vocab_size
    return cfg.num_layers * layer + cfg.vocab_size * d + head + d


# ----------------------------------------------------------------------------- update step


def update_step(cfg, batch: int, length: int, chunk: int, steps: int, out: dict) -> dict:
    """Compile and run the update step on random tokens; times and XLA memory, written to
    ``out`` as they are measured (a run that fails keeps its compile-time numbers)."""
    import jax
    import numpy as np

    from rlpt_jax import batch as B
    from rlpt_jax.algos.losses import LossConfig
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.train import state as S
    from rlpt_jax.train import steps as ST

    out.update(batch=batch, length=length)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones(tokens.shape, np.float32)
    mask[:, 0] = 0  # the first token has no prediction
    adv = rng.normal(size=batch).astype(np.float32)
    # A random-init model is near uniform: old log-probs of -log V keep the ratio near 1
    # (gradients flow through the clipped loss) without a separate log-prob compile.
    old = np.full(tokens.shape, -math.log(cfg.vocab_size), np.float32)
    segments = np.ones_like(tokens)
    positions = B.positions_from_segments(segments)
    data = B.make_batch(tokens, mask, adv, old, positions=positions)
    data = jax.tree.map(jax.numpy.asarray, data)

    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-6, weight_decay=0.01))
    state = S.create_train_state(init_model(cfg), tx)
    step_cfg = ST.StepConfig(remat=True, chunk=min(chunk, length))
    update = ST.make_update_step(tx, ST.policy_objective(LossConfig()), step_cfg)
    t = time.perf_counter()
    compiled = update.lower(state, data).compile()
    out["compile_s"] = time.perf_counter() - t
    mem = compiled.memory_analysis()
    if mem is not None:
        out["xla_temp_gib"] = mem.temp_size_in_bytes / 2**30
        out["xla_args_gib"] = mem.argument_size_in_bytes / 2**30
    t = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(state)
    out["first_step_s"] = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    out["step_s"] = times
    out["tok_s"] = batch * length / min(times)
    out["loss"] = float(metrics["loss"])
    out["skipped"] = int(metrics["skipped_total"])
    if out["skipped"] or not math.isfinite(out["loss"]):
        out["error"] = out["detail"] = "non-finite loss or gradient (step skipped)"
    return out


def part_update(name: str, s: dict, a, peak: float | None) -> dict:
    from rlpt_jax.metrics import model_flops_per_token

    cfg = model_config(name, param_dtype=a.param_dtype, max_len=s["length"])
    r: dict = {"params_b": n_params(cfg) / 1e9}
    try:
        update_step(cfg, s["batch"], s["length"], s["chunk"], s["steps"], r)
    except Exception as e:  # noqa: BLE001 (reported with what was measured before it)
        return {**r, **failure(e)}
    r["flops_per_token"] = model_flops_per_token(cfg, s["length"])
    r["tflops"] = r["tok_s"] * r["flops_per_token"] / 1e12
    r["mfu"] = None if peak is None else r["tflops"] / peak
    return r


# ----------------------------------------------------------------------------- sampler


def _sampler(name: str, a, max_len: int):
    from rlpt_jax.models.decoder import init_model
    from rlpt_jax.sampling import Sampler, SamplerConfig

    cfg = model_config(name, param_dtype=a.param_dtype, max_len=max_len)
    return Sampler(init_model(cfg), None, SamplerConfig(cache_dtype="bfloat16"))


def _decode_once(sampler, prompts, new_tokens: int, seed: int) -> tuple[float, float]:
    import jax

    from rlpt_jax.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True, seed=seed)
    length = sampler.length_bucket(len(prompts[0]) + new_tokens)
    sess = sampler.session(len(prompts), length)
    rows = sess.add(prompts)
    t = time.perf_counter()
    sess.prefill(rows)
    jax.block_until_ready((sess.cache, sess.logits))
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    out = sess.generate(rows, params)
    decode_s = time.perf_counter() - t
    got = sum(len(x.tokens) for x in out)
    if got != len(prompts) * new_tokens:
        raise RuntimeError(f"decoded {got} tokens, expected {len(prompts) * new_tokens}")
    return prefill_s, decode_s


def part_decode(name: str, s: dict, a) -> dict:
    import numpy as np

    sampler = _sampler(name, a, s["prompt"] + s["new_tokens"])
    vocab = sampler.model_cfg.vocab_size
    rng = np.random.default_rng(1)
    out = {}
    for bs in s["decode_batches"]:
        if time.perf_counter() > s["deadline"]:
            out[str(bs)] = {"error": "skipped (time budget)"}
            continue
        try:
            prompts = rng.integers(0, vocab, (bs, s["prompt"])).tolist()
            t = time.perf_counter()
            _decode_once(sampler, prompts, s["new_tokens"], seed=0)  # compile
            compile_s = time.perf_counter() - t
            prefill_s, decode_s = _decode_once(sampler, prompts, s["new_tokens"], seed=1)
            out[str(bs)] = {
                "tok_s": bs * s["new_tokens"] / decode_s,
                "step_ms": 1e3 * decode_s / s["new_tokens"],
                "decode_s": decode_s,
                "prompt_prefill_s": prefill_s,
                "first_call_s": compile_s,
                "prompt": s["prompt"],
                "new_tokens": s["new_tokens"],
            }
        except Exception as e:  # noqa: BLE001 (reported, not raised)
            out[str(bs)] = failure(e)
        _free()
    return out


def part_prefill(name: str, s: dict, a) -> dict:
    import jax
    import numpy as np

    n = s["prefill_len"]
    sampler = _sampler(name, a, n)
    prompt = np.random.default_rng(2).integers(0, sampler.model_cfg.vocab_size, n).tolist()

    def once() -> float:
        sess = sampler.session(1, sampler.length_bucket(n))
        rows = sess.add([prompt])
        t = time.perf_counter()
        sess.prefill(rows)
        jax.block_until_ready((sess.cache, sess.logits))
        return time.perf_counter() - t

    first = once()  # compile
    dt = once()
    return {
        "tok_s": n / dt,
        "length": n,
        "seconds": dt,
        "first_call_s": first,
        "prefill_chunk": sampler.config.prefill_chunk,
    }


# ----------------------------------------------------------------------------- attention


def part_attention(name: str, s: dict, a, impls: list[str]) -> dict:
    """``{impl: {length: result}}``; each cell guarded on its own."""
    out: dict = {}
    measured: dict[str, dict] = {}  # resolved implementation -> its row
    for impl in impls:
        row: dict = {}
        for length in s["attn_lengths"]:
            cell: dict = {}
            if time.perf_counter() > s["deadline"]:
                row[str(length)] = {"error": "skipped (time budget)"}
                continue
            try:
                cfg = model_config(name, param_dtype=a.param_dtype, attention=impl, max_len=length)
                cell["resolved"] = resolved = cfg.attention_impl
                same = measured.get(resolved, {}).get(str(length))
                if same is not None:  # e.g. "auto" is "xla" on a CPU: the same program
                    row[str(length)] = {**same, "resolved": resolved, "same_as": resolved}
                    continue
                update_step(cfg, 1, length, s["chunk"], s["attn_steps"], cell)
            except Exception as e:  # noqa: BLE001 (reported, not raised)
                cell.update(failure(e))
            _free()
            row[str(length)] = cell
            if "resolved" in cell:
                measured.setdefault(cell["resolved"], {})[str(length)] = cell
        out[impl] = row
    return out


# ----------------------------------------------------------------------------- report


def _fmt(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def _cell(r: dict, key: str, spec: str) -> str:
    if "error" in r and key not in r:
        return r["error"][:40]
    return _fmt(r.get(key), spec)


def print_table(res: dict) -> None:
    peak = res["peak_tflops"]
    print(
        f"\nbackend {res['backend']}, {res['device_count']} x {res['device_kind']}, "
        f"jax {res['jax']}; peak bf16 "
        f"{'unknown' if peak is None else f'{peak:g} TFLOP/s'} ({res['peak_source']}); "
        f"compute bfloat16, params {res['param_dtype']}" + (" [tiny shapes]" if res["tiny"] else "")
    )
    print(
        f"\n{'update step':<12} | {'params':>7} | {'B x T':>11} | {'tok/s':>10} | "
        f"{'TFLOP/s':>8} | {'MFU':>7} | {'XLA temp GiB':>12} | compile s"
    )
    for name, r in res["update"].items():
        if "tok_s" not in r:
            temp = r.get("xla_temp_gib")
            temp = "" if temp is None else f" (XLA temp {temp:.2f} GiB)"
            print(f"{name:<12} | {r.get('error', '?')}{temp}")
            continue
        mfu = "unknown" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(
            f"{name:<12} | {r['params_b']:>6.2f}B | {r['batch']:>4} x {r['length']:<5}| "
            f"{r['tok_s']:>10.1f} | {r['tflops']:>8.2f} | {mfu:>7} | "
            f"{_fmt(r.get('xla_temp_gib'), '12.2f'):>12} | {r['compile_s']:.1f}"
        )
    heads = [f"decode bs {b} tok/s" for b in res["decode_batches"]]
    names = list(dict.fromkeys([*res["decode"], *res["prefill"]]))
    if names:
        print(f"\n{'sampler':<12} | " + " | ".join(heads) + " | long prefill")
    for name in names:
        d = res["decode"].get(name, {})
        cells = []
        for b, head in zip(res["decode_batches"], heads):
            r = d if "error" in d else d.get(str(b))
            cells.append((_cell(r, "tok_s", ".1f") if r else "-").rjust(len(head)))
        p = res["prefill"].get(name)
        pre = "-" if p is None else _cell(p, "tok_s", ".1f")
        if p and "length" in p:
            pre += f" tok/s ({p['length']} tokens)"
        print(f"{name:<12} | " + " | ".join(cells) + f" | {pre}")
    att = res["attention"]
    if att:
        lengths = res["attention_lengths"]
        model = att.get("model", "?")
        print(f"\nattention, update step on 1 row, {model}: XLA temp GiB / step s")
        print(f"{'impl':<20} | " + " | ".join(f"{f'T={t}':>22}" for t in lengths))
        if "error" in att:
            print(f"{'':<20} | {att['error']}")
        for impl, row in att.get("rows", {}).items():
            resolved = next((c["resolved"] for c in row.values() if "resolved" in c), "?")
            label = impl if resolved == impl else f"{impl} ({resolved})"
            cells = []
            for t in lengths:
                c = row.get(str(t), {})
                temp = _fmt(c.get("xla_temp_gib"), ".2f")
                failed = "OOM" if c.get("error") == "OOM" else "error" if "error" in c else "-"
                step = _fmt(min(c["step_s"]) if c.get("step_s") else None, ".3f", failed)
                cells.append(f"{temp + ' / ' + step:>22}")
            print(f"{label:<20} | " + " | ".join(cells))
    for part, why in res["skipped"].items():
        print(f"skipped {part}: {why}")
    for where, detail in _errors(res):
        print(f"error in {where}: {detail}")


def _errors(node, where: str = ""):
    """(place, first line of the detail) of every failed entry of the report."""
    if not isinstance(node, dict):
        return
    if "error" in node and "detail" in node:
        yield where, node["detail"].splitlines()[0][:300]
    for k, v in node.items():
        if k not in ("machine", "skipped"):
            yield from _errors(v, f"{where} {k}".strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on any backend")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--attention_model", default="qwen3-0.6b")
    ap.add_argument("--attention_impls", default="", help="default: auto,xla (+cudnn on GPU)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="peak bf16 TFLOP/s")
    ap.add_argument("--param_dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--batch", type=int, default=FULL["batch"])
    ap.add_argument("--length", type=int, default=FULL["length"])
    ap.add_argument("--prompt", type=int, default=FULL["prompt"])
    ap.add_argument("--new_tokens", type=int, default=FULL["new_tokens"])
    ap.add_argument("--prefill_len", type=int, default=FULL["prefill_len"])
    ap.add_argument("--steps", type=int, default=FULL["steps"])
    ap.add_argument(
        "--time_budget", type=float, default=0, help="seconds; parts not started by then skip"
    )
    a = ap.parse_args()
    t_start = time.perf_counter()

    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()  # before the first computation
    flags = os.environ.get("XLA_FLAGS", "")
    if a.tiny and "xla_backend_optimization_level" not in flags:
        # Tiny shapes only check that the script runs: compile without LLVM optimisation
        # (halves XLA:CPU compile time, which is nearly all of a tiny run).
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    # JAX's GPU default reserves 75% of the memory: the 4B update step (float32 weights and
    # Adam moments, 64 GB) would not fit an 80 GB card. A user's own setting wins.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    import jax

    from rlpt_jax.comparison import machine_info

    backend = jax.default_backend()
    dev = jax.devices()[0]
    tiny = a.tiny or backend == "cpu"
    if tiny:
        s = dict(SMALL)
        models = ["tiny"]
        attn_model = "tiny"
    else:
        s = dict(FULL)
        for k in ("batch", "length", "prompt", "new_tokens", "prefill_len", "steps"):
            s[k] = getattr(a, k)
        models = [m for m in a.models.split(",") if m]
        attn_model = a.attention_model
    s["deadline"] = t_start + a.time_budget if a.time_budget > 0 else math.inf
    parts = [p for p in a.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}; known: {', '.join(PARTS)}")
    impls = [i for i in a.attention_impls.split(",") if i] or (
        ["auto", "xla", "cudnn"] if backend == "gpu" else ["auto", "xla"]
    )
    if a.peak_tflops is not None:
        peak, source = a.peak_tflops, "--peak_tflops"
    else:
        peak = peak_tflops(dev.device_kind)
        source = "table" if peak is not None else "unknown"

    res: dict = {
        "backend": backend,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "tiny": tiny,
        "peak_tflops": peak,
        "peak_source": source,
        "param_dtype": a.param_dtype,
        "dtype": "bfloat16",
        "update_batch": s["batch"],
        "update_length": s["length"],
        "decode_batches": list(s["decode_batches"]),
        "attention_lengths": list(s["attn_lengths"]),
        "update": {},
        "decode": {},
        "prefill": {},
        "attention": {},
        "skipped": {},
        "part_s": {},
    }
    print(f"{backend}: {jax.device_count()} x {dev.device_kind}; tiny={tiny}", flush=True)

    def run(part: str, name: str, fn):
        key = f"{part} {name}"
        if time.perf_counter() > s["deadline"]:
            res["skipped"][key] = f"time budget of {a.time_budget:g} s spent"
            return {"error": "skipped (time budget)"}
        t = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 (one failure is a row of the report)
            r = failure(e)
        _free()
        res["part_s"][key] = round(time.perf_counter() - t, 2)
        brief = {k: v for k, v in r.items() if k != "detail"} if isinstance(r, dict) else r
        print(f"# part {key} ({res['part_s'][key]:.1f} s): {json.dumps(brief)[:400]}", flush=True)
        return r

    # Smallest model first, every part of it, then the attention comparison, then the rest:
    # a run cut short (time budget, a crash) still has one complete picture.
    def model_parts(name: str) -> None:
        if "update" in parts:
            res["update"][name] = run("update", name, lambda: part_update(name, s, a, peak))
        if "decode" in parts:
            res["decode"][name] = run("decode", name, lambda: part_decode(name, s, a))
        if "prefill" in parts:
            res["prefill"][name] = run("prefill", name, lambda: part_prefill(name, s, a))

    def attention_part() -> None:
        rows = run("attention", attn_model, lambda: part_attention(attn_model, s, a, impls))
        ok = "error" not in rows
        res["attention"] = {"model": attn_model, **({"rows": rows} if ok else rows)}

    for i, name in enumerate(models):
        model_parts(name)
        if i == 0 and "attention" in parts:
            attention_part()
    if not models and "attention" in parts:
        attention_part()

    res["wall_s"] = round(time.perf_counter() - t_start, 2)
    res["machine"] = machine_info()
    print_table(res)
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
