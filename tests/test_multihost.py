"""Multi-host decisions on two local JAX processes (CPU, gloo): the outside world is asked
by process 0 alone and its answer, or its failure, reaches every process
(``rlpt_jax.multihost.once``). A host loop that asked per process would let each process
see its own reply: here each process answers differently, and process 0 alone fails.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


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
    env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=str(ROOT))
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
