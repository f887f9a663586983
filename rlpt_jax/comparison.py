"""Comparisons: config variants ("arms") × seeds, trained, then tabulated and plotted.

An **arm** is a name, a config (``configs/<file>.py:<variant>``) and overrides written as
``key=value`` (absl's ``--config.key=value`` without the prefix). A comparison trains
every arm once per seed (the override ``seed=<s>``), each run in
``<runs_dir>/<arm>/seed<s>/`` (``runs_dir`` defaults to ``<out>/runs``) through
``launch/train.py`` in a subprocess, so one crashed run does not stop the others. Then it
writes, in ``<out>``:

* ``results.md``: per metric, the final value (the last finite logged one) as mean ± std over
  seeds (sample std, ddof=1) and a 95% percentile-bootstrap CI of the mean; the arms; the
  runs with their wall time and exact ``launch/train.py`` commands; the git commit and
  the machine (CPU model, AVX-512 / AMX, GPUs) the runs were trained on.
  With a ``baseline`` arm (``--baseline``, or the spec's ``"baseline"``), each metric's table
  is followed by every other arm's difference from it, paired by held-out example
  (:func:`paired_difference`): far tighter than two overlapping CIs when both arms answer
  mostly the same examples alike.
* ``summary.json``: every number of the report, plus the learning curves.
* ``curve_<metric>.png``: x = step, the mean over seeds as a line and the min–max (or
  ±std) band across seeds, one colour per arm.
* ``spec.json``: the comparison as run, to repeat it:
  ``python launch/compare.py --spec=<out>/spec.json --out=<out>``.

Only ``results.md``, ``summary.json``, ``spec.json`` and the PNGs are meant to be
committed (e.g. under ``docs/results/<name>/``); ``runs/`` holds checkpoints.

Example (from the repository root)::

    python launch/compare.py --out=docs/results/rlpt_vs_ntp --seeds=0,1,2 \\
        --arm='rlpt=configs/rlpt_qwen.py:cpu' \\
        --arm='ntp=configs/rlpt_qwen.py:cpu method=ntp'

or with a spec file (``--seeds``/``--metrics``/``--arm``/``--override`` on the command
line add to or replace its fields)::

    {"seeds": [0, 1, 2],
     "metrics": ["eval/next_segment_acc", "eval/heldout_nll"],
     "overrides": ["export_hf=False"],
     "arms": [{"name": "rlpt", "config": "configs/rlpt_qwen.py:cpu", "overrides": []},
              {"name": "ntp", "config": "configs/rlpt_qwen.py:cpu",
               "overrides": ["method=ntp"]}]}

An override's value may contain ``{seed}``, replaced by the run's seed: e.g. the RLVR stage
of ``launch/pipeline.py`` starts each seed from that seed's RLPT export
(``model.path=runs/rlpt/seed{seed}/hf_export``).

**Resumable.** A run whose ``final_metrics.json`` exists is skipped (it must have been
made with the same config and overrides; otherwise this is an error). A run stopped
half-way is started again in its folder and ``loop.run`` resumes it from its checkpoints.

**Deterministic.** Runs are functions of their seeds (``rlpt_jax.train.loop``); the
bootstrap uses a fixed numpy seed; the same runs give the same numbers in ``results.md``.

**CI over held-out examples.** If a run wrote ``<workdir>/eval_examples.jsonl``, the
bootstrap resamples held-out examples; otherwise it resamples seeds (the table says which).
The file has one JSON line per evaluation and metric, written by
``write_eval_examples(workdir, step, metric, values)`` (process 0 only)::

    {"step": 8, "metric": "eval/next_segment_acc", "values": [1.0, 0.0, 0.0, 1.0]}

``values``: one number per held-out example, in the same example order in every run (the
held-out split depends on the data seeds, not on ``seed``, so seeds share their
examples); non-finite values are written as ``null`` and excluded (counted). A step
written twice (a resumed run) keeps its last line. The CI is used when every seed of an
arm has values for the step of the final value; the statistic is the unweighted mean
over seeds and examples, with examples resampled jointly across seeds (paired; seeds with
different example counts are pooled instead). For a metric averaged over tokens (e.g.
``eval/heldout_nll``) write per-example means: the CI is then of the per-example mean.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlpt_jax.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EVAL_EXAMPLES_NAME = "eval_examples.jsonl"
FINAL_NAME = "final_metrics.json"
RECORD_NAME = "compare_run.json"
# In an override's value, replaced by the run's seed (e.g. a per-seed model.path).
SEED_FIELD = "{seed}"
SUMMARY_NAME = "summary.json"
RESULTS_NAME = "results.md"
SPEC_NAME = "spec.json"
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ----------------------------------------------------------------------------- arms


@dataclasses.dataclass(frozen=True)
class Arm:
    """One config variant: ``config`` is ``path.py[:variant]``, ``overrides`` ``key=value``."""

    name: str
    config: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise ValueError(f"arm name {self.name!r}: use letters, digits, '_', '-', '.'")
        for o in self.overrides:
            _split_override(o)


def _split_override(text: str) -> tuple[str, str]:
    key, sep, value = text.removeprefix("--config.").partition("=")
    if not sep or not _KEY_RE.match(key):
        raise ValueError(f"override {text!r} is not key=value (e.g. train.steps=4)")
    if key == "seed":
        raise ValueError("do not override seed in an arm; list the seeds with --seeds")
    return key, value


def parse_arm(text: str, common: Sequence[str] = ()) -> Arm:
    """``'name=configs/x.py:variant key=value ...'`` → Arm (``common`` overrides first)."""
    words = shlex.split(text)
    name, sep, config = words[0].partition("=") if words else ("", "", "")
    if not sep or not config:
        raise ValueError(f"arm {text!r}: expected 'name=configs/<file>.py:<variant> key=value ...'")
    return Arm(name, config, tuple(common) + tuple(words[1:]))


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """A spec file (module docstring) → ``{"arms": [Arm], "seeds": [...], "metrics": [...]}``."""
    spec = json.loads(Path(path).read_text())
    unknown = set(spec) - {"arms", "seeds", "metrics", "overrides", "baseline"}
    if unknown:
        raise ValueError(f"{path}: unknown fields {sorted(unknown)}")
    common = tuple(spec.get("overrides", ()))
    arms = [
        Arm(a["name"], a["config"], common + tuple(a.get("overrides", ())))
        for a in spec.get("arms", ())
    ]
    return {
        "arms": arms,
        "seeds": spec.get("seeds"),
        "metrics": spec.get("metrics"),
        "baseline": spec.get("baseline"),
    }


def write_spec(
    out: Path, arms: Sequence[Arm], seeds: Sequence[int], metrics, baseline: str | None = None
) -> Path:
    spec = {
        "seeds": list(seeds),
        "metrics": list(metrics) if metrics else None,
        "arms": [dataclasses.asdict(a) | {"overrides": list(a.overrides)} for a in arms],
    }
    if baseline:
        spec["baseline"] = baseline
    path = Path(out) / SPEC_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def config_path(arm: Arm) -> Path:
    """The arm's config file: relative to the working directory, else to the repository."""
    file = arm.config.split(":", 1)[0]
    for base in (Path.cwd(), ROOT):
        if (base / file).is_file():
            return (base / file).resolve()
    raise FileNotFoundError(f"arm {arm.name!r}: config file {file!r} not found")


