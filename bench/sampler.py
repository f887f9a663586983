"""Benchmark: sampling from SmolLM2-135M on the CPU, against ``transformers.generate``.

Throughput: 128 new tokens per row, sampling at T=1 (no top-k, no top-p, EOS ignored so
every row produces 128 tokens), float32, batch 1 and batch 16. The baseline is
``transformers`` ``generate`` (torch float32, ``do_sample=True, top_k=0, top_p=1``,
``min_new_tokens=128``) on the same prompts, measured in the same run (in a subprocess of
it, so that JAX's thread pool does not compete with torch's), with 1 and with 2 torch
threads; the better of the two is the baseline. Each side is warmed up first
(our compilation, torch's first-call allocations) and then timed once end to end, prefill
included. The same table shows a ceiling measured in the same run: the decode step's
weight matmuls alone, jitted, at the same batch (``matmul_ceiling``); no sampler of this
model can beat it here. A second column times the batch-invariant model
(``ModelConfig.batch_invariant``: sampler log-probs equal to the update step's bit for bit),
whose decode is slower by design (``x · Wᵀ`` matmuls, float64 norms and attention, at least
2 rows).

Tree: an AT²PO-shaped rollout — 10 chains of (turn, tool result, turn), then 12 forks at
mid-depth (the state after the first tool result, before the second turn acted) that
re-sample the second turn. Counted: tokens prefilled when forks share the cached prefix,
against re-prefilling every branch's prefix from scratch.

    .venv/bin/python bench/sampler.py          # table, then one JSON object on the last line

The machine may be shared with other processes: the load average is printed with the
numbers, and both sides of each comparison run back to back in the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NEW_TOKENS = 128
TOPICS = [
    "the history of the printing press",
    "how rainbows form",
    "the rules of chess",
    "why the sky is blue",
    "the life cycle of a star",
    "how vaccines work",
    "the causes of the French Revolution",
    "photosynthesis",
    "how a bicycle stays upright",
    "the water cycle",
    "black holes",
    "the invention of the telephone",
    "how bees make honey",
    "plate tectonics",
    "the Roman Empire",
    "how computers add numbers",
]


def _prompts(tok, n: int) -> list[list[int]]:
    out = []
    for topic in TOPICS[:n]:
        msgs = [{"role": "user", "content": f"Write a short explanation of {topic}."}]
        out.append(tok.encode_chat(msgs))
    return out


def _load():
    from rlpt_jax.models import embedded
    from rlpt_jax.models.hf_io import load_hf
    from rlpt_jax.models.tokenizer import Tokenizer

    path = embedded.smollm2_dir()
    return path, load_hf(path), load_hf(path, batch_invariant=True), Tokenizer(path)


def bench_ours(sampler, prompts) -> float:
    from rlpt_jax.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True)
    sampler.generate(prompts, params)  # compile
    t = time.perf_counter()
    out = sampler.generate(prompts, SamplingParams(**{**params.__dict__, "seed": 1}))
    dt = time.perf_counter() - t
    assert all(len(s.tokens) == NEW_TOKENS for g in out for s in g)
    return len(prompts) * NEW_TOKENS / dt


def matmul_ceiling(model, bs: int) -> float:
    """Tokens/s of a decode step's weight matmuls alone (every layer's q, k, v, o, gate, up,
    down and the output head, for ``bs`` rows), jitted, 128 steps in a loop: an upper bound
    for any sampler of this model on this machine, ours and transformers' alike."""
    import jax
    import jax.numpy as jnp

    def mat(w):  # [D, heads, H] → [D, heads·H]
        return w.reshape(w.shape[0], -1)

    layers = []
    a, m = model.layers.self_attn, model.layers.mlp  # stacked: [L, ...]
    for i in range(model.cfg.num_layers):
        o = a.o_proj[...][i]
        layers.append(
            (
                mat(a.q_proj[...][i]),
                mat(a.k_proj[...][i]),
                mat(a.v_proj[...][i]),
                o.reshape(-1, o.shape[-1]),
                m.gate_proj[...][i],
                m.up_proj[...][i],
                m.down_proj[...][i],
            )
        )
    head = model.embed_tokens[...]

    @jax.jit
    def run(layers, head, x):
        def step(_, x):
            for wq, wk, wv, wo, wg, wu, wd in layers:
                kv = jnp.sum(x @ wk, -1, keepdims=True) + jnp.sum(x @ wv, -1, keepdims=True)
                x = x + 1e-3 * ((x @ wq) @ wo) + 1e-6 * kv
                x = x + 1e-3 * (((x @ wg) * (x @ wu)) @ wd)
            logits = jnp.einsum("RD,VD->RV", x, head)
            return x + 1e-6 * jnp.max(logits, -1, keepdims=True)

        return jax.lax.fori_loop(0, NEW_TOKENS, step, x)

    x = jnp.ones((bs, head.shape[1]), jnp.float32) * 0.01
    run(layers, head, x).block_until_ready()
    t = time.perf_counter()
    run(layers, head, x).block_until_ready()
    return bs * NEW_TOKENS / (time.perf_counter() - t)


