"""Hostile programs against the Python tool (issue 21, "Sandbox").

Each attack below worked against the audit-hook-only tool. Under bubblewrap it must be
contained: nothing outside the sandbox changes, the caller survives, no secret leaks,
limits hold, and no process of the call is left once ``run`` returns (checked with
marker processes looked up in this machine's ``/proc``). Without a working bubblewrap
the tool must refuse to run instead of silently running unisolated.

Most attacks run twice: with the audit hook (the default) and without it, because the
hook is only defence in depth and the OS layers must hold on their own. Attacks on the
caller itself run the tool in a sacrificial driver process.

Rule for new cases: a hostile program must stay harmless to the test machine when
containment fails, because these tests exist to run against broken sandboxes (the
pre-bubblewrap tool ran them as root with no PID namespace). So: the only kill target
is the sacrificial driver (never ``kill(-1)`` or pid 1), bombs detonate only inside a
PID namespace, and nothing read from other processes is printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import stat
import subprocess
import sys
import uuid
import warnings

import pytest

from rlpt_jax.envs import python_tool as pt

TIMEOUT = 5.0
SLACK = 4.0  # after a deadline: the kill and the teardown, on a loaded machine


def make_tool(**overrides) -> pt.PythonTool:
    """A sandboxed tool. A non-root user without a working bubblewrap skips; as root (CI,
    after ``scripts/setup.sh --test`` installed it) a missing sandbox is a failure."""
    try:
        return pt.PythonTool(pt.PythonToolConfig(**{"timeout_s": TIMEOUT, **overrides}))
    except pt.SandboxUnavailable as e:
        if os.geteuid() == 0:
            pytest.fail(f"running as root, so bubblewrap must work (scripts/setup.sh --test): {e}")
        pytest.skip(f"no working bubblewrap for this non-root user: {e}")


@pytest.fixture(scope="module", params=["hook", "no_hook"])
def tool(request):
    return make_tool(audit_hook=request.param == "hook")


@pytest.fixture(scope="module")
def bare_tool():
    """The OS layers alone."""
    return make_tool(audit_hook=False)


@pytest.fixture
def markers():
    """Unique strings for leftover-process checks; any process still carrying one at
    the end of the test is killed (by pid) so a failure cannot leak processes."""
    made = []

    def new() -> str:
        made.append(f"rlpt-sandbox-marker-{uuid.uuid4().hex}")
        return made[-1]

    yield new
    for marker in made:
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def processes_with(marker: str) -> list[int]:
    """Pids on this machine whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def spawn_marker(marker: str) -> str:
    """Code that leaves a detached (``setsid``, double-forked) process carrying ``marker``."""
    return (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"{marker!r}])\n"
        "    os._exit(0)\n"
    )


def wait_for_marker(marker: str) -> str:
    """Code that waits until the marker process runs, so its absence later means it was
    killed, not that it never started."""
    return (
        "import time\n"
        "def marker_running():\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        f"            if {marker!r} in open(f'/proc/{{p}}/cmdline').read():\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "    return False\n"
        "for _ in range(1000):\n"
        "    if marker_running():\n"
        "        print('marker running', flush=True)\n"
        "        break\n"
        "    time.sleep(0.01)\n"
    )


DRIVER = r"""
import json, sys
from rlpt_jax.envs.python_tool import PythonTool, PythonToolConfig
try:
    tool = PythonTool(PythonToolConfig(**json.loads(sys.argv[1])))
except Exception as e:
    print(json.dumps({"refused": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
r = tool.run(sys.stdin.read())
print(json.dumps({"error": r.error, "stdout": r.stdout, "stderr": r.stderr}))
"""


