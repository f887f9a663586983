"""Two processes, one run: ``launch/train.py`` on two local JAX processes (4 simulated CPU
devices each, gloo collectives) gives the parameters and metrics of one process with 8
devices, for one RLPT step and one AT²PO step of the ``tiny`` variants.

Process 1 runs with its judge (RLPT) or its search backend (AT²PO) broken. The outside
world is consulted by process 0 alone and its answer broadcast (``rlpt_jax.multihost``),
so process 1's broken services are never called and the run still equals the reference.
A host loop that asked per process would see the fault on process 1 only: process 1's
rewards or tool results would differ, and its jitted calls with them (a crash, a hang, or
other parameters).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rlpt_jax.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]

# One step, no evaluation; the mesh is FSDP over all 8 devices in both layouts, so that the
# compiled programs are the same and only the process split differs.
COMMON = (
    "--config.train.steps=1",
    "--config.eval.every=0",
    "--config.eval.at_start=False",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=8",
    "--config.mesh.tensor=1",
    # Rewards of a random model are mostly equal, so its advantages are 0: the entropy
    # bonus gives the update a gradient either way.
    "--config.loss.entropy_coef=0.01",
)

# Metrics whose value is itself a rounding error: |sampler log-prob - training log-prob|
# on the same weights. Its size is a float32 ulp of a log-prob (9.5e-7 near -10), and one
# layout may round a token where the other does not (a CI run: 9.5e-7 in one
# process, 0.0 in two), so relative equality is meaningless for them; both must stay at
# rounding size (10 ulps) instead.
ROUNDING_GAPS = ("train/old_logp_diff_max", "train/old_logp_diff_mean")
GAP_ATOL = 1e-5

# ``sitecustomize`` for every process of the test, before anything else runs. The random
# model writes no tags, so that the judge and the retriever are asked at all, a response is
# read as its own prediction (RLPT) and a first turn as a search for its own text (AT²PO),
# in every process alike. With RLPT_TEST_FAULTS=1 (process 1 of the two-process run) the
# judge and the search backend raise.
SITE = textwrap.dedent(
    """
    import os

    if os.environ.get("RLPT_TEST_SCAFFOLD") == "1":
        from rlpt_jax.envs import search_env
        from rlpt_jax.rollout import rlpt

        rlpt.extract_prediction = lambda text: text.strip() or "x"
        _decide = search_env.SearchEnv._decide

        def _search_first_turn(self, text, calls):
            if calls == 0 and isinstance(text, str):
                return "search", text.strip()[:80] or "wikipedia"
            return _decide(self, text, calls)

        search_env.SearchEnv._decide = _search_first_turn

    if os.environ.get("RLPT_TEST_FAULTS") == "1":
        from rlpt_jax.envs import search
        from rlpt_jax.rewards import judges

        def _broken(*args, **kwargs):
            raise ConnectionError("injected fault on this process")

        judges.LexicalJudge._judge = _broken
        search.BM25Search.search = _broken
    """
)

# Wall-clock and throughput metrics differ between any two runs.
TIMING = ("time", "perf/")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra)
    return env


def _cmd(config: str, workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "launch" / "train.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        *COMMON,
        *extra,
    ]


def _one_process(config: str, workdir: Path, model: str, extra_env: dict) -> None:
    proc = subprocess.run(
        _cmd(config, workdir, model),
        cwd=ROOT,
        env=_env(8, **extra_env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _two_processes(config: str, workdir: Path, model: str, extra_env: dict) -> None:
    address = f"localhost:{_free_port()}"
    procs, logs = [], []
    for pid in (0, 1):
        log = open(workdir.parent / f"{workdir.name}.p{pid}.log", "w+")
        extra = dict(extra_env)
        if pid == 1:  # the broken services
            extra.update(RLPT_TEST_FAULTS="1")
        cmd = _cmd(
            config,
            workdir,
            model,
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={pid}",
        )
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(4, **extra), stdout=log, stderr=log))
        logs.append(log)
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for pid, (code, log) in enumerate(zip(codes, logs)):
        log.seek(0)
        assert code == 0, f"process {pid} exited with {code}:\n" + log.read()[-6000:]
        log.close()


def _metrics(workdir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith(TIMING)}
        for r in read_jsonl(workdir / "metrics.jsonl")
    ]


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(model_dir / "model.safetensors")


def _start_model(workdir: Path) -> Path:
    return Path(json.loads((workdir / "start_model.json").read_text())["model_path"])


# Each process answers differently; ``once`` must give everyone process 0's answer, its
# exception included, and never call the function on process 1.
ONCE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax

    pid = int(sys.argv[2])
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=pid)
    from rlpt_jax import multihost

    calls = []

    def answer(x):
        calls.append(x)
        return {"from": pid, "x": x, "text": "é" * (1000 * pid + 5)}

    def fail():
        calls.append("fail")
        raise ConnectionError(f"down on process {pid}")

    got = multihost.once(answer, 7)
    try:
        multihost.once(fail)
        err = None
    except ConnectionError as e:
        err = str(e)
    print(json.dumps({"got": got, "err": err, "calls": calls}))
    """
)


def test_once_decides_on_process_zero(tmp_path):
    script = tmp_path / "once.py"
    script.write_text(ONCE_SCRIPT)
    address = f"localhost:{_free_port()}"
    env = _env(1, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), address, str(pid)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    expected = {"from": 0, "x": 7, "text": "é" * 5}
    assert r0["got"] == r1["got"] == expected
    assert r0["err"] == r1["err"] == "down on process 0"
    assert r0["calls"] == [7, "fail"] and r1["calls"] == []


def test_once_is_a_plain_call_on_one_process():
    from rlpt_jax import multihost

    assert multihost.once(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError):
        multihost.once(lambda: {}["missing"])


@pytest.mark.slow
@pytest.mark.alone  # three JAX processes: not beside another test (scripts/test.sh)
@pytest.mark.parametrize(
    "config,asked,failed",
    [
        ("configs/rlpt_qwen.py:tiny", "judge/judged", "judge/failed_requests"),
        ("configs/at2po_qwen.py:tiny", "env/backend_calls", "env/search_failures"),
    ],
)
def test_two_processes_equal_one(tmp_path, tiny_model, config, asked, failed):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITE)
    one, two = tmp_path / "one", tmp_path / "two"
    # A 2-layer random model (the real 135M one needs ~9 GB per process here), and one
    # cache: the cold start trained by the first run is the second's start.
    model = f"--config.model.path={tiny_model}"
    env = {
        "RLPT_JAX_CACHE": str(tmp_path / "cache"),
        "RLPT_TEST_SCAFFOLD": "1",
        "PYTHONPATH": os.pathsep.join([str(faults), str(ROOT)]),
    }
    _one_process(config, one, model, env)
    _two_processes(config, two, model, env)

    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1]
    assert m2[0][asked] > 0  # the service was asked (by process 0)
    assert m2[0][failed] == 0.0  # process 1's broken service was never asked
    assert m1[0].keys() == m2[0].keys()
    for k in m1[0]:
        if k in ROUNDING_GAPS:
            assert max(m1[0][k], m2[0][k]) <= GAP_ATOL, (k, m1[0][k], m2[0][k])
        else:
            np.testing.assert_allclose(m2[0][k], m1[0][k], rtol=1e-5, atol=1e-7, err_msg=k)

    w1, w2 = _weights(one / "hf_export"), _weights(two / "hf_export")
    assert w1.keys() == w2.keys()
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # The update moved the weights (a step that changed nothing would pass trivially).
    start = _weights(_start_model(one))
    assert any(not np.array_equal(w1[k], start[k]) for k in w1)
