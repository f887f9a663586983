"""End to end: 2 steps of RLPT's and NTP's tiny variants through launch/train.py (AT²PO's
two-step run is tests/test_config_leaves.py's, which records its config reads too)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlpt_jax.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _train(workdir: Path, config: str, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, like a user's laptop
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _check_run(workdir: Path, steps: int, keys: tuple[str, ...]):
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for k in keys:
        assert k in records[-1], (k, sorted(records[-1]))
    ckpts = workdir / "checkpoints"
    assert any(p.name.isdigit() for p in ckpts.iterdir())
    export = workdir / "hf_export"
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    assert (export / "tokenizer.json").is_file()
    assert json.loads((workdir / "final_metrics.json").read_text())
    assert list((workdir / "tensorboard").iterdir())


@pytest.mark.slow
def test_rlpt_tiny_two_steps(tmp_path):
    proc = _train(tmp_path / "rlpt", "configs/rlpt_qwen.py:tiny")
    _check_run(
        tmp_path / "rlpt",
        2,
        (
            "reward/mean",
            "train/loss",
            "kl_to_init",
            "eval/next_segment_acc",
            "eval/heldout_nll",
            "perf/tokens_per_s",
        ),
    )
    assert "reward/mean by step" in proc.stdout
    # The plotting command on the finished run writes real PNG images.
    plot = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "plot.py"), f"--workdir={tmp_path / 'rlpt'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plot.returncode == 0, plot.stderr[-3000:]
    pngs = sorted((tmp_path / "rlpt" / "plots").glob("*.png"))
    names = " ".join(p.name for p in pngs)
    for family in ("reward", "kl", "entropy", "response_len"):
        assert family in names, names
    import matplotlib.image

    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        h, w = matplotlib.image.imread(png).shape[:2]
        assert h > 0 and w > 0


@pytest.mark.slow
def test_ntp_baseline_tiny_two_steps(tmp_path):
    _train(tmp_path / "ntp", "configs/rlpt_qwen.py:tiny", "--config.method=ntp")
    _check_run(tmp_path / "ntp", 2, ("train/nll", "train/loss", "eval/heldout_nll"))


@pytest.mark.slow
def test_without_remat_the_run_trains_a_layer_list_and_saves_it_stacked(tmp_path):
    """Without remat the loop trains a list of layers (state.with_layers, the faster update
    step then) and checkpoints them stacked: the checkpoint's export equals the one the run
    wrote from its list, and the run resumes with remat on."""
    from safetensors.numpy import load_file

    from rlpt_jax.checkpoint import read_manifest
    from rlpt_jax.train.export import export_checkpoint
    from rlpt_jax.train.state import STATE_LAYOUT

    work = tmp_path / "ntp"
    args = ("configs/rlpt_qwen.py:tiny", "--config.method=ntp")
    _train(work, *args, "--config.model.remat=False")
    assert read_manifest(work / "checkpoints" / "2")["layout"] == STATE_LAYOUT
    out = export_checkpoint(work, step=2, out=tmp_path / "from_checkpoint")
    want = load_file(work / "hf_export" / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    proc = _train(work, *args, "--config.model.remat=True", "--config.train.steps=3")
    assert "resumed from step 2" in proc.stdout
    steps = [r["step"] for r in read_jsonl(work / "metrics.jsonl")]
    assert [s for s in steps if s > 0] == [1, 2, 3], steps


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    env = dict(os.environ, XLA_FLAGS="")
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        "--config=configs/rlpt_qwen.py:qwen3_8b",
        "--config.model.path=/nonexistent/ckpt",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "model checkpoint /nonexistent/ckpt not found" in proc.stderr


def test_unknown_judge_kind_and_field_are_clear_errors():
    from rlpt_jax.train.experiment import ExperimentConfigError, from_config_dict

    sys.path.insert(0, str(ROOT / "configs"))
    import rlpt_qwen

    cfg = rlpt_qwen.get_config("tiny").to_dict()
    cfg["judge"]["kind"] = "oracle"
    with pytest.raises(ExperimentConfigError, match="unknown judge kind 'oracle'"):
        from_config_dict(cfg)
    cfg = rlpt_qwen.get_config("tiny").to_dict()
    cfg["rollout"]["temprature"] = 1.0
    with pytest.raises(ExperimentConfigError, match="config.rollout.temprature"):
        from_config_dict(cfg)
