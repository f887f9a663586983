"""Process-level set-up shared by the launch scripts: multi-host init, run folders."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import jax


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
