"""Process-level set-up shared by the launch scripts: multi-host init, run folders."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import jax

# XLA:CPU's default "concurrency optimised" scheduler runs independent matmuls side by side;
# on a few cores they only compete for the same cores and caches. Scheduling for memory ran
# the SmolLM2-135M update step (8x256 tokens, 2 cores) in 7.2 s instead of 8.4 s.
_CPU_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def set_cpu_xla_defaults(environ: dict[str, str] | None = None) -> None:
    """Add the launchers' XLA:CPU default (memory-ordered scheduling) to ``XLA_FLAGS``.

    Called first thing by the launch and bench scripts; importing ``rlpt_jax`` changes no
    environment. XLA reads the flags when its CPU backend starts, so this must run before
    the first computation. A user's own setting of the flag (either value) wins; other
    flags are kept; no effect on GPU or TPU.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if _CPU_SCHEDULER_FLAG not in flags:
        env["XLA_FLAGS"] = f"{flags} --{_CPU_SCHEDULER_FLAG}=false".strip()


def init_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    force: bool = False,
) -> None:
    """Initialise multi-host JAX when asked to or when the environment says so.

    Explicit flags win; otherwise ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/
    ``JAX_PROCESS_ID`` are read; on Cloud TPU pods and SLURM, ``force`` lets JAX discover
    everything itself. Single-process runs (the default) do nothing.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator_address is None and not force:
        return
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError(
            "multi-host launch needs --num_processes and --process_id (or JAX_NUM_PROCESSES "
            "and JAX_PROCESS_ID) together with the coordinator address"
        )
    # CPU processes need a collectives backend to talk to each other (the multi-process
    # CPU test runs this way); GPU and TPU ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def default_workdir(argv: Sequence[str]) -> str:
    """``runs/<config file stem>_<variant>`` from a ``--config=path.py:variant`` argument."""
    for arg in argv:
        m = re.match(r"--config=(.+?\.py)(?::(\w+))?$", arg)
        if m:
            stem = os.path.splitext(os.path.basename(m.group(1)))[0]
            return os.path.join("runs", stem + (f"_{m.group(2)}" if m.group(2) else ""))
    return os.path.join("runs", "run")


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs (``$JAX_COMPILATION_CACHE_DIR`` or the rlpt_jax cache),
    so a second run of the same config skips most compilation."""
    from rlpt_jax.assets import cache_dir

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
