"""MetricsWriter (JSONL + TensorBoard), crash-tolerant reading, throughput, plots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

from rlpt_jax import metrics
from rlpt_jax.metrics import MetricsWriter, plot_run, plot_tree, read_jsonl

REPO = os.path.join(os.path.dirname(__file__), "..")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    data = open(path, "rb").read()
    assert data.startswith(PNG_SIGNATURE), path
    image = mpimg.imread(path)
    assert image.shape[0] > 0 and image.shape[1] > 0


def test_writer_jsonl_tensorboard_and_nonfinite(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.write(1, {"reward/mean": 0.5, "kl": np.float32(0.01), "loss": jnp.asarray(2.0)})
        w.write(2, {"reward/mean": float("nan"), "kl": float("inf"), "loss": 1.5})
        assert w.nonfinite == {"reward/mean": 1, "kl": 1} and w.nonfinite_total == 2
        with pytest.raises(TypeError, match="scalar"):
            w.write(3, {"loss": np.zeros(2)})
        with pytest.raises(ValueError, match="'step'"):
            w.write(3, {"step": 1.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["step"] == 1 and first["reward/mean"] == 0.5 and first["loss"] == 2.0
    assert math.isclose(first["kl"], 0.01, rel_tol=1e-6) and first["time"] > 0
    assert second["reward/mean"] is None and second["kl"] is None and second["loss"] == 1.5
    events = [f for f in os.listdir(tmp_path / "tensorboard") if "tfevents" in f]
    assert events and os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0
    with pytest.raises(RuntimeError, match="closed"):
        w.write(4, {"loss": 1.0})


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    from tensorboardX.proto import event_pb2

    with MetricsWriter(tmp_path) as w:
        for step in range(3):
            w.write(step, {"loss": 1.0 / (step + 1)})
    (event_file,) = (tmp_path / "tensorboard").iterdir()
    data = event_file.read_bytes()
    found, pos = [], 0
    while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
        n = int.from_bytes(data[pos : pos + 8], "little")
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 16 + n
        found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    assert [(s, t) for s, t, _ in found] == [(0, "loss"), (1, "loss"), (2, "loss")]
    np.testing.assert_allclose([v for *_, v in found], [1.0, 0.5, 1 / 3], rtol=1e-6)


def test_truncated_last_line_is_tolerated_and_cut_on_reopen(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(3):
            w.write(step, {"reward": float(step)})
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "time": 1.0, "rew')  # killed mid-line
    with pytest.warns(UserWarning, match="truncated last line 4"):
        records = read_jsonl(path)
    assert [r["step"] for r in records] == [0, 1, 2]

    with pytest.warns(RuntimeWarning, match="unterminated last line"):
        w = MetricsWriter(tmp_path, tensorboard=False)
    w.write(3, {"reward": 3.0})
    w.close()
    assert [r["reward"] for r in read_jsonl(path)] == [0.0, 1.0, 2.0, 3.0]

    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=":2: not a JSON object line"):
        read_jsonl(path)


def test_disabled_writer_validates_but_writes_nothing(tmp_path):
    w = MetricsWriter(tmp_path / "run", enabled=False)
    w.write(0, {"kl": float("nan")})
    assert w.nonfinite == {"kl": 1}
    w.close()
    assert not (tmp_path / "run").exists()


def test_throughput_conventions():
    # 1e9 params, 1000 tokens in 2 s on 1e13 FLOP/s: train 6e12 FLOPs, infer 2e12 FLOPs.
    assert metrics.model_flops(10**9, 1000) == 6e12
    assert metrics.model_flops(10**9, 1000, training=False) == 2e12
    assert metrics.tokens_per_second(1000, 2.0) == 500.0
    assert metrics.mfu(10**9, 1000, 2.0, 1e13) == pytest.approx(0.3)
    assert metrics.mfu(10**9, 1000, 2.0, 1e13, training=False) == pytest.approx(0.1)
    perf = metrics.throughput(10**9, 1000, 2.0, 1e13)
    assert perf == pytest.approx(
        {"perf/tokens_per_s": 500, "perf/model_tflops": 3, "perf/mfu": 0.3}
    )
    assert "perf/mfu" not in metrics.throughput(10**9, 1000, 2.0)
    with pytest.raises(ValueError, match="seconds"):
        metrics.tokens_per_second(10, 0.0)
    with pytest.raises(ValueError, match="peak_flops"):
        metrics.mfu(10, 10, 1.0, 0.0)
    assert metrics.param_count({"a": np.zeros((3, 4)), "b": [np.zeros(5)]}) == 17


def _synthetic_run(workdir) -> None:
    rng = np.random.default_rng(0)
    with MetricsWriter(workdir, tensorboard=False) as w:
        for step in range(40):
            w.write(
                step,
                {
                    "reward/mean": 0.1 + step / 50 + 0.05 * rng.standard_normal(),
                    "reward/format": 0.9,
                    "kl/ref": 1e-3 * step,
                    "policy/entropy": 2.0 - step / 40,
                    "response_len/mean": 200 + step,
                    "h_turn": float("nan") if step == 5 else 0.3,
                    "loss": 1.0 / (step + 1),
                },
            )
    # A resumed run re-logs step 39: the plot keeps the last value.
    with MetricsWriter(workdir, tensorboard=False) as w:
        w.write(39, {"loss": 0.5})


def test_plot_run_writes_one_valid_png_per_family(tmp_path):
    _synthetic_run(tmp_path / "run")
    paths = plot_run(tmp_path / "run", tmp_path / "plots", extra_keys=["loss"])
    names = sorted(p.name for p in paths)
    assert names == [
        "entropy.png",
        "h_turn.png",
        "kl.png",
        "loss.png",
        "response_length.png",
        "reward.png",
    ]
    for p in paths:
        _assert_png(p)
    with pytest.raises(KeyError, match="grad_norm"):
        plot_run(tmp_path / "run" / "metrics.jsonl", tmp_path / "plots", extra_keys=["grad_norm"])
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "nothing", tmp_path / "plots")


def test_plot_tree_renders_a_turn_tree(tmp_path):
    # Root prompt → 2 first turns → 2 + 1 second turns (leaves).
    parents = [-1, 0, 0, 1, 1, 2]
    labels = ["prompt", "search", "search", "answer ✓", "answer ✗", "answer ✓"]
    values = {
        "H": [math.nan, 0.8, 0.4, 0.2, 0.3, 0.1],
        "V": [0.0, 0.1, 0.7, 1.0, -1.0, 0.7],
        "A": [0.0, -0.6, 0.6, 0.9, -1.1, 0.0],
    }
    out = plot_tree(parents, labels, values, tmp_path / "tree.png", color_by="A", title="t")
    _assert_png(out)
    _assert_png(plot_tree(parents, None, None, tmp_path / "bare.png"))
    with pytest.raises(ValueError, match="cycle"):
        plot_tree([-1, 2, 1], None, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="parents\\[1\\] = 5"):
        plot_tree([-1, 5], None, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        plot_tree(parents, labels, {"H": [1.0]}, tmp_path / "x.png")


def test_launcher_writes_plots(tmp_path):
    _synthetic_run(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "plot.py"), f"--workdir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr
    written = out.stdout.split()
    assert len(written) == 5 and all(p.startswith(str(tmp_path / "run" / "plots")) for p in written)
    for p in written:
        _assert_png(p)
