"""Benchmark: one SmolLM2-135M policy update (forward + backward + AdamW) on the CPU.

Batch 8 × 256 tokens, float32, PPO-clip loss on every token after the first. Reported
against two baselines measured in the same run: the machine's matmul ceiling (jitted
2048² float32 matmul, GFLOP/s) and a ``transformers`` + ``torch.optim.AdamW`` step on the
same batch. Peak resident memory of the JAX step is measured with and without
``StepConfig.remat`` (per-layer recomputation; chunk logits are then recomputed too),
each in its own subprocess (``ru_maxrss``), along with XLA's own temporary-buffer size
for the compiled step.

Model FLOPs per token (PaLM appendix B convention, no causal halving): 6·N for the
N parameters used in matmuls (tied embedding counted once, as the output head) plus
12·L·T·D for attention scores and values.

    .venv/bin/python bench/train_step.py            # everything, JSON on the last line
    .venv/bin/python bench/train_step.py --part jax --remat 0   # one part

The CPU may be shared with other processes; the matmul ceiling is measured before and
after the steps and the load average is printed so contention is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BATCH, LENGTH = 8, 256
STEPS = 4


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch_arrays(vocab: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (BATCH, LENGTH)).astype(np.int32)
    mask = np.ones((BATCH, LENGTH), np.float32)
    mask[:, 0] = 0
    adv = rng.normal(size=BATCH).astype(np.float32)
    return tokens, mask, adv


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def part_jax(remat: bool, chunk: int, logits_remat: bool | None) -> dict:
    import jax
    import numpy as np

    from rlpt_jax import batch as B
    from rlpt_jax import metrics as metrics_lib
    from rlpt_jax.algos.losses import LossConfig
    from rlpt_jax.models.embedded import smollm2_dir
    from rlpt_jax.models.hf_io import load_hf
    from rlpt_jax.train import state as S
    from rlpt_jax.train import steps as ST

    model = load_hf(smollm2_dir(verbose=False))
    cfg = model.cfg
    tx = S.make_optimizer(S.OptimConfig(learning_rate=1e-6, weight_decay=0.01))
    # the layer layout the training loop gives this step: a list without remat
    state = S.with_layers(S.create_train_state(model, tx), stacked=remat)
    del model
    step_cfg = ST.StepConfig(chunk=chunk, remat=remat, logits_remat=logits_remat)
    tokens, mask, adv = _batch_arrays(cfg.vocab_size)
    segments = np.ones_like(tokens)
    positions = B.positions_from_segments(segments)
    old = ST.make_logprob_step(state.graphdef, step_cfg)(state.params, tokens, positions, segments)
    batch = B.make_batch(tokens, mask, adv, np.asarray(old.logp), positions=positions)
    batch = jax.tree.map(jax.numpy.asarray, batch)
    update = ST.make_update_step(tx, ST.policy_objective(LossConfig()), step_cfg)
    compiled = update.lower(state, batch).compile()
    temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
    rss_before = _rss_mb()
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    first = time.perf_counter() - t
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    assert int(metrics["skipped_total"]) == 0, "benchmark step produced non-finite values"
    best = min(times)
    return {
        "tok_s": BATCH * LENGTH / best,
        "step_s": times,
        "first_step_s": first,
        "flops_per_token": metrics_lib.model_flops_per_token(cfg, LENGTH),
        "peak_mb": _maxrss_mb(),
        "rss_before_step_mb": rss_before,
        "xla_temp_mb": temp_mb,
        "loss": float(metrics["loss"]),
    }


def part_torch() -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from rlpt_jax.models.embedded import smollm2_dir

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(verbose=False), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    tokens, mask, adv = _batch_arrays(model.config.vocab_size)
    tokens_t = torch.from_numpy(tokens.astype(np.int64))
    mask_t = torch.from_numpy(mask)[:, 1:]
    adv_t = torch.from_numpy(adv)[:, None]

    def logp_of():
        logits = model(input_ids=tokens_t).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, tokens_t[:, 1:, None])[..., 0]

    with torch.no_grad():
        old = logp_of()

    def step():
        opt.zero_grad(set_to_none=True)
        logp = logp_of()
        ratio = torch.exp(logp - old)
        per = torch.maximum(-adv_t * ratio, -adv_t * ratio.clamp(0.8, 1.2))
        loss = (per * mask_t).sum() / mask_t.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    step()
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"tok_s": BATCH * LENGTH / min(times), "step_s": times, "peak_mb": _maxrss_mb()}


def _sub(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "jax", "torch", "matmul"), default="all")
    ap.add_argument("--remat", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--logits-remat", type=int, default=-1, help="-1: follow --remat")
    a = ap.parse_args()
    jax_args = ["--chunk", str(a.chunk), "--logits-remat", str(a.logits_remat)]
    if a.part == "jax":
        logits_remat = None if a.logits_remat < 0 else bool(a.logits_remat)
        print(json.dumps(part_jax(bool(a.remat), a.chunk, logits_remat)))
        return
    if a.part == "torch":
        print(json.dumps(part_torch()))
        return
    if a.part == "matmul":
        print(json.dumps({"gflops": matmul_gflops()}))
        return

    load0 = os.getloadavg()
    ceiling0 = _sub(["--part", "matmul"])["gflops"]
    jx = _sub(["--part", "jax", "--remat", "0", *jax_args])
    th = _sub(["--part", "torch"])  # next to the JAX step, so both see similar load
    jr = _sub(["--part", "jax", "--remat", "1", *jax_args])
    ceiling1 = _sub(["--part", "matmul"])["gflops"]
    load1 = os.getloadavg()
    ceiling = max(ceiling0, ceiling1)
    mfu = jx["tok_s"] * jx["flops_per_token"] / (ceiling * 1e9)
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"matmul ceiling: {ceiling0:.1f} / {ceiling1:.1f} GFLOP/s (before / after)")
    print(f"model FLOPs per token: {jx['flops_per_token'] / 1e6:.0f} M")
    for name, r in (("jax", jx), ("jax remat", jr), ("torch", th)):
        steps = ", ".join(f"{s:.2f}" for s in r["step_s"])
        print(f"{name:10s} {r['tok_s']:7.1f} tok/s  steps [{steps}] s  peak {r['peak_mb']:.0f} MB")
    for name, r in (("jax", jx), ("jax remat", jr)):
        print(
            f"{name:10s} RSS before first step {r['rss_before_step_mb']:.0f} MB, "
            f"XLA temp buffers {r['xla_temp_mb']:.0f} MB"
        )
    from rlpt_jax.comparison import machine_info

    result = {
        "speedup_vs_torch": round(jx["tok_s"] / th["tok_s"], 3),
        "mfu": round(mfu, 3),
        "tok_s": round(jx["tok_s"], 1),
        "tok_s_remat": round(jr["tok_s"], 1),
        "torch_tok_s": round(th["tok_s"], 1),
        "matmul_gflops": round(ceiling, 1),
        "peak_mb": round(jx["peak_mb"]),
        "peak_mb_remat": round(jr["peak_mb"]),
        "xla_temp_mb": round(jx["xla_temp_mb"]),
        "xla_temp_mb_remat": round(jr["xla_temp_mb"]),
        "remat_peak_cut": round(1 - jr["peak_mb"] / jx["peak_mb"], 3),
        "machine": machine_info(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()  # before the first computation
    main()