def run_in_driver(code: str, env: dict[str, str] | None = None, **config) -> tuple[int, dict]:
    """Run ``code`` through the tool in a separate driver process (the attack's target):
    its exit status and its report (``{}`` if it died before reporting)."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps({"timeout_s": TIMEOUT, **config})],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else {})


# ------------------------------------------------------------------ audit-hook bypasses


def test_dir_fd_write_outside_workdir(tool, tmp_path):
    r = tool.run(
        "import os\n"
        f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.close(os.open('planted.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n"
        "print('planted')"
    )
    assert not r.ok and "planted" not in r.stdout, r
    assert not (tmp_path / "planted.txt").exists()


def test_dir_fd_unlink_outside_workdir(tool, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = tool.run(
        "import os\n"
        f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "os.unlink('keep.txt', dir_fd=fd)\n"
        "print('deleted')"
    )
    assert not r.ok and "deleted" not in r.stdout, r
    assert keep.read_text() == "precious"


def test_fchmod_through_read_only_fd_on_host_file(tool, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    victim.chmod(0o600)
    r = tool.run(
        f"import os\nos.fchmod(os.open({str(victim)!r}, os.O_RDONLY), 0o777)\nprint('done')"
    )
    assert not r.ok and "done" not in r.stdout, r
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_fchmod_through_read_only_fd_on_visible_file(tool):
    # The interpreter is visible inside the sandbox; even a no-op chmod must fail there
    # (read-only mount, not the owner), so the attack leaves nothing changed either way.
    target = os.path.realpath(sys.executable)
    mode = stat.S_IMODE(os.stat(target).st_mode)
    r = tool.run(
        f"import os\nos.fchmod(os.open({target!r}, os.O_RDONLY), {mode:#o})\nprint('done')"
    )
    assert not r.ok and "done" not in r.stdout, r


def test_monkeypatched_path_check(tool, tmp_path):
    victim = tmp_path / "victim.txt"
    r = tool.run(
        "import os, posixpath\n"
        "here = os.getcwd()\n"
        "posixpath.abspath = lambda path: here\n"
        "posixpath.realpath = lambda path, *args, **kwargs: here\n"
        f"open({str(victim)!r}, 'w').write('x')\n"
        "print('written')"
    )
    assert not r.ok and "written" not in r.stdout, r
    assert not victim.exists()


REIMPORTED_FORK_EXEC = r"""
import importlib.util, os, sys
path = sys.modules['_posixsubprocess'].__file__
spec = importlib.util.spec_from_file_location('another._posixsubprocess', path)
fresh = importlib.util.module_from_spec(spec)
errpipe_read, errpipe_write = os.pipe()
argv = [b'/bin/sh', b'-c', SHELL.encode()]
args = [argv, [b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1,
        errpipe_read, errpipe_write, True, False, -1, None, None, None, -1, None, False]
try:
    pid = fresh.fork_exec(*args)  # the CPython 3.11/3.12 argument list
except TypeError:  # a version with one argument fewer
    pid = fresh.fork_exec(*args[:-1])
os.waitpid(pid, 0)
print('shell ran')
"""


def test_reimported_posixsubprocess_shell_is_contained(tool, tmp_path, markers):
    victim = tmp_path / "pwned.txt"
    marker = markers()
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' {marker}"
    shell = f"echo pwned > {victim}; {sleeper} &"
    r = tool.run(f"SHELL = {shell!r}\n{REIMPORTED_FORK_EXEC}")
    assert "shell ran" in r.stdout, r  # the hook does not stop this: the sandbox has to
    assert not victim.exists(), r
    assert processes_with(marker) == []


# ------------------------------------------------------------- attacks on the caller


# Only ever the parent (the sacrificial driver below): never `kill -1` or pid 1, which,
# should containment ever fail, would take down every process on the test machine.
PIDFD_KILL_PARENT = r"""
import os, signal
try:
    signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)
except OSError as e:
    print('refused', e)