def bench_hf(hf, prompts, pad_id: int) -> float:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as decoder-only batching requires
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    kw = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=pad_id)
    with torch.no_grad():
        hf.generate(ids, attention_mask=mask, max_new_tokens=8, **kw)  # warm-up
        t = time.perf_counter()
        out = hf.generate(
            ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw
        )
        dt = time.perf_counter() - t
    assert out.shape[1] - width == NEW_TOKENS
    return len(prompts) * NEW_TOKENS / dt


def bench_tree(sampler, tok, fork: bool, chains: int = 10, forks: int = 12, turn: int = 32):
    """One AT²PO-shaped tree; returns (tokens prefilled, tokens decoded, seconds)."""
    from rlpt_jax.sampling import SamplingParams

    prompt = tok.encode_chat(
        [
            {
                "role": "user",
                "content": "Who designed the Eiffel Tower, "
                "and in which year was it completed? Search if needed.",
            }
        ]
    )
    tool = tok.encode(
        " <result>\nPage 1: The Eiffel Tower was designed by the company of "
        "Gustave Eiffel and completed in 1889 for the World's Fair.\n</result>\n"
    )
    params = SamplingParams(max_new_tokens=turn, temperature=1.0, ignore_eos=True, seed=3)
    t0 = time.perf_counter()
    sess = sampler.session(rows=chains + forks, length=256)
    refills = 0
    if fork:
        (root,) = sess.add([prompt])
        rows = [root, *sess.fork(root, chains - 1)]
    else:
        rows = sess.add([prompt] * chains)
    sess.generate(rows, params)  # turn 1
    sess.append(rows, [tool] * chains)
    mid = {r: len(sess.tokens(r)) for r in rows}  # state before turn 2 acted
    sess.generate(rows, params)  # turn 2
    picks = [rows[i % chains] for i in range(forks)]  # "top-K nodes", repeated if fewer
    if fork:
        branches = [b for r in picks for b in sess.fork(r, 1, length=mid[r])]
    else:
        prefixes = [sess.tokens(r)[: mid[r]] for r in picks]
        branches = sess.add(prefixes)
        refills = sum(len(p) for p in prefixes)
    sess.generate(branches, params)  # re-sampled turn 2 of each fork
    dt = time.perf_counter() - t0
    assert fork or refills <= sess.prefilled_tokens
    return sess.prefilled_tokens, sess.decoded_tokens, dt


