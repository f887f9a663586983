"""Exact resume: a run killed with SIGKILL and restarted equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from rlpt_jax.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--config=configs/rlpt_qwen.py:tiny",
    "--config.train.steps=3",
    "--config.eval.every=0",
    "--config.checkpoint.save_every=1",
    "--config.checkpoint.max_to_keep=2",  # the fallback below needs the step before
    "--config.checkpoint.async_save=False",
    "--config.train.kl_to_init=False",  # a metric only: one forward a step less
]


def _cmd(workdir):
    return [sys.executable, str(ROOT / "launch" / "train.py"), *ARGS, f"--workdir={workdir}"]


def _env():
    return dict(os.environ, XLA_FLAGS="")


def _by_step(workdir):
    out = {}
    for r in read_jsonl(workdir / "metrics.jsonl"):  # a re-run step overwrites its line
        out[r["step"]] = {k: v for k, v in r.items() if not k.startswith("perf/") and k != "time"}
    return out


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    full = tmp_path / "full"
    proc = subprocess.run(
        _cmd(full), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    cut = tmp_path / "cut"
    p = subprocess.Popen(
        _cmd(cut), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        ckpt = cut / "checkpoints"
        if (ckpt / "1").is_dir() and (cut / "metrics.jsonl").is_file():
            if any(r["step"] == 1 for r in read_jsonl(cut / "metrics.jsonl")):
                break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (cut / "hf_export").exists()

    proc = subprocess.run(
        _cmd(cut), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from step" in proc.stdout

    a, b = _by_step(full), _by_step(cut)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in (2, 3):
        assert a[step] == b[step], step
    wa = load_file(full / "hf_export" / "model.safetensors")
    wb = load_file(cut / "hf_export" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)

    # Corrupt the latest checkpoint of the finished run: a rerun falls back to the
    # previous step, says so, and recomputes the last step identically.
    step_dir = full / "checkpoints" / "3"
    files = sorted(
        (f for f in step_dir.rglob("*") if f.is_file() and f.stat().st_size > 64),
        key=lambda f: -f.stat().st_size,
    )
    with open(files[0], "r+b") as fh:
        fh.truncate(files[0].stat().st_size // 2)
    proc = subprocess.run(
        _cmd(full), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "restored checkpoint step 2 instead of the latest step 3" in proc.stderr
    assert "resumed from step 2" in proc.stdout
    assert _by_step(full)[3] == a[3]
