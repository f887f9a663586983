"""Sandboxed Python tool: normal code works; hostile code is stopped, refused and
reported, and this test process survives all of it. (The attacks on the sandbox itself
are in tests/adversarial/test_sandbox.py.)"""

from __future__ import annotations

import os
import socket
import time

import pytest

from rlpt_jax.envs.python_tool import WORKDIR, PythonTool, PythonToolConfig, SandboxUnavailable

TIMEOUT = 1.5


def make_tool(**config) -> PythonTool:
    """A sandboxed tool. A non-root user without a working bubblewrap skips; as root (CI,
    after ``scripts/setup.sh --test`` installed it) a missing sandbox is a failure."""
    try:
        return PythonTool(PythonToolConfig(**config))
    except SandboxUnavailable as e:
        if os.geteuid() == 0:
            pytest.fail(f"running as root, so bubblewrap must work (scripts/setup.sh --test): {e}")
        pytest.skip(f"no working bubblewrap for this non-root user: {e}")


@pytest.fixture(scope="module")
def tool():
    return make_tool(timeout_s=TIMEOUT, memory_bytes=512 << 20)


def test_normal_computation(tool):
    r = tool.run("import math\nprint(sum(i * i for i in range(10)), math.comb(10, 3))")
    assert (r.ok, r.error, r.stdout, r.returncode) == (True, None, "285 120\n", 0)


def test_writes_inside_own_dir_allowed_and_private(tool):
    r = tool.run(
        "import os\nopen('a.txt', 'w').write('hi')\nprint(open('a.txt').read(), os.getcwd())"
    )
    assert r.ok, r.stderr
    assert r.stdout.split() == ["hi", WORKDIR]
    r = tool.run("import os\nprint(os.listdir('.'))")
    assert r.stdout == "['main.py']\n"  # each call starts from an empty work dir


def test_user_exception_is_exit_code(tool):
    r = tool.run("raise ValueError('boom')")
    assert (r.ok, r.error, r.returncode) == (False, "exit_code", 1)
    assert "ValueError: boom" in r.stderr


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_infinite_loop_times_out(tool, code):
    start = time.monotonic()
    r = tool.run(code)
    assert (r.ok, r.error) == (False, "timeout")
    assert time.monotonic() - start < TIMEOUT + 2.0


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "chunks = []\nwhile True:\n    chunks.append(b'x' * 10**8)"],
)
def test_memory_bomb(code):
    # A generous wall clock, so a loaded machine cannot turn this into a timeout.
    tool = make_tool(timeout_s=20.0, memory_bytes=512 << 20)
    r = tool.run(code)
    assert (r.ok, r.error) == (False, "memory")
    assert "MemoryError" in r.stderr


@pytest.mark.parametrize(
    "code, what",
    [
        ("import os\nwhile True:\n    os.fork()", "os.fork"),
        ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
        ("import os\nos.system('true')", "os.system"),
        ("import ctypes\nctypes.CDLL(None).fork()", "ctypes.dlsym"),
    ],
)
def test_fork_bomb_and_process_creation_refused(tool, code, what):
    r = tool.run(code)
    assert (r.ok, r.error, r.returncode) == (False, "forbidden", 86)
    assert what in r.detail


@pytest.mark.parametrize(
    "code, what",
    [
        # unaudited by CPython itself: patched in the child
        (
            "import _posixsubprocess\n_posixsubprocess.fork_exec(*[None] * 23)",
            "_posixsubprocess.fork_exec",
        ),
        (
            "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess",
            "re-import of _posixsubprocess",
        ),
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource"),
        ("import ctypes\nctypes.c_char.from_address(0)", "ctypes.cdata"),
        (
            "import shutil, _bisect, importlib.util as u\n"
            "shutil.copy(_bisect.__file__, 'x.so')\n"
            "u.module_from_spec(u.spec_from_file_location('_bisect', 'x.so'))",
            "loading native code",
        ),
    ],
)
def test_escape_routes_refused(tool, code, what):
    r = tool.run(code)
    assert (r.ok, r.error) == (False, "forbidden"), r
    assert what in r.detail


