"""Compare config variants over seeds: train them, then a table, a summary and curves.

    # RLPT against its NTP baseline, 3 seeds each
    python launch/compare.py --out=docs/results/rlpt_vs_ntp --seeds=0,1,2 \\
        --arm='rlpt=configs/rlpt_qwen.py:cpu' \\
        --arm='ntp=configs/rlpt_qwen.py:cpu method=ntp'
    # the same comparison again: finished runs are skipped, the report is rewritten
    python launch/compare.py --spec=docs/results/rlpt_vs_ntp/spec.json \\
        --out=docs/results/rlpt_vs_ntp
    # only the report, from the runs already there
    python launch/compare.py --spec=docs/results/rlpt_vs_ntp/spec.json \\
        --out=docs/results/rlpt_vs_ntp --report_only

``--baseline=<arm>`` adds, under each metric's table, every other arm's difference from
that arm paired by held-out example (e.g. the start model, an arm with ``train.steps=0
eval.at_start=True``).

``--arm='name=configs/<file>.py:<variant> key=value ...'`` (repeatable): the overrides are
``--config.key=value`` of ``launch/train.py`` without the prefix; ``--override=key=value``
(repeatable) applies to every arm, before the arm's own. Each run is
``launch/train.py ... --config.seed=<s> --workdir=<runs_dir>/<arm>/seed<s>`` in a
subprocess. Writes ``results.md``, ``summary.json``, ``spec.json`` and
``curve_<metric>.png`` in ``--out``; formats, the spec file and the bootstrap are described
in ``rlpt_jax/comparison.py``. Exits with status 1 if a run failed (the report covers the
runs that finished).
"""

from __future__ import annotations

import os
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "folder of the report (results.md, summary.json, PNGs)")
_ARM = flags.DEFINE_multi_string(
    "arm", [], "'name=configs/<file>.py:<variant> key=value ...' (repeatable)"
)
_SPEC = flags.DEFINE_string("spec", None, "JSON spec file (arms, seeds, metrics, overrides)")
_SEEDS = flags.DEFINE_list("seeds", None, "seeds, e.g. 0,1,2 (default: the spec's, else 0)")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "key=value applied to every arm")
_METRICS = flags.DEFINE_list(
    "metrics", None, "metric keys to report (default: eval/* and reward/mean)"
)
_RUNS_DIR = flags.DEFINE_string("runs_dir", None, "where runs live (default: <out>/runs)")
_BAND = flags.DEFINE_enum("band", "minmax", ["minmax", "std"], "curve band across seeds")
_RESAMPLES = flags.DEFINE_integer("resamples", 10_000, "bootstrap resamples")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "train nothing; report finished runs")
_TITLE = flags.DEFINE_string("title", None, "report title (default: the --out folder name)")
_BASELINE = flags.DEFINE_string(
    "baseline", None, "an arm's name: report every other arm's difference from it per example"
)
flags.mark_flag_as_required("out")


def _comparison():
    """(arms, seeds, metrics, baseline) from --spec and the command line (the command line
    wins)."""
    from rlpt_jax import comparison

    spec = (
        comparison.load_spec(_SPEC.value)
        if _SPEC.value
        else {"arms": [], "seeds": None, "baseline": None}
    )
    common = tuple(_OVERRIDE.value)
    arms = [comparison.Arm(a.name, a.config, common + a.overrides) for a in spec["arms"]]
    arms += [comparison.parse_arm(text, common) for text in _ARM.value]
    try:
        seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else spec["seeds"] or [0]
    except ValueError as e:
        raise app.UsageError(f"--seeds must be integers, e.g. --seeds=0,1,2: {e}") from e
    baseline = _BASELINE.value or spec["baseline"]
    return arms, seeds, _METRICS.value or spec.get("metrics"), baseline


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; quote each --arm='...'")
    from absl import logging

    from rlpt_jax import comparison

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # matplotlib's font cache notes, at INFO
    try:
        arms, seeds, metrics, baseline = _comparison()
        comparison.check_comparison(arms, seeds)
        if baseline:
            comparison.check_baseline(arms, baseline)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from e
    try:
        summary, failed = _compare(arms, seeds, metrics, baseline)
    except (RuntimeError, FileNotFoundError, KeyError) as e:  # no run finished, bad metric
        sys.exit(f"error: {e.args[0] if e.args else e}")
    out = os.path.join(_OUT.value, comparison.RESULTS_NAME)
    print(f"wrote {out} ({len(summary['arms'])} arms × {len(seeds)} seeds)")
    if failed:
        sys.exit(f"{len(failed)} run(s) failed, see their train.log: {', '.join(failed)}")


def _compare(arms, seeds, metrics, baseline):
    from rlpt_jax import comparison

    return comparison.compare(
        arms,
        seeds,
        _OUT.value,
        runs_dir=_RUNS_DIR.value,
        metrics=metrics,
        band=_BAND.value,
        resamples=_RESAMPLES.value,
        train=not _REPORT_ONLY.value,
        title=_TITLE.value,
        command=shlex.join(["python", "launch/compare.py", *sys.argv[1:]]),
        baseline=baseline,
    )


if __name__ == "__main__":
    app.run(main)