def check_arm(arm: Arm) -> None:
    """Load the arm's config and check that every override names an existing field."""
    path = config_path(arm)
    spec = importlib.util.spec_from_file_location(f"_compare_cfg_{arm.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, _, variant = arm.config.partition(":")
    cfg = module.get_config(variant or None)
    for o in arm.overrides:
        node = cfg
        key = _split_override(o)[0]
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ValueError(f"arm {arm.name!r}: {arm.config} has no config field {key!r}")
            node = node[part]


# ----------------------------------------------------------------------------- runs


def run_dir(runs_dir: Path, arm: Arm, seed: int) -> Path:
    return Path(runs_dir) / arm.name / f"seed{seed}"


def train_command(arm: Arm, seed: int, workdir: Path) -> list[str]:
    """The ``launch/train.py`` command of one run (paths inside the repository relative)."""
    _, _, variant = arm.config.partition(":")
    cfg = shown_path(config_path(arm)) + (f":{variant}" if variant else "")
    overrides = [
        f"--config.{o.removeprefix('--config.').replace(SEED_FIELD, str(seed))}"
        for o in arm.overrides
    ]
    return [
        "python",
        "launch/train.py",
        f"--config={cfg}",
        *overrides,
        f"--config.seed={seed}",
        f"--workdir={shown_path(workdir)}",
    ]


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_record(workdir: Path) -> dict[str, Any] | None:
    path = Path(workdir) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def _check_same_arm(workdir: Path, arm: Arm) -> None:
    rec = read_record(workdir)
    if rec is None:
        return
    if rec["config"] != arm.config or list(rec["overrides"]) != list(arm.overrides):
        raise ValueError(
            f"{workdir} was trained as {rec['config']} {rec['overrides']}, not as arm "
            f"{arm.name!r} = {arm.config} {list(arm.overrides)}; use another --out or "
            f"--runs_dir, another arm name, or delete that folder"
        )


def train_run(arm: Arm, seed: int, workdir: Path) -> dict[str, Any]:
    """Run ``launch/train.py`` for (arm, seed) in ``workdir``; append the attempt to its
    record (``compare_run.json``: command, wall time, return code, commit, machine)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(arm, seed, workdir)
    argv = [sys.executable, *cmd[1:]]
    t0 = time.time()
    with open(workdir / "train.log", "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    rec = read_record(workdir) or {"config": arm.config, "overrides": list(arm.overrides)}
    rec["command"] = shlex.join(cmd)
    attempt = {"wall_s": time.time() - t0, "returncode": rc, "git_commit": git_commit()}
    rec.setdefault("attempts", []).append(attempt | {"machine": machine_info()})
    (workdir / RECORD_NAME).write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def train_all(arms: Sequence[Arm], seeds: Sequence[int], runs_dir: Path) -> list[str]:
    """Train every (arm, seed) not finished yet; return the failed runs' folders."""
    from tqdm import tqdm

    failed = []
    jobs = [(a, s) for a in arms for s in seeds]
    bar = tqdm(jobs, desc="runs", unit="run")
    for arm, seed in bar:
        workdir = run_dir(runs_dir, arm, seed)
        bar.set_postfix_str(f"{arm.name} seed {seed}")
        _check_same_arm(workdir, arm)
        if (workdir / FINAL_NAME).is_file():
            bar.write(f"skip {shown_path(workdir)}: finished")
            continue
        rec = train_run(arm, seed, workdir)
        if rec["attempts"][-1]["returncode"] != 0:
            log = workdir / "train.log"
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
            bar.write(f"FAILED {shown_path(workdir)} (log: {log}):\n{tail}")
            failed.append(str(workdir))
    return failed


# ----------------------------------------------------------------------------- examples


def write_eval_examples(
    workdir: str | os.PathLike, step: int, metric: str, values: Sequence[float]
) -> Path:
    """Append one evaluation's per-example values of ``metric`` to
    ``workdir/eval_examples.jsonl`` (format in the module docstring); returns the path."""
    path = Path(workdir) / EVAL_EXAMPLES_NAME
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    rec = {
        "step": int(step),
        "metric": str(metric),
        "values": [float(v) if math.isfinite(v) else None for v in flat],
    }
    if path.is_file():  # a writer killed mid-line leaves a partial line: cut it first
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    return path


def read_eval_examples(workdir: str | os.PathLike) -> dict[str, dict[int, np.ndarray]]:
    """``{metric: {step: values}}`` from a run's ``eval_examples.jsonl`` (``{}`` if none);
    ``null`` → NaN; the last line for a (metric, step) wins."""
    path = Path(workdir) / EVAL_EXAMPLES_NAME
    out: dict[str, dict[int, np.ndarray]] = {}
    if not path.is_file():
        return out
    for rec in read_jsonl(path):
        vals = [math.nan if v is None else float(v) for v in rec["values"]]
        out.setdefault(rec["metric"], {})[int(rec["step"])] = np.asarray(vals)
    return out


# ----------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_std of no values")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def bootstrap_ci(
    x: Any, *, level: float = CI_LEVEL, resamples: int = 10_000, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x``.

    ``x[U]`` or ``x[G, U]``: units ``U`` (examples, or seeds) are resampled with replacement,
    jointly across the groups ``G`` (seeds sharing the same examples); the statistic is the
    mean over all of ``x``, i.e. the mean over units of the per-unit group means ``m``. For
    ``r`` resamples of indices ``i_1..i_U``: θ*_r = (1/U) Σ_j m[i_j]; the CI is the
    ((1-level)/2, (1+level)/2) quantiles of θ*. Deterministic for a given ``seed``.
    """
    m = np.asarray(x, dtype=np.float64)
    m = m.mean(axis=0) if m.ndim == 2 else m.reshape(-1)
    if m.size < 2:
        raise ValueError(f"a bootstrap needs at least 2 units; got {m.size}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // m.size)  # bounds memory at ~8 MB of indices
    stats = np.concatenate(
        [
            m[rng.integers(0, m.size, size=(min(chunk, resamples - s), m.size))].mean(axis=1)
            for s in range(0, resamples, chunk)
        ]
    )
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- aggregation


def metric_series(records: Sequence[dict], metric: str) -> dict[int, float]:
    """``{step: value}`` of ``metric`` (a step logged twice keeps its last value; null → NaN)."""
    out = {}
    for rec in records:
        if metric in rec:
            v = rec[metric]
            out[int(rec["step"])] = math.nan if v is None else float(v)
    return dict(sorted(out.items()))


def load_run(workdir: Path) -> dict[str, Any] | None:
    """A finished run's records and final metrics (None if it has no final_metrics.json)."""
    if not (workdir / FINAL_NAME).is_file():
        return None
    records = read_jsonl(workdir / "metrics.jsonl")
    return {
        "records": records,
        "final": json.loads((workdir / FINAL_NAME).read_text()),
        "examples": read_eval_examples(workdir),
        "record": read_record(workdir),
    }


def final_point(run: dict[str, Any], metric: str) -> tuple[int, float] | None:
    """(step, value) of the last finite logged value of ``metric``, or None."""
    finite = [(s, v) for s, v in metric_series(run["records"], metric).items() if math.isfinite(v)]
    return finite[-1] if finite else None


def default_metrics(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The ``eval/*`` keys of any run's final metrics, then ``reward/mean`` if among them."""
    keys = {k for r in runs for k in r["final"]}
    return sorted(k for k in keys if k.startswith("eval/")) + (
        ["reward/mean"] if "reward/mean" in keys else []
    )


def _final_points(runs: dict[int, dict[str, Any]], metric: str):
    """``{seed: (step, value)}`` of each run's final point of ``metric``, and per seed the
    per-example values logged at that step (None where none were)."""
    points = {s: p for s, r in runs.items() if (p := final_point(r, metric)) is not None}
    examples = [runs[s]["examples"].get(metric, {}).get(step) for s, (step, _) in points.items()]
    return points, examples


def summarize_metric(
    runs: dict[int, dict[str, Any]], metric: str, resamples: int = 10_000
) -> dict[str, Any]:
    """Final values over seeds: n, per-seed values, mean ± std, 95% CI and what it is over."""
    points, per_example = _final_points(runs, metric)
    out: dict[str, Any] = {"n": len(points), "values": {str(s): v for s, (_, v) in points.items()}}
    if not points:
        return out | {"mean": None, "std": None, "ci": None, "ci_over": None}
    finals = [v for _, v in points.values()]
    out["mean"], out["std"] = mean_std(finals)
    if all(v is not None for v in per_example):
        lengths = {len(v) for v in per_example}
        mat = np.stack(per_example) if len(lengths) == 1 else np.concatenate(per_example)[None]
        keep = np.isfinite(mat).all(axis=0)
        units, over, extra = mat[:, keep], "examples", {"excluded_examples": int((~keep).sum())}
    else:
        units, over, extra = np.asarray(finals)[None], "seeds", {}
    n_units = units.shape[1]
    ci = bootstrap_ci(units, resamples=resamples) if n_units >= 2 else None
    return out | {"ci": ci, "ci_over": over if ci else None, "ci_units": n_units} | extra


def example_means(runs: dict[int, dict[str, Any]], metric: str) -> np.ndarray | None:
    """Per held-out example, the mean over seeds of its value at each seed's final point of
    ``metric``; None unless every seed with a final point logged its examples there, all
    of the same length."""
    _, values = _final_points(runs, metric)
    if not values or any(v is None for v in values) or len({len(v) for v in values}) != 1:
        return None
    return np.stack(values).mean(axis=0)


def paired_difference(
    runs: dict[int, dict[str, Any]],
    base_runs: dict[int, dict[str, Any]],
    metric: str,
    resamples: int = 10_000,
) -> dict[str, Any] | None:
    """An arm minus the baseline arm, paired by held-out example: per example, the arm's
    seed mean minus the baseline's (the examples are the same in every run), their mean,
    a percentile-bootstrap CI over examples, and how many examples are higher or lower.
    None where either side has no per-example values or their counts differ."""
    arm, base = example_means(runs, metric), example_means(base_runs, metric)
    if arm is None or base is None or arm.shape != base.shape:
        return None
    d = arm - base
    keep = np.isfinite(d)
    d = d[keep]
    if d.size < 2:
        return None
    return {
        "mean": float(d.mean()),
        "ci": list(bootstrap_ci(d, resamples=resamples)),
        "examples": int(d.size),
        "higher": int((d > 0).sum()),
        "lower": int((d < 0).sum()),
        "excluded_examples": int((~keep).sum()),
    }


def curves(runs: dict[int, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Learning curves of ``metric``: the union of logged steps, and per seed its values
    at those steps (None where that seed did not log it)."""
    series = {s: metric_series(r["records"], metric) for s, r in runs.items()}
    steps = sorted({st for ser in series.values() for st in ser})
    return {
        "steps": steps,
        "values": {
            str(s): [_finite_or_none(ser.get(st)) for st in steps] for s, ser in series.items()
        },
    }


def _finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def summarize(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    runs_dir: Path,
    metrics: Sequence[str] | None = None,
    resamples: int = 10_000,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Every number of the report, from the finished runs under ``runs_dir``; with
    ``baseline`` (an arm's name), also every other arm's :func:`paired_difference` from it."""
    loaded = {
        a.name: {s: r for s in seeds if (r := load_run(run_dir(runs_dir, a, s))) is not None}
        for a in arms
    }
    all_runs = [r for by_seed in loaded.values() for r in by_seed.values()]
    if not all_runs:
        raise FileNotFoundError(f"no finished run under {runs_dir} (no {FINAL_NAME})")
    metrics = list(metrics) if metrics else default_metrics(all_runs)
    logged = {k for r in all_runs for rec in r["records"] for k in rec}
    missing = [m for m in metrics if m not in logged]
    if missing:
        raise KeyError(f"metrics {missing} were logged by no run; logged: {sorted(logged)}")
    summary = {
        "format": 1,
        "seeds": list(seeds),
        "metrics": metrics,
        "ci": {"level": CI_LEVEL, "resamples": resamples, "numpy_seed": BOOTSTRAP_SEED},
        "arms": [
            _summarize_arm(a, seeds, runs_dir, loaded[a.name], metrics, resamples) for a in arms
        ],
    }
    if baseline:
        check_baseline(arms, baseline)
        summary["baseline"] = baseline
        for arm in summary["arms"]:
            if arm["name"] != baseline:
                runs, base = loaded[arm["name"]], loaded[baseline]
                arm["vs_baseline"] = {
                    m: paired_difference(runs, base, m, resamples) for m in metrics
                }
    return _jsonable(summary)


def check_baseline(arms: Sequence[Arm], baseline: str) -> None:
    names = [a.name for a in arms]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not an arm; arms: {names}")


def _summarize_arm(arm, seeds, runs_dir, runs, metrics, resamples) -> dict[str, Any]:
    return {
        "name": arm.name,
        "config": arm.config,
        "overrides": list(arm.overrides),
        "runs": [_run_row(arm, s, runs_dir, runs.get(s)) for s in seeds],
        "metrics": {m: summarize_metric(runs, m, resamples) for m in metrics},
        "curves": {m: curves(runs, m) for m in metrics},
    }


def _run_row(arm: Arm, seed: int, runs_dir: Path, run: dict | None) -> dict[str, Any]:
    workdir = run_dir(runs_dir, arm, seed)
    rec = run["record"] if run else read_record(workdir)
    attempts = (rec or {}).get("attempts", [])
    steps = [int(r["step"]) for r in run["records"]] if run else []
    return {
        "seed": seed,
        "workdir": shown_path(workdir),
        "status": "finished" if run else ("failed" if attempts else "missing"),
        "steps": max(steps, default=None),
        "wall_s": sum(a["wall_s"] for a in attempts) if attempts else None,
        "command": shlex.join(train_command(arm, seed, workdir)),
        "git_commits": sorted({a["git_commit"] for a in attempts if a.get("git_commit")}),
        "machines": _unique([a["machine"] for a in attempts if a.get("machine")]),
    }


def _unique(items: Sequence[dict]) -> list[dict]:
    out = []
    for it in items:
        if it not in out:
            out.append(it)
    return out


# ----------------------------------------------------------------------------- provenance


def git_commit(root: Path = ROOT) -> str | None:
    """``git rev-parse HEAD``, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """CPU model and core count, AVX-512F / AMX support (None if unknown), GPUs."""
    cpu, flags = None, None
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and cpu is None:
            cpu = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "avx512f": None if flags is None else "avx512f" in flags,
        "amx": None if flags is None else any(f.startswith("amx") for f in flags),
        "gpus": _gpus(),
    }


def _gpus() -> list[str]:
    """GPU names from nvidia-smi (without starting JAX, which would claim GPU memory)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- report


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"


def _ci_text(s: dict[str, Any]) -> tuple[str, str]:
    if not s.get("ci"):
        return "–", "–"
    lo, hi = s["ci"]
    over = f"{s['ci_units']} {s['ci_over']}"
    if s.get("excluded_examples"):
        over += f" ({s['excluded_examples']} non-finite excluded)"
    return f"[{_fmt(lo)}, {_fmt(hi)}]", over


def format_table(summary: dict[str, Any], metric: str) -> str:
    """The markdown table of one metric: arm, seeds, final mean ± std, 95% CI, CI over."""
    rows = ["| arm | seeds | final (mean ± std) | 95% CI | CI over |", "|---|---|---|---|---|"]
    for arm in summary["arms"]:
        s = arm["metrics"][metric]
        ci, over = _ci_text(s)
        final = "–" if s["mean"] is None else f"{_fmt(s['mean'])} ± {_fmt(s['std'])}"
        rows.append(f"| {arm['name']} | {s['n']} | {final} | {ci} | {over} |")
    return "\n".join(rows)


def format_baseline_table(summary: dict[str, Any], metric: str) -> str | None:
    """The markdown table of the arms' paired differences from the baseline in ``metric``
    (None without a baseline, or when no arm has one: a training metric, say)."""
    baseline = summary.get("baseline")
    others = [a for a in summary["arms"] if a["name"] != baseline]
    if not baseline or all(a.get("vs_baseline", {}).get(metric) is None for a in others):
        return None
    rows = [
        f"Difference from `{baseline}`, paired by held-out example (each example's mean over "
        "seeds, arm minus baseline; 95% CI: percentile bootstrap over examples):",
        "",
        "| arm | difference | 95% CI | examples higher / lower / of |",
        "|---|---|---|---|",
    ]
    for arm in summary["arms"]:
        if arm["name"] == baseline:
            continue
        d = arm.get("vs_baseline", {}).get(metric)
        if d is None:
            rows.append(f"| {arm['name']} | – | – | no per-example values on both sides |")
            continue
        lo, hi = d["ci"]
        rows.append(
            f"| {arm['name']} | {d['mean']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
            f"{d['higher']} / {d['lower']} / {d['examples']} |"
        )
    return "\n".join(rows)


def _machine_text(m: dict[str, Any]) -> str:
    yes = {True: "yes", False: "no", None: "unknown"}
    gpus = ", ".join(m["gpus"]) or "none"
    return (
        f"{m['cpu']}, {m['cores']} cores, AVX-512F {yes[m['avx512f']]}, "
        f"AMX {yes[m['amx']]}; GPUs: {gpus}"
    )


def format_results(summary: dict[str, Any]) -> str:
    """``results.md``: one section per metric (table + curve), arms, runs, provenance."""
    ci = summary["ci"]
    out = [
        f"# {summary.get('title', 'Comparison')}",
        "",
        f"Reproduce: `{summary.get('reproduce', 'python launch/compare.py --spec=spec.json')}`",
        "",
    ]
    if summary.get("command"):
        out += [f"Written by: `{summary['command']}`", ""]
    out += [
        "Final value of each metric (its last logged value) as mean ± std over seeds (sample "
        f"std); {ci['level']:.0%} CI: percentile bootstrap of the mean ({ci['resamples']} "
        f"resamples, numpy seed {ci['numpy_seed']}) over held-out examples when the runs "
        "wrote `eval_examples.jsonl`, otherwise over seeds (column *CI over*).",
    ]
    for metric in summary["metrics"]:
        out += ["", f"## {metric}", "", format_table(summary, metric), ""]
        if (paired := format_baseline_table(summary, metric)) is not None:
            out += [paired, ""]
        out.append(f"![{metric}]({curve_file(metric)})")
    out += ["", "## Arms", "", "| arm | config | overrides |", "|---|---|---|"]
    for arm in summary["arms"]:
        ovr = " ".join(f"`{o}`" for o in arm["overrides"]) or "–"
        out.append(f"| {arm['name']} | `{arm['config']}` | {ovr} |")
    out += ["", "## Runs", "", "| arm | seed | status | steps | wall time | command |"]
    out.append("|---|---|---|---|---|---|")
    for arm in summary["arms"]:
        for r in arm["runs"]:
            wall = "–" if r["wall_s"] is None else f"{r['wall_s']:.0f} s"
            steps = "–" if r["steps"] is None else r["steps"]
            row = f"| {arm['name']} | {r['seed']} | {r['status']} | {steps} | {wall} |"
            out.append(f"{row} `{r['command']}` |")
    out += ["", "## Provenance", ""] + _provenance_lines(summary)
    return "\n".join(out) + "\n"


def _provenance_lines(summary: dict[str, Any]) -> list[str]:
    runs = [r for arm in summary["arms"] for r in arm["runs"]]
    commits = sorted({c for r in runs for c in r["git_commits"]})
    machines = _unique([m for r in runs for m in r["machines"]])
    lines = [f"- runs trained at commit {', '.join(f'`{c}`' for c in commits) or 'unknown'}"]
    lines += [f"- trained on: {_machine_text(m)}" for m in machines]
    if not machines:
        lines.append("- trained on: unknown (the runs have no compare_run.json)")
    return lines


def curve_file(metric: str) -> str:
    return "curve_" + "".join(c if c.isalnum() or c in "-." else "_" for c in metric) + ".png"


def draw_curves(ax, summary: dict[str, Any], metric: str, band: str = "minmax") -> None:
    """Draw ``metric``'s learning curves on a matplotlib ``ax``: per arm, the mean over
    seeds as a line and a band across seeds (``"minmax"``, or ``"std"`` for mean ± std)."""
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std'; got {band!r}")
    for i, arm in enumerate(summary["arms"]):
        c = arm["curves"][metric]
        if not c["steps"] or not c["values"]:
            continue
        steps = np.asarray(c["steps"])
        vals = np.array(
            [[np.nan if v is None else v for v in vs] for vs in c["values"].values()], float
        )
        ok = np.isfinite(vals).any(axis=0)
        steps, vals = steps[ok], vals[:, ok]
        mean = np.nanmean(vals, axis=0)
        if band == "std" and vals.shape[0] > 1:
            sd = np.nanstd(vals, axis=0, ddof=1)
            lo, hi = mean - sd, mean + sd
        else:
            lo, hi = np.nanmin(vals, axis=0), np.nanmax(vals, axis=0)
        color, label = f"C{i}", f"{arm['name']} ({vals.shape[0]} seeds)"
        if len(steps) < 30:  # few points (sparse evaluations): the band as error bars too
            yerr = np.stack([mean - lo, hi - mean])
            ax.errorbar(steps, mean, yerr=yerr, color=color, label=label, marker="o", capsize=3)
        else:
            ax.plot(steps, mean, color=color, label=label)
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(f"{metric} (band: {'min–max' if band == 'minmax' else '±1 std'} over seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def plot_curves(summary: dict[str, Any], out: Path, band: str = "minmax") -> list[Path]:
    """One PNG per metric (``curve_<metric>.png`` in ``out``), pyplot-free (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for metric in summary["metrics"]:
        fig = Figure(figsize=(7.0, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        draw_curves(fig.add_subplot(), summary, metric, band)
        path = Path(out) / curve_file(metric)
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _jsonable(x: Any) -> Any:
    """NaN/inf → None, tuples → lists, recursively (summary.json stays strict JSON)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_report(summary: dict[str, Any], out: Path, band: str = "minmax") -> list[Path]:
    """``summary.json``, ``results.md`` and the curve PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = _jsonable(summary)
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    (out / RESULTS_NAME).write_text(format_results(summary))
    return [out / SUMMARY_NAME, out / RESULTS_NAME, *plot_curves(summary, out, band)]


def load_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """A comparison folder's ``summary.json``, or, if there is none, the summary of the
    finished runs in its ``runs/`` per its ``spec.json`` (nothing is trained)."""
    folder = Path(folder)
    if (folder / SUMMARY_NAME).is_file():
        return json.loads((folder / SUMMARY_NAME).read_text())
    if (folder / SPEC_NAME).is_file() and (folder / "runs").is_dir():
        spec = load_spec(folder / SPEC_NAME)
        summary = summarize(
            spec["arms"], spec["seeds"], folder / "runs", spec["metrics"], baseline=spec["baseline"]
        )
        return summary | {"title": folder.name}
    raise FileNotFoundError(
        f"{folder} has no {SUMMARY_NAME} (nor {SPEC_NAME} and runs/); make one with "
        f"`python launch/compare.py --out={folder} --arm=... --seeds=...`"
    )


# ----------------------------------------------------------------------------- entry


def compare(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    runs_dir: str | os.PathLike | None = None,
    metrics: Sequence[str] | None = None,
    band: str = "minmax",
    resamples: int = 10_000,
    train: bool = True,
    title: str | None = None,
    command: str | None = None,
    baseline: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Train what is not finished (unless ``train=False``), then write the report.

    Returns the summary and the folders of runs that failed in this call.
    """
    out = Path(out).resolve()
    runs_dir = Path(runs_dir).resolve() if runs_dir else out / "runs"
    check_comparison(arms, seeds)
    if baseline:
        check_baseline(arms, baseline)
    out.mkdir(parents=True, exist_ok=True)
    write_spec(out, arms, seeds, metrics, baseline)
    failed = train_all(arms, seeds, runs_dir) if train else []
    if failed and len(failed) == len(arms) * len(seeds):
        raise RuntimeError(f"every run failed; see the train.log in {', '.join(failed)}")
    summary = summarize(arms, seeds, runs_dir, metrics, resamples, baseline)
    summary["title"] = title or out.name
    summary["reproduce"] = _reproduce(out, runs_dir)
    summary["command"] = command
    write_report(summary, out, band)
    return summary, failed


def check_comparison(arms: Sequence[Arm], seeds: Sequence[int]) -> None:
    """Unique arm names, seeds given once, config files found, override keys existing."""
    if not arms:
        raise ValueError("no arms: give --arm='name=configs/x.py:variant ...' or --spec=file")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique; got {names}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list without repeats; got {list(seeds)}")
    for arm in arms:
        check_arm(arm)


def _reproduce(out: Path, runs_dir: Path) -> str:
    cmd = f"python launch/compare.py --spec={shown_path(out / SPEC_NAME)} --out={shown_path(out)}"
    if runs_dir != out / "runs":
        cmd += f" --runs_dir={shown_path(runs_dir)}"
    return cmd