def test_scientific_stack_still_works():
    tool = make_tool(timeout_s=60.0)
    code = "import numpy as np, sympy\nx = sympy.symbols('x')\n"
    code += "print(sympy.solve(x**2 - 4, x), int(np.arange(5).sum()))"
    r = tool.run(code)
    assert r.ok, r.stderr
    assert r.stdout == "[-2, 2] 10\n"


def test_network_refused(tool):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        r = tool.run(f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))")
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever reached us
    assert (r.ok, r.error) == (False, "forbidden")
    assert "network" in r.detail


@pytest.mark.parametrize(
    "code",
    [
        "open({path!r}, 'w').write('x')",
        "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
        "import pathlib\npathlib.Path({path!r}).write_text('x')",
        # catching the refusal does not help: the process ends at the first attempt
        "try:\n    open({path!r}, 'a')\nexcept BaseException:\n    print('escaped')",
        "import os\nos.symlink({path!r}, 'link')\nopen('link', 'w').write('x')",
    ],
)
def test_write_outside_tmpdir_refused(tool, tmp_path, code):
    target = tmp_path / "victim.txt"
    r = tool.run(code.format(path=str(target)))
    assert (r.ok, r.error) == (False, "forbidden")
    assert "escaped" not in r.stdout
    assert not target.exists()


def test_delete_outside_tmpdir_refused(tool, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = tool.run(f"import os\nos.remove({str(keep)!r})")
    assert (r.ok, r.error) == (False, "forbidden")
    assert keep.read_text() == "precious"


def test_ten_megabyte_print_capped(tool):
    start = time.monotonic()
    r = tool.run("print('x' * 10_000_000)")
    assert (r.ok, r.error) == (False, "output_limit")
    assert len(r.stdout) <= tool.config.max_output_bytes
    assert time.monotonic() - start < TIMEOUT + 2.0


def test_big_file_write_capped(tmp_path):
    tool = make_tool(timeout_s=TIMEOUT, max_file_bytes=1 << 20)
    r = tool.run("f = open('big.bin', 'wb')\nwhile True:\n    f.write(b'x' * 65536)")
    assert (r.ok, r.error) == (False, "output_limit")


def test_namespace_layer_kills_leftover_children_without_hook():
    tool = make_tool(timeout_s=5.0, audit_hook=False)
    assert tool.isolated
    # Children that outlive their parent hold the pipes open; only the PID namespace
    # (or the wall-clock kill) ends them.
    code = (
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\n"
        "print('parent done')"
    )
    start = time.monotonic()
    r = tool.run(code)
    assert r.ok and r.stdout == "parent done\n", r
    assert time.monotonic() - start < 3.0


def test_network_namespace_layer_without_hook():
    tool = make_tool(timeout_s=5.0, audit_hook=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        r = tool.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert (r.ok, r.error) == (False, "exit_code")
    # The sandbox's loopback is its own: nothing listens there, the host's is out of reach.
    assert "Connection refused" in r.stderr


def test_config_validation():
    with pytest.raises(ValueError, match="timeout_s"):
        PythonToolConfig(timeout_s=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        PythonToolConfig(memory_bytes=1000)
    with pytest.raises(ValueError, match="max_output_bytes"):
        PythonToolConfig(max_output_bytes=0)
    with pytest.raises(ValueError, match="max_disk_bytes"):
        PythonToolConfig(max_disk_bytes=0)


def test_limits_in_force_inside_child():
    tool = make_tool(timeout_s=3.0, memory_bytes=300 << 20, max_file_bytes=4096)
    r = tool.run(
        "import resource as r\n"
        "print(r.getrlimit(r.RLIMIT_AS), r.getrlimit(r.RLIMIT_CPU), r.getrlimit(r.RLIMIT_FSIZE))"
    )
    assert r.stdout == f"({300 << 20}, {300 << 20}) (4, 4) (4096, 4096)\n"  # CPU: ceil(3) + 1
