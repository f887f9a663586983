"""Sandboxed Python execution for math-tool tasks (host side).

Model-written code runs in a fresh ``python -I -B`` subprocess and is contained by
several independent layers, because no single one is enough:

* **Wall clock**: the child is a session leader; on timeout its process group is
  killed (SIGKILL). With Linux namespaces available the child is also PID 1 of its own
  PID namespace, so every process it started dies with it.
* **Resource limits** (``setrlimit`` by the prelude, before user code): address space
  (memory bombs end in ``MemoryError``), CPU seconds, number of processes (ignored by
  the kernel for root), size of any written file.
* **Audit hook** installed by a prelude before the user code runs: process creation
  (fork, exec, spawn, ``subprocess``, ``os.system``), socket creation, and any write,
  delete, rename or chmod of a path outside the private temp dir are refused by
  ending the process at once with a ``forbidden`` report (catching the error is not an
  escape). Also refused: any ``ctypes`` use beyond the import numpy needs, loading
  native code from the temp dir or ``/proc``, raising resource limits, and the
  unaudited ``_posixsubprocess.fork_exec``.
* **Network namespace** (``unshare --net``, when it works, e.g. as root in a
  container): no interface but a down loopback, so a connection cannot leave even if
  the hook were bypassed.
* **Output caps**: stdout and stderr are read incrementally and the process is killed
  once either exceeds ``max_output_bytes``; nothing is buffered beyond the cap.
* **Private working dir**: a fresh temp dir as cwd, ``HOME`` and ``TMPDIR``; removed
  afterwards.

An audit hook is not a security boundary against native code (e.g. ``ctypes.memmove``
raises no audit event, and numpy needs ``ctypes`` importable); the namespaces, rlimits
and the wall-clock kill are the backstop. Reading files is not restricted.
:meth:`PythonTool.run` never raises for hostile code: every failure is a
:class:`PythonResult` with an ``error`` kind.
"""

from __future__ import annotations

import functools
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["ERROR_KINDS", "PythonToolConfig", "PythonResult", "PythonTool"]

ERROR_KINDS = ("timeout", "memory", "output_limit", "forbidden", "exit_code", "internal")
_FORBIDDEN_EXIT = 86
_MARKER = "[sandbox] forbidden: "

# Runs in the child as ``python -I -B -c _PRELUDE <code file>``; cwd is the temp dir.
_PRELUDE = r"""
import os, sys, resource
import _posixsubprocess  # cached now, so a later import is a re-import (refused below)

def _limit(limits):
    for item in limits.split(","):
        name, value = item.split("=")
        kind = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(kind)[1]
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(kind, (value, value))

def _sandbox(code_path, marker, exit_code, install_hook):
    root = os.path.realpath(os.getcwd())
    with open(code_path, "rb") as f:
        source = f.read()
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    spawn = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
             "subprocess.Popen", "pty.spawn"}
    network = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
               "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink",
                   "os.link", "os.truncate", "os.chmod", "os.chown", "os.utime",
                   "shutil.rmtree", "os.chroot", "os.mkfifo", "os.mknod", "os.setxattr",
                   "os.removexattr", "sqlite3.connect"}
    realpath, join, fsdecode, getcwd = os.path.realpath, os.path.join, os.fsdecode, os.getcwd
    write, exit_now, sep, getpid = os.write, os._exit, os.sep, os.getpid

    def deny(what):
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        write(2, (marker + what + "\n").encode("utf-8", "replace"))
        exit_now(exit_code)

    def resolve(path):
        return realpath(join(getcwd(), fsdecode(path)))

    def outside(path):
        if isinstance(path, int):
            return False  # an fd: it was opened under this hook
        try:
            full = resolve(path)
        except BaseException:
            return True
        return not (full == root or full.startswith(root + sep))

    def untrusted_native(path):
        # Native code the sandbox could have written (its dir) or smuggled (memfd).
        if not isinstance(path, (str, bytes)) or str(path).endswith((".py", ".pyc")):
            return False
        full = resolve(path)
        return not outside(full) or full.startswith(("/proc/", "/dev/"))

    def hook(event, args):
        if event in spawn:
            deny(f"process creation ({event})")
        elif event in network:
            deny(f"network access ({event})")
        elif event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = isinstance(flags, int) and bool(flags & write_flags)
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                writing = True
            if writing and outside(path):
                deny(f"write outside the sandbox dir ({path!r})")
        elif event in path_events:
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)) and outside(arg):
                    deny(f"{event} outside the sandbox dir ({arg!r})")
        elif event in ("os.kill", "os.killpg"):
            if args[0] not in (0, getpid()):
                deny(f"{event} of another process")
        elif event.startswith("ctypes."):
            # numpy imports ctypes (one dlopen of the main program); nothing else is allowed.
            if not (event == "ctypes.dlopen" and args and args[0] is None):
                deny(f"native access through ctypes ({event})")
        elif event == "import":
            if args[0] == "_posixsubprocess":
                deny("re-import of _posixsubprocess")
            if len(args) > 1 and untrusted_native(args[1]):
                deny(f"loading native code from {args[1]!r}")
        elif event in ("resource.setrlimit", "resource.prlimit"):
            deny(f"changing resource limits ({event})")

    def no_fork_exec(*args, **kwargs):
        deny("process creation (_posixsubprocess.fork_exec)")

    if install_hook:
        _posixsubprocess.fork_exec = no_fork_exec
        sys.addaudithook(hook)
    return source

_limit(sys.argv[5])
_source = _sandbox(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
del _sandbox, _limit, _posixsubprocess, resource
_globals = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(_source, "<tool>", "exec"), _globals)
"""


