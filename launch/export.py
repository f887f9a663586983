"""Write a training checkpoint as a Hugging Face model folder (servable by vLLM / SGLang).

    python launch/export.py --workdir=runs/rlpt_cpu                 # latest good checkpoint
    python launch/export.py --workdir=runs/rlpt_cpu --step=6 --out=/tmp/rlpt_step6

The run's ``config.json`` (written by launch/train.py) says which base model the checkpoint
belongs to; the weights come from the checkpoint.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "run folder with checkpoints/ and config.json")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest good one)")
_OUT = flags.DEFINE_string("out", None, "output folder (default: <workdir>/hf_export_<step>)")


def main(argv):
    del argv
    from rlpt_jax import launch_utils

    launch_utils.set_cpu_xla_defaults()
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    from rlpt_jax.train.export import export_checkpoint

    out = export_checkpoint(_WORKDIR.value, step=_STEP.value, out=_OUT.value)
    print(f"exported {out}")


if __name__ == "__main__":
    app.run(main)