"""


def test_pidfd_kill_of_parent_is_contained(tool):
    hook = tool.config.audit_hook
    rc, report = run_in_driver(PIDFD_KILL_PARENT, audit_hook=hook)
    assert rc == 0 and "error" in report, (rc, report)  # the driver lived to report


def test_parent_environ_secret_not_readable(tool):
    secret = f"sk-{uuid.uuid4().hex}"
    # Prints only the planted variable: a failure must not dump this machine's environments.
    code = (
        "import os\n"
        "for p in ['self', str(os.getppid())] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        env = open(f'/proc/{p}/environ', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    print([v for v in env if v.startswith(b'RLPT_TEST_API_KEY=')])\n"
    )
    rc, report = run_in_driver(
        code, env={"RLPT_TEST_API_KEY": secret}, audit_hook=tool.config.audit_hook
    )
    assert rc == 0 and "error" in report, (rc, report)
    assert secret not in report["stdout"] + report["stderr"]


def test_setsid_children_do_not_outlive_the_call(bare_tool, markers):
    marker = markers()
    r = bare_tool.run(spawn_marker(marker) + wait_for_marker(marker) + "print('parent done')")
    # ok, not a timeout: the call did not wait for the orphans holding its pipes
    assert (r.ok, r.stdout) == (True, "marker running\nparent done\n"), r
    assert processes_with(marker) == []


def test_setsid_children_killed_at_the_deadline(markers):
    tool = make_tool(timeout_s=3.0, audit_hook=False)
    marker = markers()
    code = spawn_marker(marker) + wait_for_marker(marker) + "import time\ntime.sleep(60)"
    r = tool.run(code)
    assert (r.error, r.stdout) == ("timeout", "marker running\n"), r
    assert r.elapsed_s < 3.0 + SLACK
    assert processes_with(marker) == []


def test_network_connection_to_host_server_fails(tool):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        r = tool.run(
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
            "print('connected')"
        )
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever reached us
    assert not r.ok and "connected" not in r.stdout, r


# ------------------------------------------------------------------ resource exhaustion


def test_disk_filling_stops_at_the_work_dir_size(tool):
    r = tool.run(
        "for i in range(30):\n"
        "    with open(f'f{i}.bin', 'wb') as f:\n"
        "        f.write(b'x' * (16 << 20))\n"
        "print('all written')"
    )
    assert (r.ok, r.error) == (False, "output_limit"), r
    assert "all written" not in r.stdout


# Bombs go off only inside a PID namespace (and the endless one only as non-root, where
# the process limit holds): a broken sandbox must fail these tests, not flood the machine.
IN_PID_NAMESPACE = (
    "import os, sys\nif os.getpid() > 50:\n    sys.exit('no PID namespace: not detonating')\n"
)
AS_NON_ROOT = "if os.getuid() == 0:\n    sys.exit('root, no process limit: not detonating')\n"


def test_fork_bomb_stops_at_the_process_limit():
    tool = make_tool(audit_hook=False, max_processes=16)
    code = IN_PID_NAMESPACE + (
        "import time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 100:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
        "print('forked', n)"
    )
    r = tool.run(code)
    assert r.ok, r
    forked = int(r.stdout.split()[-1])
    assert forked < 16, r.stdout


def test_endless_fork_bomb_ends_with_everything_killed(markers):
    tool = make_tool(timeout_s=3.0, audit_hook=False, max_processes=32)
    marker = markers()
    code = IN_PID_NAMESPACE + AS_NON_ROOT + spawn_marker(marker) + wait_for_marker(marker)
    code += "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = tool.run(code)
    assert r.error == "timeout", r
    assert r.elapsed_s < 3.0 + SLACK
    assert processes_with(marker) == []  # its whole PID namespace is gone


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10**10)",
        "import mmap\nm = mmap.mmap(-1, 10**10)\nm[::4096] = b'x' * (10**10 // 4096)",
    ],
)
def test_memory_bomb(code):
    # A generous wall clock, so a loaded machine cannot turn this into a timeout.
    r = make_tool(timeout_s=20.0, audit_hook=False).run(code)
    assert (r.ok, r.error) == (False, "memory"), r


def test_cpu_busy_loops_in_several_processes_are_killed(markers):
    tool = make_tool(timeout_s=3.0, audit_hook=False)
    marker = markers()
    code = spawn_marker(marker) + wait_for_marker(marker)
    code += "for _ in range(3):\n    os.fork()\nwhile True:\n    pass\n"
    r = tool.run(code)
    assert r.error == "timeout", r
    assert r.elapsed_s < 3.0 + SLACK
    assert processes_with(marker) == []


def test_output_flood_is_capped(bare_tool):
    r = bare_tool.run("import os\nwhile True:\n    os.write(1, b'x' * 65536)")
    assert r.error == "output_limit", r
    assert len(r.stdout) <= bare_tool.config.max_output_bytes


# ----------------------------------------------------------- sandbox view and filter


def test_host_files_and_identity_are_hidden(bare_tool):
    r = bare_tool.run(
        "import os\n"
        "print(sorted(os.environ))\n"
        f"print(os.path.exists({__file__!r}), os.path.exists('/etc/passwd'), os.getcwd())\n"
        "print(os.getuid() != 0, len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3)"
    )
    assert r.ok, r
    env, seen, identity = r.stdout.splitlines()
    assert "RLPT" not in env and "XLA_FLAGS" not in env
    assert seen == f"False False {pt.WORKDIR}"  # no repository, no host /etc
    assert identity == "True True"  # not root; own PID namespace


def test_seccomp_refuses_dangerous_syscalls(bare_tool):
    if not bare_tool.seccomp:
        pytest.skip("no seccomp syscall table for this architecture")
    clone = {"x86_64": 56, "aarch64": 220}[platform.machine()]
    r = bare_tool.run(
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def show(ret):\n"
        "    if ret == 0 and os.getpid() != parent:\n"
        "        os._exit(0)  # a child the filter should not have let through\n"
        "    print(ret, ctypes.get_errno())\n"
        "parent = os.getpid()\n"
        "show(libc.ptrace(0, 0, 0, 0))\n"  # PTRACE_TRACEME: allowed to anyone otherwise
        "show(libc.unshare(0x10000000))\n"  # CLONE_NEWUSER
        f"show(libc.syscall({clone}, 0x10000000 | 17, 0, 0, 0, 0))\n"  # clone(NEWUSER|SIGCHLD)
        "show(libc.syscall(435, None, 0))\n"  # clone3: ENOSYS, so libc falls back to clone
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print('fork ok')"
    )
    # EPERM, EPERM, EPERM, ENOSYS; an ordinary fork still works.
    assert r.stdout == "-1 1\n-1 1\n-1 1\n-1 38\nfork ok\n", r


# ------------------------------------------------------------- without bubblewrap


@pytest.fixture
def failing_namespaces(tmp_path):
    """A PATH whose ``bwrap`` and ``unshare`` fail the way they do where namespaces are
    not permitted (a non-root user on a host that forbids them, a locked-down container)."""
    for name in ("bwrap", "unshare"):
        stub = tmp_path / name
        stub.write_text(
            "#!/bin/sh\necho 'Creating new namespace failed: Operation not permitted' >&2\nexit 1\n"
        )
        stub.chmod(0o755)
    return {"PATH": f"{tmp_path}:{os.environ['PATH']}"}


def test_refuses_without_bubblewrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(pt.SandboxUnavailable, match="apt-get install bubblewrap"):
        pt.PythonTool(pt.PythonToolConfig())


def test_refuses_when_namespaces_are_not_permitted(monkeypatch, failing_namespaces):
    monkeypatch.setenv("PATH", failing_namespaces["PATH"])
    with pytest.raises(pt.SandboxUnavailable, match="self-check failed.*Operation not permitted"):
        pt.PythonTool(pt.PythonToolConfig())


@pytest.mark.parametrize(
    "attack", ["pidfd_kill_parent", "setsid_children", "network"], ids=lambda a: a
)
def test_attacks_never_run_unisolated(failing_namespaces, markers, attack):
    """The attacks that succeeded when isolation was silently off: now the tool refuses
    to run them at all (the hook is off, as a hook bypass above would make it)."""
    marker = markers()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        code = {
            "pidfd_kill_parent": PIDFD_KILL_PARENT,
            "setsid_children": spawn_marker(marker) + "print('parent done')",
            "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        }[attack]
        rc, report = run_in_driver(code, env=failing_namespaces, audit_hook=False)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert processes_with(marker) == []
    assert rc == 0, f"the driver was killed (status {rc})"
    assert "SandboxUnavailable" in report.get("refused", ""), report


def test_allow_unisolated_warns_once_and_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pt, "_unshare_path", lambda: None)  # no namespaces at all
    pt._warn_once.cache_clear()
    config = pt.PythonToolConfig(timeout_s=TIMEOUT, allow_unisolated=True)
    with pytest.warns(RuntimeWarning, match="WITHOUT isolation"):
        tool = pt.PythonTool(config)
    assert not tool.isolated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pt.PythonTool(config)  # once per reason, not per tool
    r = tool.run("print(6 * 7)")
    assert (r.ok, r.stdout) == (True, "42\n"), r
