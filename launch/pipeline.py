"""The RLPT paper's staged pipeline, and its baseline: cold start → RLPT → RLVR against
cold start → RLVR, over seeds, with a report of the two RLVR arms.

    # the CPU defaults (embedded SmolLM2-135M), 2 seeds: ~1 h on a 2-core CPU
    python launch/pipeline.py --out=docs/results/pipeline_cpu --seeds=0,1
    # the paper's setting: give the stages' configs and your data as overrides
    python launch/pipeline.py --out=results/pipeline_4b --seeds=0 \\
        --rlpt='configs/rlpt_qwen.py:qwen3_4b model.path=/ckpt/sft' \\
        --rlvr='configs/rlvr_qwen.py:qwen3_4b rlvr.train=("/data/dapo_math.jsonl",)'

Stages (each a ``launch/train.py`` run in a subprocess, resumable; finished runs are
skipped, so re-running the command only writes the report again):

1. ``rlpt``: the RLPT config, one run per seed, in ``<runs_dir>/rlpt/seed<s>``. A config
   with a ``cold_start`` block (the ``cpu`` and ``tiny`` variants) trains its cold-start
   SFT model first, once: it is cached and shared by the seeds.
2. ``rlpt_then_rlvr``: the RLVR config started from that seed's RLPT export
   (``model.path=<runs_dir>/rlpt/seed{seed}/hf_export``).
3. ``rlvr_alone``: the RLVR config started from the model the RLPT runs started from (the
   cold-start export; ``start_model.json`` in the RLPT run folder names it).

Then ``rlpt_jax.comparison`` writes ``results.md``, ``summary.json`` and curves to ``--out``
for the two RLVR arms (default metrics: held-out Pass@1, Pass@k, reward), and
``rlpt/results.md`` there for the RLPT stage.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "folder of the report")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "seeds, e.g. 0,1")
_RLPT = flags.DEFINE_string(
    "rlpt", "configs/rlpt_qwen.py:cpu", "RLPT stage: 'configs/<file>.py:<variant> key=value ...'"
)
_RLVR = flags.DEFINE_string(
    "rlvr", "configs/rlvr_qwen.py:cpu", "RLVR stage: 'configs/<file>.py:<variant> key=value ...'"
)
_RUNS_DIR = flags.DEFINE_string("runs_dir", None, "where runs live (default: <out>/runs)")
_METRICS = flags.DEFINE_list(
    "metrics", None, "RLVR metrics to report (default: eval/pass@* and reward/mean)"
)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "train nothing; report finished runs")
flags.mark_flag_as_required("out")


def start_model(rlpt_run) -> str:
    """The model an RLPT run started from (its cold-start export, if it had one)."""
    from rlpt_jax.train.loop import START_MODEL_NAME

    path = rlpt_run / START_MODEL_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the RLPT run in {rlpt_run} never started")
    return json.loads(path.read_text())["model_path"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; quote --rlpt='...'/--rlvr='...'")
    from pathlib import Path

    from absl import logging

    from rlpt_jax import comparison

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    out = Path(_OUT.value).resolve()
    runs_dir = Path(_RUNS_DIR.value).resolve() if _RUNS_DIR.value else out / "runs"
    try:
        seeds = [int(s) for s in _SEEDS.value]
        rlpt = comparison.parse_arm(f"rlpt={_RLPT.value}")
        rlvr = comparison.parse_arm(f"rlvr={_RLVR.value}")
        comparison.check_comparison([rlpt, rlvr], seeds)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from e
    command = shlex.join(["python", "launch/pipeline.py", *sys.argv[1:]])
    train = not _REPORT_ONLY.value

    print(f"[pipeline] stage 1/2: RLPT ({rlpt.config}), seeds {seeds}")
    _, failed = comparison.compare(
        [rlpt], seeds, out / "rlpt", runs_dir=runs_dir, train=train, command=command
    )
    if failed:
        sys.exit(f"RLPT run(s) failed, see their train.log: {', '.join(failed)}")
    starts = {start_model(comparison.run_dir(runs_dir, rlpt, s)) for s in seeds}
    if len(starts) != 1:
        sys.exit(f"the RLPT seeds started from different models {sorted(starts)}")
    (cold,) = starts
    # Relative to the repository when inside it, so that spec.json works in another clone.
    rlpt_export = comparison.shown_path(
        runs_dir / rlpt.name / f"seed{comparison.SEED_FIELD}" / "hf_export"
    )
    arms = [
        comparison.Arm(name, rlvr.config, (*rlvr.overrides, f"model.path={path}"))
        for name, path in (("rlpt_then_rlvr", rlpt_export), ("rlvr_alone", cold))
    ]
    print(f"[pipeline] stage 2/2: RLVR ({rlvr.config}) after RLPT vs from {cold}, seeds {seeds}")
    metrics = _METRICS.value
    summary, failed = comparison.compare(
        arms,
        seeds,
        out,
        runs_dir=runs_dir,
        metrics=metrics,
        train=train,
        title="RLVR after RLPT vs RLVR alone",
        command=command,
    )
    print(f"wrote {out / comparison.RESULTS_NAME}")
    if failed:
        sys.exit(f"{len(failed)} RLVR run(s) failed, see their train.log: {', '.join(failed)}")


if __name__ == "__main__":
    app.run(main)
