"""rlpt_jax: RLPT and AT²PO on language models in JAX/Flax NNX."""

import os

# XLA:CPU's default "concurrency optimised" scheduler runs independent matmuls side by side;
# on a few cores they only compete for the same cores and caches. Scheduling for memory ran
# the SmolLM2-135M update step (8×256 tokens, 2 cores) in 7.2 s instead of 8.4 s. XLA reads
# the flag when the CPU backend starts, so it is set here, before any computation; naming
# the flag in XLA_FLAGS yourself (either value) overrides this. No effect on GPU or TPU.
_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"
if _SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_SCHEDULER_FLAG}=false".strip()