def hf_part(bs: int, threads: int) -> None:
    """The transformers baseline in its own process: XLA's CPU thread pool (still spinning
    after our calls) would otherwise compete with torch's threads inside one process."""
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    from rlpt_jax.models import embedded
    from rlpt_jax.models.tokenizer import Tokenizer

    path = embedded.smollm2_dir()
    tok = Tokenizer(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok_s = bench_hf(hf, _prompts(tok, bs), tok.pad_id)
    print(json.dumps({"tok_s": tok_s, "threads": torch.get_num_threads()}))


def run_hf(bs: int) -> tuple[float, dict[int, float]]:
    """Best tokens/s of transformers over 1 and 2 torch threads (on a shared CPU, torch's
    two-thread barriers collapse under contention; the baseline gets its best setting)."""
    by_threads = {}
    for threads in (1, 2):
        cmd = [sys.executable, __file__, "--hf", str(bs), str(threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        by_threads[threads] = json.loads(out.strip().splitlines()[-1])["tok_s"]
    return max(by_threads.values()), by_threads


def main() -> None:
    from rlpt_jax.sampling import Sampler

    path, model, invariant_model, tok = _load()
    sampler = Sampler(model, tok)
    invariant = Sampler(invariant_model, tok)
    print(f"load average {os.getloadavg()}")

    rows = []
    result = {}
    for bs in (1, 16):
        prompts = _prompts(tok, bs)
        ours = bench_ours(sampler, prompts)
        inv = bench_ours(invariant, prompts)
        ref, by_threads = run_hf(bs)
        ceiling = matmul_ceiling(model, bs)
        rows.append((bs, ours, ref, ours / ref, inv, ceiling, os.getloadavg()[0], by_threads))
        result[f"speedup_bs{bs}"] = round(ours / ref, 3)
        result[f"tok_s_bs{bs}"] = round(ours, 2)
        result[f"speedup_bs{bs}_invariant"] = round(inv / ref, 3)
        result[f"tok_s_bs{bs}_invariant"] = round(inv, 2)
        result[f"hf_tok_s_bs{bs}"] = round(ref, 2)
        result[f"hf_tok_s_bs{bs}_by_threads"] = {t: round(v, 2) for t, v in by_threads.items()}
        result[f"matmul_tok_s_bs{bs}"] = round(ceiling, 2)

    print(
        f"\n{'batch':>5} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'speedup':>7} | "
        f"{'batch-invariant tok/s':>21} | {'speedup':>7} | {'matmuls-only tok/s':>18} | "
        f"ours/matmuls | load | HF by threads"
    )
    for bs, ours, ref, sp, inv, ceil, load, by in rows:
        by_s = ", ".join(f"{t}: {v:.1f}" for t, v in by.items())
        print(
            f"{bs:>5} | {ours:>10.1f} | {ref:>9.1f} | {sp:>6.2f}x | {inv:>21.1f} | "
            f"{inv / ref:>6.2f}x | {ceil:>18.1f} | {ours / ceil:>12.2f} | {load:.2f} | {by_s}"
        )

    bench_tree(sampler, tok, fork=True)  # compile the tree's shapes
    shared = bench_tree(sampler, tok, fork=True)
    refill = bench_tree(sampler, tok, fork=False)
    print("\nAT2PO tree (10 chains, 12 forks at mid-depth, 32-token turns)")
    print(f"{'mode':>22} | {'prefilled':>9} | {'decoded':>7} | seconds")
    print(f"{'fork (shared prefix)':>22} | {shared[0]:>9} | {shared[1]:>7} | {shared[2]:.2f}")
    print(f"{'re-prefill branches':>22} | {refill[0]:>9} | {refill[1]:>7} | {refill[2]:.2f}")
    result["fork_prefill_tokens"] = shared[0]
    result["refill_prefill_tokens"] = refill[0]
    result["fork_prefill_ratio"] = round(shared[0] / refill[0], 4)
    result["load_average"] = round(os.getloadavg()[0], 2)
    from rlpt_jax.comparison import machine_info

    result["machine"] = machine_info()
    print(json.dumps(result))


if __name__ == "__main__":
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()  # before the first computation
    if len(sys.argv) == 4 and sys.argv[1] == "--hf":
        hf_part(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
