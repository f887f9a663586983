"""launch/compare.py and rlpt_jax.comparison: statistics against hand-computed values, the
report from hand-made runs, and one end-to-end comparison (2 arms × 2 seeds) with resume."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlpt_jax import comparison as C

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_ci_of_two_values_spans_both():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% quantiles are 0 and 1.
    assert C.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_ci_of_constant_is_that_constant():
    assert C.bootstrap_ci([0.25] * 7) == (0.25, 0.25)


def test_bootstrap_resamples_examples_jointly_across_seeds():
    # Each example's seed-mean is 0.5, so every resample's mean is 0.5: the examples are
    # paired across seeds, not resampled per seed (which would give a CI around 0.5).
    assert C.bootstrap_ci([[0.0, 1.0], [1.0, 0.0]]) == (0.5, 0.5)


def test_bootstrap_ci_is_seeded_and_matches_the_normal_approximation():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    lo, hi = C.bootstrap_ci(x)
    assert (lo, hi) == C.bootstrap_ci(x)
    assert (lo, hi) != C.bootstrap_ci(x, seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_needs_two_units():
    with pytest.raises(ValueError, match="at least 2 units"):
        C.bootstrap_ci([1.0])


def test_mean_std_is_the_sample_std():
    assert C.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = C.mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)


# ----------------------------------------------------------------------------- arms


def test_parse_arm_keeps_common_overrides_first():
    arm = C.parse_arm("ntp=configs/rlpt_qwen.py:tiny method=ntp 'judge.mode=a b'", ["x.y=1"])
    assert arm == C.Arm(
        "ntp", "configs/rlpt_qwen.py:tiny", ("x.y=1", "method=ntp", "judge.mode=a b")
    )
    cmd = C.train_command(arm, 3, ROOT / "runs" / "ntp" / "seed3")
    assert cmd[1:] == [
        "launch/train.py",
        "--config=configs/rlpt_qwen.py:tiny",
        "--config.x.y=1",
        "--config.method=ntp",
        "--config.judge.mode=a b",
        "--config.seed=3",
        "--workdir=runs/ntp/seed3",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("configs/rlpt_qwen.py:tiny", "expected 'name=configs"),
        ("a=configs/rlpt_qwen.py:tiny seed=1", "list the seeds with --seeds"),
        ("a=configs/rlpt_qwen.py:tiny steps", "not key=value"),
        ("a/b=configs/rlpt_qwen.py:tiny", "arm name"),
    ],
)
def test_parse_arm_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        C.parse_arm(text)


def test_check_comparison_names_unknown_fields_and_files():
    C.check_comparison([C.parse_arm("a=configs/rlpt_qwen.py:tiny train.steps=1")], [0, 1])
    with pytest.raises(ValueError, match="no config field 'trian.steps'"):
        C.check_comparison([C.parse_arm("a=configs/rlpt_qwen.py:tiny trian.steps=1")], [0])
    with pytest.raises(FileNotFoundError, match="configs/nope.py"):
        C.check_comparison([C.parse_arm("a=configs/nope.py:tiny")], [0])
    with pytest.raises(ValueError, match="unique"):
        C.check_comparison([C.parse_arm("a=configs/rlpt_qwen.py:tiny")] * 2, [0])


def test_spec_file_round_trip(tmp_path):
    arms = [C.parse_arm("a=configs/rlpt_qwen.py:tiny method=ntp")]
    C.write_spec(tmp_path, arms, [0, 2], ["eval/x"])
    spec = C.load_spec(tmp_path / C.SPEC_NAME)
    assert spec == {"arms": arms, "seeds": [0, 2], "metrics": ["eval/x"], "baseline": None}
    C.write_spec(tmp_path, arms, [0], None, baseline="a")
    assert C.load_spec(tmp_path / C.SPEC_NAME)["baseline"] == "a"


# ----------------------------------------------------------------------------- examples


def test_eval_examples_format(tmp_path):
    C.write_eval_examples(tmp_path, 2, "eval/acc", np.array([1.0, 0.0, np.nan]))
    C.write_eval_examples(tmp_path, 4, "eval/acc", [0.0, 1.0, 1.0])
    C.write_eval_examples(tmp_path, 4, "eval/acc", [1.0, 1.0, 1.0])  # a resumed run: last wins
    lines = (tmp_path / C.EVAL_EXAMPLES_NAME).read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 2, "metric": "eval/acc", "values": [1.0, 0.0, None]}
    with open(tmp_path / C.EVAL_EXAMPLES_NAME, "a") as f:
        f.write('{"step": 6, "metric": "eval/acc", "val')  # a writer killed mid-line
    C.write_eval_examples(tmp_path, 6, "eval/acc", [0.5])
    got = C.read_eval_examples(tmp_path)
    assert sorted(got["eval/acc"]) == [2, 4, 6]
    np.testing.assert_array_equal(got["eval/acc"][2], [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(got["eval/acc"][4], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(got["eval/acc"][6], [0.5])


# ----------------------------------------------------------------------------- report


def _fake_run(workdir: Path, rows: list[dict], examples=()) -> None:
    workdir.mkdir(parents=True)
    with open(workdir / "metrics.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    final = {k: v for k, v in rows[-1].items() if k != "step"}
    (workdir / C.FINAL_NAME).write_text(json.dumps(final))
    for step, metric, values in examples:
        C.write_eval_examples(workdir, step, metric, values)


ACC = "eval/next_segment_acc"
ARM_A = C.Arm("a", "configs/rlpt_qwen.py:tiny")
ARM_B = C.Arm("b", "configs/rlpt_qwen.py:tiny", ("method=ntp",))


@pytest.fixture
def fake_runs(tmp_path):
    """Arm a: two seeds with per-example results; arm b: two seeds without, no reward."""
    runs = tmp_path / "runs"
    _fake_run(
        runs / "a" / "seed0",
        [{"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.3, ACC: 0.75}],
        [(2, ACC, [1, 1, 1, 0])],
    )
    _fake_run(
        runs / "a" / "seed1",
        [{"step": 1, "reward/mean": 0.2}, {"step": 2, "reward/mean": 0.5, ACC: 0.5}],
        [(2, ACC, [1, 0, 1, 0])],
    )
    _fake_run(runs / "b" / "seed0", [{"step": 1, "train/loss": 2.0}, {"step": 2, ACC: 0.5}])
    _fake_run(runs / "b" / "seed1", [{"step": 1, "train/loss": 2.0}, {"step": 2, ACC: 0.5}])
    return runs


def test_summary_of_hand_made_runs(fake_runs):
    s = C.summarize([ARM_A, ARM_B], [0, 1], fake_runs)
    assert s["metrics"] == [ACC, "reward/mean"]  # eval/* then reward/mean, by default
    a, b = s["arms"]
    acc = a["metrics"][ACC]
    assert acc["n"] == 2 and acc["values"] == {"0": 0.75, "1": 0.5}
    assert acc["mean"] == 0.625 and acc["std"] == pytest.approx(math.sqrt(2 * 0.125**2))
    # Per-example seed means [1, 0.5, 1, 0], resampled as 4 examples.
    assert acc["ci_over"] == "examples" and acc["ci_units"] == 4
    assert acc["ci"] == list(C.bootstrap_ci([1.0, 0.5, 1.0, 0.0]))
    assert b["metrics"][ACC] | {"values": None} == {
        "n": 2,
        "values": None,
        "mean": 0.5,
        "std": 0.0,
        "ci": [0.5, 0.5],
        "ci_over": "seeds",
        "ci_units": 2,
    }
    assert b["metrics"]["reward/mean"]["n"] == 0 and b["metrics"]["reward/mean"]["mean"] is None
    assert a["curves"]["reward/mean"] == {
        "steps": [1, 2],
        "values": {"0": [0.1, 0.3], "1": [0.2, 0.5]},
    }
    assert [r["status"] for r in a["runs"]] == ["finished", "finished"]
    assert s == C.summarize([ARM_A, ARM_B], [0, 1], fake_runs)  # deterministic


def test_examples_of_only_some_seeds_fall_back_to_seeds(fake_runs):
    (fake_runs / "a" / "seed1" / C.EVAL_EXAMPLES_NAME).unlink()
    acc = C.summarize([ARM_A], [0, 1], fake_runs, [ACC])["arms"][0]["metrics"][ACC]
    assert acc["ci_over"] == "seeds" and acc["ci"] == list(C.bootstrap_ci([0.75, 0.5]))


def test_paired_difference_from_a_baseline_arm(fake_runs):
    # Arm c: one seed, per-example [0, 0, 1, 1] at its last step. Arm a's per-example seed
    # means are [1, 0.5, 1, 0], so a - c = [1, 0.5, 0, -1]: mean 0.125, 2 higher, 1 lower.
    _fake_run(fake_runs / "c" / "seed0", [{"step": 0, ACC: 0.5}], [(0, ACC, [0, 0, 1, 1])])
    arm_c = C.Arm("c", "configs/rlpt_qwen.py:tiny", ("train.steps=0",))
    s = C.summarize([arm_c, ARM_A, ARM_B], [0, 1], fake_runs, [ACC], baseline="c")
    c, a, b = s["arms"]
    assert s["baseline"] == "c" and "vs_baseline" not in c
    assert a["vs_baseline"][ACC] == {
        "mean": 0.125,
        "ci": list(C.bootstrap_ci([1.0, 0.5, 0.0, -1.0])),
        "examples": 4,
        "higher": 2,
        "lower": 1,
        "excluded_examples": 0,
    }
    assert b["vs_baseline"][ACC] is None  # arm b logged no per-example values
    md = C.format_results(s)
    lo, hi = a["vs_baseline"][ACC]["ci"]
    assert f"| a | +0.1250 | [{lo:+.4f}, {hi:+.4f}] | 2 / 1 / 4 |" in md
    assert "| b | – | – | no per-example values on both sides |" in md
    assert md.count("Difference from `c`") == 1  # not under reward/mean: no examples
    s = C.summarize([arm_c, ARM_A], [0, 1], fake_runs, [ACC, "reward/mean"], baseline="c")
    assert C.format_results(s).count("Difference from `c`") == 1
    with pytest.raises(ValueError, match="baseline 'z' is not an arm"):
        C.summarize([ARM_A], [0, 1], fake_runs, [ACC], baseline="z")


def test_unknown_metric_is_an_error(fake_runs):
    with pytest.raises(KeyError, match="eval/nope"):
        C.summarize([ARM_A], [0, 1], fake_runs, ["eval/nope"])


def test_report_files(fake_runs, tmp_path):
    out = tmp_path / "report"
    summary = C.summarize([ARM_A, ARM_B], [0, 1, 2], fake_runs)
    paths = C.write_report(summary, out)
    md = (out / C.RESULTS_NAME).read_text()
    assert "| a | 2 | 0.6250 ± 0.1768 |" in md and "| 4 examples |" in md
    assert "| b | 2 | 0.5000 ± 0.0000 | [0.5000, 0.5000] | 2 seeds |" in md
    assert "| b | 0 | – | – | – |" in md  # arm b logged no reward
    assert "| a | 2 | missing |" in md  # seed 2 was never run
    assert f"![{ACC}](curve_eval_next_segment_acc.png)" in md
    for png in [p for p in paths if p.suffix == ".png"]:
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert C.load_summary(out) == summary


def test_finished_run_of_another_arm_is_an_error(fake_runs):
    rec = {"config": "configs/at2po_qwen.py:tiny", "overrides": [], "attempts": []}
    (fake_runs / "a" / "seed0" / C.RECORD_NAME).write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="was trained as configs/at2po_qwen.py:tiny"):
        C.train_all([ARM_A], [0], fake_runs)


# ----------------------------------------------------------------------------- end to end


def _compare(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="")  # one CPU device per run, like a laptop
    cmd = [sys.executable, str(ROOT / "launch" / "compare.py"), f"--out={out}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.slow
def test_compare_end_to_end_and_resume(tmp_path, tiny_model):
    out = tmp_path / "rlpt_vs_ntp"
    args = [
        "--seeds=0,1",
        "--arm=rlpt=configs/rlpt_qwen.py:tiny",
        "--arm=ntp=configs/rlpt_qwen.py:tiny method=ntp",
        f"--override=model.path={tiny_model}",
        "--override=export_hf=False",
        "--override=checkpoint.save_every=100",  # only the final checkpoint
    ]
    t0 = time.time()
    _compare(out, *args)
    print(f"compare, 2 arms x 2 seeds: {time.time() - t0:.0f} s")
    md = (out / C.RESULTS_NAME).read_text()
    for text in ("| rlpt | 2 |", "| ntp | 2 |", "## eval/next_segment_acc", "## reward/mean"):
        assert text in md, md
    assert "--config.method=ntp --config.seed=1 --workdir=" in md
    summary = json.loads((out / C.SUMMARY_NAME).read_text())
    assert [a["name"] for a in summary["arms"]] == ["rlpt", "ntp"]
    for arm in summary["arms"]:
        assert [r["status"] for r in arm["runs"]] == ["finished", "finished"]
        assert all(r["steps"] == 2 and r["wall_s"] > 0 for r in arm["runs"])
    import matplotlib.image

    for metric in summary["metrics"]:
        png = out / C.curve_file(metric)
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(png).shape[0] > 0

    # Again: every run is skipped, nothing in the runs changes, the numbers are the same.
    before = _snapshot(out / "runs")
    proc = _compare(out, f"--spec={out / C.SPEC_NAME}")
    assert proc.stdout.count("skip ") == 4, proc.stdout
    assert _snapshot(out / "runs") == before
    again = json.loads((out / C.SUMMARY_NAME).read_text())
    assert again["arms"] == summary["arms"]


@pytest.mark.slow
def test_notebook_draws_committed_comparisons(fake_runs, tmp_path, monkeypatch):
    """colabs/learning_curves.ipynb on a folder with one comparison's summary.json and one
    with only spec.json and runs/ (no training either way)."""
    import nbformat
    from nbclient import NotebookClient

    results = tmp_path / "results"
    C.write_report(C.summarize([ARM_A, ARM_B], [0, 1], fake_runs), results / "with_summary")
    C.write_spec(results / "runs_only", [ARM_A, ARM_B], [0, 1], None)
    (results / "runs_only" / "runs").symlink_to(fake_runs)
    monkeypatch.setenv("RLPT_RESULTS", str(results))
    monkeypatch.setenv("XLA_FLAGS", "")
    nb = nbformat.read(ROOT / "colabs" / "learning_curves.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    tables = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    assert tables.count("| a | 2 | 0.6250 ± 0.1768 |") == 2, tables
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


@pytest.mark.slow
def test_failed_runs_are_recorded_and_the_command_fails(tmp_path):
    out = tmp_path / "bad"
    env = dict(os.environ, XLA_FLAGS="")
    cmd = [
        sys.executable,
        "launch/compare.py",
        f"--out={out}",
        "--arm=bad=configs/rlpt_qwen.py:tiny method=bogus",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "every run failed" in proc.stderr and "bad/seed0" in proc.stderr
    rec = C.read_record(out / "runs" / "bad" / "seed0")
    assert rec["attempts"][0]["returncode"] != 0
    assert "bogus" in (out / "runs" / "bad" / "seed0" / "train.log").read_text()


def test_seed_field_in_an_override_is_the_runs_seed(tmp_path):
    """launch/pipeline.py starts each seed's RLVR run from that seed's RLPT export."""
    arm = C.Arm("rlvr", "configs/rlvr_qwen.py:tiny", ("model.path=runs/rlpt/seed{seed}/hf_export",))
    cmd = C.train_command(arm, 3, tmp_path / "w")
    assert "--config.model.path=runs/rlpt/seed3/hf_export" in cmd
    assert "--config.seed=3" in cmd
