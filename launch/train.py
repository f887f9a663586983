"""Train a policy: RLPT, the NTP baseline, or AT²PO, as the config says.

    python launch/train.py --config=configs/rlpt_qwen.py:cpu --workdir=runs/rlpt_cpu
    python launch/train.py --config=configs/at2po_qwen.py:cpu --workdir=runs/at2po_cpu
    python launch/train.py --config=configs/rlpt_qwen.py:qwen3_8b \\
        --config.model.path=/ckpt/Qwen3-8B-Base --workdir=runs/rlpt_8b

Pointing ``--workdir`` at an existing run resumes it from its latest good checkpoint.
Multi-host (GPU clusters, TPU pod slices): run the same command on every host; the
coordinator comes from ``--coordinator_address``/``--num_processes``/``--process_id`` or,
on Cloud TPU and SLURM, from the environment (``jax.distributed.initialize()``).
``--dry_run`` builds the mesh, the sharding plan and the compiled step and prints the
per-device memory, without loading weights.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (default: runs/<config>_<variant>)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "plan shardings and memory, then exit")
_DEVICE_MEMORY = flags.DEFINE_float(
    "device_memory_gb", None, "dry run: per-device memory to check the plan against"
)
_COMPILE = flags.DEFINE_bool("dry_run_compile", False, "dry run: also compile the update step")
_COORD = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's id")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize() (implied by --coordinator_address)"
)


def main(argv):
    del argv
    from absl import logging

    if logging.get_verbosity() <= logging.INFO and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/<experiment>.py[:variant] is required")
    from rlpt_jax import launch_utils
    from rlpt_jax.train import loop

    launch_utils.set_cpu_xla_defaults()
    launch_utils.enable_compilation_cache()
    launch_utils.init_distributed(
        coordinator_address=_COORD.value,
        num_processes=_NPROC.value,
        process_id=_PID.value,
        force=_DISTRIBUTED.value,
    )
    workdir = _WORKDIR.value or launch_utils.default_workdir(sys.argv)
    if _DRY_RUN.value:
        from rlpt_jax.train import dry_run

        dry_run.run(_CONFIG.value, device_memory_gb=_DEVICE_MEMORY.value, compile=_COMPILE.value)
        return
    loop.run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