@dataclass(frozen=True)
class PythonToolConfig:
    """Limits for one execution.

    ``timeout_s`` is wall clock; the CPU-time limit is ``timeout_s`` rounded up plus 1.
    ``max_output_bytes`` applies to stdout and stderr separately. ``max_processes`` is
    ``RLIMIT_NPROC``, which the kernel counts over *all* processes of the user (and does
    not enforce for root): process creation is refused by the audit hook regardless.
    ``isolate`` runs the child in fresh network and PID namespaces when that works.
    ``audit_hook=False`` drops the prelude's audit hook: only for testing the other
    layers on their own.
    """

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 << 20
    max_processes: int = 512
    isolate: bool = True
    audit_hook: bool = True
    python: str = sys.executable

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"PythonToolConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(
                f"PythonToolConfig.memory_bytes must be >= 64 MiB (the interpreter needs it), "
                f"got {self.memory_bytes}"
            )
        for name in ("max_output_bytes", "max_file_bytes", "max_processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"PythonToolConfig.{name} must be >= 1")
        if not os.path.isfile(self.python):
            raise ValueError(f"PythonToolConfig.python {self.python!r} is not a file")


@dataclass(frozen=True)
class PythonResult:
    """Outcome of one execution. ``error`` is ``None`` when ``ok``, else one of
    :data:`ERROR_KINDS`; ``detail`` says what happened in words."""

    ok: bool
    stdout: str
    stderr: str
    error: str | None
    returncode: int | None
    detail: str
    elapsed_s: float


class PythonTool:
    """Runs untrusted Python snippets under :class:`PythonToolConfig` limits."""

    def __init__(self, config: PythonToolConfig = PythonToolConfig()):
        self.config = config
        self._unshare = _unshare_path() if config.isolate else None
        self.isolated = self._unshare is not None

    def run(self, code: str) -> PythonResult:
        """Execute ``code`` and return what happened; never raises for any code string."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        start = time.monotonic()
        workdir = None
        try:
            workdir = tempfile.mkdtemp(prefix="rlpt_pytool_")
            return self._run_in(code, workdir, start)
        except Exception as e:  # sandbox machinery failed, not the user code
            return PythonResult(
                False, "", "", "internal", None, f"{type(e).__name__}: {e}", _since(start)
            )
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run_in(self, code: str, workdir: str, start: float) -> PythonResult:
        cfg = self.config
        code_path = os.path.join(workdir, "main.py")
        with open(code_path, "wb") as f:
            f.write(code.encode("utf-8", "surrogatepass"))
        hook = "1" if cfg.audit_hook else "0"
        argv = [
            cfg.python,
            "-I",
            "-B",
            "-c",
            _PRELUDE,
            code_path,
            _MARKER,
            str(_FORBIDDEN_EXIT),
            hook,
            _limits_arg(cfg),
        ]
        if self._unshare is not None:
            argv = [self._unshare, *_UNSHARE, *argv]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # no preexec_fn: forking a JAX process must stay safe
        )
        try:
            out, err, timed_out, overflow = _collect(proc, start + cfg.timeout_s, cfg)
        finally:
            _kill_group(proc)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        error, detail = _classify(proc.returncode, stderr, timed_out, overflow, cfg)
        return PythonResult(
            error is None, stdout, stderr, error, proc.returncode, detail, _since(start)
        )


_UNSHARE = ("--net", "--pid", "--fork", "--kill-child")


@functools.lru_cache(maxsize=1)
def _unshare_path() -> str | None:
    """``unshare`` if ``--net --pid`` works here (root or suitable capabilities)."""
    path = shutil.which("unshare")
    if path is None:
        return None
    try:
        probe = subprocess.run(
            [path, *_UNSHARE, "true"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return path if probe.returncode == 0 else None


def _limits_arg(cfg: PythonToolConfig) -> str:
    """Rlimits for the prelude to set (soft = hard) before any user code runs.

    Set inside the child rather than in a ``preexec_fn``: that would run Python
    between fork and exec, which is unsafe in a multithreaded (e.g. JAX) parent.
    """
    limits = {
        "AS": cfg.memory_bytes,
        "CPU": math.ceil(cfg.timeout_s) + 1,
        "FSIZE": cfg.max_file_bytes,
        "NPROC": cfg.max_processes,
        "CORE": 0,
    }
    return ",".join(f"{k}={v}" for k, v in limits.items())


def _collect(
    proc: subprocess.Popen, deadline: float, cfg: PythonToolConfig
) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes until EOF, the deadline, or a stream passing the output cap."""
    cap = cfg.max_output_bytes
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    timed_out = overflow = False
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not overflow:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = buffers[key.fd]
                room = cap - len(buf)
                buf += chunk[:room]
                overflow = overflow or len(chunk) > room
    # The process may linger after closing its pipes; give it the rest of the deadline.
    if not (timed_out or overflow):
        timed_out = not _wait_unreaped(proc.pid, deadline)
    out, err = buffers.values()
    return bytes(out), bytes(err), timed_out, overflow


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for the child to exit *without reaping it*, so its pid (= its process group
    id) cannot be reused before :func:`_kill_group` runs. False at the deadline."""
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(
    rc: int | None, stderr: str, timed_out: bool, overflow: bool, cfg: PythonToolConfig
) -> tuple[str | None, str]:
    """Map how the process ended to an error kind and a short explanation."""
    if timed_out:
        return "timeout", f"killed after the {cfg.timeout_s:g} s wall-clock limit"
    if overflow:
        return "output_limit", f"output passed {cfg.max_output_bytes} bytes; killed"
    if rc == _FORBIDDEN_EXIT and _MARKER in stderr:
        line = stderr[stderr.rindex(_MARKER) :].splitlines()[0]
        return "forbidden", line[len(_MARKER) :]
    if rc == -signal.SIGXCPU:
        return "timeout", "CPU-time limit reached"
    if rc == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit", f"wrote a file past {cfg.max_file_bytes} bytes"
    if "MemoryError" in stderr:
        return "memory", f"memory limit of {cfg.memory_bytes} bytes reached"
    if rc == -signal.SIGKILL:
        return "memory", "killed by SIGKILL (out of memory)"
    if rc != 0:
        return "exit_code", f"exited with status {rc}"
    return None, "ok"


def _since(start: float) -> float:
    return time.monotonic() - start
