"""Plot a run's metrics (reward, KL, entropy, response length, H_turn) as PNG files.

    python launch/plot.py --workdir=/tmp/rlpt_run                 # → /tmp/rlpt_run/plots/
    python launch/plot.py --workdir=/tmp/rlpt_run --out=/tmp/p --keys=loss,grad_norm

Reads ``<workdir>/metrics.jsonl`` (or a JSONL file given as --workdir) and writes one PNG
per metric family present, plus one per --keys entry (keys containing that text).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (or its metrics.jsonl)")
_OUT = flags.DEFINE_string("out", None, "output folder (default: <workdir>/plots)")
_KEYS = flags.DEFINE_list("keys", [], "extra metric keys (substrings) to plot")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from rlpt_jax import metrics

    src = _WORKDIR.value
    default_out = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "plots")
    for path in metrics.plot_run(src, _OUT.value or default_out, extra_keys=_KEYS.value):
        print(path)


if __name__ == "__main__":
    app.run(main)
