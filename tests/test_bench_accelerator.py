"""``bench/accelerator.py`` stays alive on a CPU: its tiny run completes every part and ends
with one JSON line of positive, finite numbers (the numbers themselves mean nothing here)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "accelerator.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_accelerator", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peak_table_matches_device_kinds():
    peak = _module().peak_tflops
    assert peak("NVIDIA H200") == 989
    assert peak("NVIDIA H100 80GB HBM3") == 989
    assert peak("NVIDIA H100 PCIe") == 756
    assert peak("NVIDIA A100-SXM4-80GB") == 312
    assert peak("NVIDIA L40S") == 362 and peak("NVIDIA L4") == 121
    assert peak("TPU v4") == 275
    assert peak("TPU v5 lite") == 197 and peak("TPU v5e") == 197
    assert peak("TPU v5") == 459 and peak("TPU v5p") == 459
    assert peak("TPU v6 lite") == 918
    assert peak("cpu") is None and peak("NVIDIA GeForce RTX 3090") is None


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_run_reports_every_part():
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--peak_tflops", "0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in json.dumps(res), out.stdout[-4000:]

    assert res["backend"] == "cpu" and res["device_count"] == 1 and res["tiny"] is True
    assert res["device_kind"] and res["jax"] and res["machine"]["cores"] >= 1
    assert res["peak_tflops"] == 0.5 and res["peak_source"] == "--peak_tflops"

    (upd,) = res["update"].values()
    for key in ("tok_s", "tflops", "mfu", "flops_per_token", "xla_temp_gib"):
        assert _positive(upd[key]), (key, upd)
    assert upd["mfu"] == upd["tflops"] / 0.5 and upd["skipped"] == 0

    (dec,) = res["decode"].values()
    assert sorted(dec, key=int) == ["64", "256"]
    assert all(_positive(d["tok_s"]) for d in dec.values())
    (pre,) = res["prefill"].values()
    assert _positive(pre["tok_s"])

    rows = res["attention"]["rows"]
    assert set(rows) == {"auto", "xla"}
    assert rows["auto"][str(res["attention_lengths"][0])]["resolved"] == "xla"  # on a CPU
    for row in rows.values():
        assert sorted(row, key=int) == [str(t) for t in res["attention_lengths"]]
        for cell in row.values():
            assert _positive(cell["xla_temp_gib"]) and all(map(_positive, cell["step_s"]))
