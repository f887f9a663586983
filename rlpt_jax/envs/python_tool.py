"""Sandboxed Python execution for math-tool tasks (host side).

Model-written code is hostile until proven otherwise, so it runs under OS-level
isolation with `bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``,
Debian package ``bubblewrap``). Layers, from the outside in:

* **Namespaces** (bwrap): own PID namespace (the parent's processes cannot be named, so
  not signalled; when its init dies every process in it dies), own network namespace
  (only a loopback nobody else listens on), own IPC/UTS/cgroup namespaces, a new
  session (no terminal to inject into), killed with its parent.
* **File system view** (bwrap): an empty read-only root with read-only binds of
  ``/usr`` (and the ``/bin``, ``/lib*`` links), the loader cache and the interpreter's
  own prefixes; a private size-limited tmpfs at :data:`WORKDIR` as cwd, ``HOME`` and
  ``TMPDIR``; a fresh ``/proc`` of its own PID namespace; a minimal read-only ``/dev``.
  Home directories, the repository, checkpoints, ``/tmp`` and the parent's ``/proc``
  (and with it the environment holding API keys) are simply not there.
* **Identity**: a clean environment; when the caller is root, the code runs as
  ``nobody`` with no capabilities (so the process limit holds: the kernel does not
  enforce it for root).
* **Seccomp filter** (x86-64, aarch64): ``ptrace``, ``mount``, ``unshare``/``setns``,
  namespace flags to ``clone``, ``bpf``, ``io_uring``, ``perf_event_open``, keyrings,
  module loading, clock setting, handle-based opens and similar kernel surface fail
  with ``EPERM``; other-architecture system calls kill the process.
* **Resource limits** (``setrlimit`` by the prelude, before user code): address space
  (memory bombs end in ``MemoryError``), CPU seconds, processes, size of a written file.
* **Wall clock**: at the deadline the sandbox's init is killed (taking its whole PID
  namespace with it) and then bwrap's process group; the call returns only once every
  process is gone. Output is read incrementally and the process is killed once stdout
  or stderr passes ``max_output_bytes``.
* **Audit hook** (defence in depth only; an audit hook is not a security boundary):
  process creation, sockets, ``ctypes``, raising limits and writes outside the work dir
  end the process with a ``forbidden`` report.

Without a working bubblewrap the tool refuses to start (:class:`SandboxUnavailable`,
saying how to install it) unless ``allow_unisolated=True`` is set explicitly; then it
warns once and falls back to the audit hook, rlimits and, where permitted,
``unshare --net --pid``, which hostile code can defeat.

:meth:`PythonTool.run` never raises for any code string: every outcome, including a
timeout, a kill at the output cap and a full work dir, is a :class:`PythonResult` with
an ``error`` kind to count.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import re
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

__all__ = [
    "ERROR_KINDS",
    "WORKDIR",
    "PythonToolConfig",
    "PythonResult",
    "PythonTool",
    "SandboxUnavailable",
    "format_python_result",
]

ERROR_KINDS = ("timeout", "memory", "output_limit", "forbidden", "exit_code", "internal")
WORKDIR = "/sandbox"  # the private tmpfs inside bubblewrap: cwd, HOME and TMPDIR
_FORBIDDEN_EXIT = 86
_MARKER = "[sandbox] forbidden: "
_NOBODY = 65534
_INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: "
    "`sudo dnf install bubblewrap`; or run `bash scripts/setup.sh --test` as root), make "
    "sure namespaces are allowed here (unprivileged user namespaces for a non-root user; "
    "CAP_SYS_ADMIN and no namespace-blocking seccomp profile inside a container), or set "
    "python_tool.allow_unisolated=True to run model code WITHOUT isolation (unsafe)."
)

# Runs in the child as ``python -I -B -u -c _PRELUDE <code file> ...``; cwd is the work dir.
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

    ``timeout_s`` is wall clock (sandbox start-up included); the CPU-time limit is
    ``timeout_s`` rounded up plus 1. ``max_output_bytes`` applies to stdout and stderr
    separately. ``max_file_bytes`` caps any one written file, ``max_disk_bytes`` the
    whole work dir (the tmpfs size, which is memory). ``max_processes`` is
    ``RLIMIT_NPROC`` (threads count too); it is per sandbox for a non-root caller, but
    for a root caller it counts all processes of ``nobody``, so concurrent calls share it.
    ``allow_unisolated`` lets the tool run without bubblewrap (warned once): only for
    machines where containers already isolate it. ``url``: send the code to a
    SandboxFusion-compatible service instead (``POST <url>/run_code``; ``timeout_s`` is its
    run timeout, the HTTP deadline ``timeout_s`` + 10 s, the reply capped at twice
    ``max_output_bytes`` plus 64 KiB); the memory, file, disk and process limits are then
    the service's. ``audit_hook=False`` drops the
    prelude's audit hook: only for testing the other layers on their own.
    """

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 << 20
    max_disk_bytes: int = 64 << 20
    max_processes: int = 128
    audit_hook: bool = True
    allow_unisolated: bool = False
    python: str = sys.executable
    # A SandboxFusion-compatible code-execution service (POST <url>/run_code), for clusters
    # where containers isolate the code: None runs it here under bubblewrap.
    url: str | None = None

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"PythonToolConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(
                f"PythonToolConfig.memory_bytes must be >= 64 MiB (the interpreter needs it), "
                f"got {self.memory_bytes}"
            )
        for name in ("max_output_bytes", "max_file_bytes", "max_disk_bytes", "max_processes"):
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


_DETAIL_CHARS = 200  # a refused path's repr is the model's to choose: keep the line short


def format_python_result(result: PythonResult, max_chars: int = 2000) -> str:
    """Tool output inserted after ``</python>``: what the program printed, and how it
    failed if it did, as ``" <result>\\n…\\n</result>"``.

    stdout comes first, then stderr (a traceback); past ``max_chars`` characters in all,
    the start of stdout and the end of stderr are kept (where a traceback names its
    error), each cut marked with the number of characters left out. A failure other than
    an exception with a traceback ends with one line naming its kind and what happened
    (``[timeout] killed after the 10 s wall-clock limit``). The leading space keeps the
    tag from fusing with the preceding ``</python>`` token.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    out, err = result.stdout.rstrip("\n"), result.stderr.rstrip("\n")
    err_room = min(len(err), max_chars // 2)
    out_room = max_chars - err_room
    if len(out) < out_room:
        err_room = max_chars - len(out)
    if len(out) > out_room:
        out = out[:out_room] + f"\n[... {len(out) - out_room} more characters]"
    if len(err) > err_room:
        err = f"[{len(err) - err_room} characters before ...]\n" + err[len(err) - err_room :]
    lines = [text for text in (out, err) if text]
    if result.error is not None and (result.error != "exit_code" or not err):
        lines.append(f"[{result.error}] {result.detail[:_DETAIL_CHARS]}")
    body = "\n".join(lines) if lines else "(no output: print the values you want to see)"
    return f" <result>\n{body}\n</result>"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot isolate here; the message says how to fix it."""


class PythonTool:
    """Runs untrusted Python snippets under :class:`PythonToolConfig` limits.

    ``isolated`` is True when bubblewrap contains the code (always, unless the config
    allows running without it and it is unavailable); ``seccomp`` says whether the
    seccomp filter is in force too.
    """

    def __init__(self, config: PythonToolConfig = PythonToolConfig()):
        self.config = config
        allow_unisolated = config.allow_unisolated  # read up front: a config field in use
        if config.url:
            self._launcher = _Remote(config.url.rstrip("/") + "/run_code")
            self.isolated, self.seccomp = True, False  # the service's containers isolate
            return
        try:
            self._launcher = _Bubblewrap.find(config.python)
            _self_check(self._launcher, config.python)
        except SandboxUnavailable as e:
            if not allow_unisolated:
                raise
            _warn_once(f"PythonTool runs model code WITHOUT isolation (allow_unisolated=True): {e}")
            self._launcher = _Unisolated(_unshare_path())
        self.isolated = isinstance(self._launcher, _Bubblewrap)
        self.seccomp = self.isolated and self._launcher.seccomp is not None

    def probe(self) -> None:
        """Run a trivial program under this tool's own limits, once at start-up: limits too
        tight for the interpreter to start (memory, time on a loaded host) fail here, with
        what happened, rather than as a failed call in every trajectory."""
        result = self.run("print(6 * 7)")
        if not (result.ok and result.stdout == "42\n"):
            why = (result.stderr.strip() or result.detail)[-1000:]
            raise SandboxUnavailable(
                f"the Python tool cannot run print(6 * 7) under its limits ({result.error}: "
                f"{why}); raise python_tool.timeout_s or python_tool.memory_bytes"
            )

    def run(self, code: str) -> PythonResult:
        """Execute ``code`` and return what happened; never raises for any code string."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, got {type(code).__name__}")
        return _execute(code, self.config, self._launcher)


@dataclass(frozen=True)
class _Launch:
    """One prepared process: its command line and what it inherits."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    info_fd: int | None = None  # bwrap's --info-fd report (the sandbox init's pid)
    # bwrap reports a death by signal N as exit status 128 + N, like a shell.
    shell_status: bool = False


class _Remote:
    """A SandboxFusion-compatible service: ``POST /run_code`` with ``{"code", "language",
    "run_timeout"}``, answered by ``{"status", "message", "run_result": {"status",
    "return_code", "stdout", "stderr"}}``. Its reply is untrusted input like the code's
    output: bounded in time and size, and anything but that shape is an ``internal``
    failure (the tool's, not the program's)."""

    def __init__(self, url: str):
        self.url = url

    def run(self, code: str, cfg: PythonToolConfig, start: float) -> PythonResult:
        from rlpt_jax import net

        payload = {"code": code, "language": "python", "run_timeout": cfg.timeout_s}
        try:
            reply = net.post_json(
                self.url,
                payload,
                timeout_s=cfg.timeout_s + 10.0,
                deadline_s=cfg.timeout_s + 10.0,
                max_bytes=2 * cfg.max_output_bytes + (64 << 10),
            )
        except net.HTTPFailure as e:
            return PythonResult(False, "", "", "internal", None, str(e), _since(start))
        run = reply.get("run_result") if isinstance(reply, dict) else None
        if not isinstance(run, dict):
            message = reply.get("message") if isinstance(reply, dict) else None
            detail = f"the sandbox service sent no run_result ({str(message)[:200]!r})"
            return PythonResult(False, "", "", "internal", None, detail, _since(start))
        out, err = run.get("stdout") or "", run.get("stderr") or ""
        code_ = run.get("return_code")
        if not (isinstance(out, str) and isinstance(err, str)):
            detail = "the sandbox service sent non-text output"
            return PythonResult(False, "", "", "internal", None, detail, _since(start))
        cap = cfg.max_output_bytes
        clipped = len(out) > cap or len(err) > cap
        out, err = out[:cap], err[:cap]
        code_ = code_ if isinstance(code_, int) and not isinstance(code_, bool) else None
        status = run.get("status")
        if status == "TimeLimitExceeded":
            error, detail = "timeout", f"killed after the {cfg.timeout_s:g} s limit (service)"
        elif clipped:
            error, detail = "output_limit", f"output past {cap} bytes was cut (service)"
        elif status == "Finished" and code_ == 0:
            error, detail = None, "exit 0"
        elif status in ("Finished", "Error") and code_ is not None:
            error, detail = "exit_code", f"exit status {code_}"
        else:
            error = "internal"
            detail = f"the sandbox service answered status {str(status)[:100]!r}"
        return PythonResult(error is None, out, err, error, code_, detail, _since(start))


def _execute(code: str, cfg: PythonToolConfig, launcher) -> PythonResult:
    start = time.monotonic()
    if isinstance(launcher, _Remote):
        return launcher.run(code, cfg, start)
    try:
        with contextlib.ExitStack() as stack:
            launch = launcher.prepare(code, cfg, stack)
            return _run_launch(launch, cfg, start)
    except Exception as e:  # sandbox machinery failed, not the user code
        detail = f"{type(e).__name__}: {e}"
        return PythonResult(False, "", "", "internal", None, detail, _since(start))


def _run_launch(launch: _Launch, cfg: PythonToolConfig, start: float) -> PythonResult:
    proc = subprocess.Popen(
        launch.argv,
        cwd=launch.cwd,
        env=launch.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=launch.pass_fds,
        start_new_session=True,  # no preexec_fn: forking a JAX process must stay safe
    )
    try:
        out, err, timed_out, overflow = _collect(proc, start + cfg.timeout_s, cfg)
    finally:
        _stop(proc, launch.info_fd)
        proc.stdout.close()
        proc.stderr.close()
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    rc = _signal_status(proc.returncode) if launch.shell_status else proc.returncode
    error, detail = _classify(rc, stderr, timed_out, overflow, cfg)
    return PythonResult(error is None, stdout, stderr, error, rc, detail, _since(start))


def _signal_status(status: int) -> int:
    """Shell-style 128 + N back to Popen's -N. (Code exiting with such a status on
    purpose is read as killed by that signal: an accepted ambiguity.)"""
    return -(status - 128) if 128 < status < 128 + signal.NSIG else status


def _python_argv(cfg: PythonToolConfig, code_path: str) -> list[str]:
    hook = "1" if cfg.audit_hook else "0"
    prelude_args = [code_path, _MARKER, str(_FORBIDDEN_EXIT), hook, _limits_arg(cfg)]
    # -u: what a program printed before it was killed (a timeout) still reaches the model
    return [cfg.python, "-I", "-B", "-u", "-c", _PRELUDE, *prelude_args]


def _child_env(workdir: str) -> dict[str, str]:
    """The whole environment of the code: nothing of the caller's (API keys live there)."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


# --------------------------------------------------------------------------- bubblewrap


@dataclass(frozen=True)
class _Bubblewrap:
    """How to start one bubblewrap sandbox for a given interpreter.

    ``view`` holds the bwrap arguments for the read-only file system; ``setpriv`` is set
    when the caller is root, to drop to ``nobody`` inside; ``seccomp`` is the compiled
    filter, or None on an architecture without a syscall table here.
    """

    bwrap: str
    view: tuple[str, ...]
    setpriv: str | None
    seccomp: bytes | None

    @classmethod
    def find(cls, python: str) -> _Bubblewrap:
        """The sandbox for ``python``, or :class:`SandboxUnavailable` saying what is missing."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable(f"bubblewrap (`bwrap`) is not on PATH. {_INSTALL_HINT}")
        setpriv = None
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise SandboxUnavailable(
                    "running as root, the sandbox drops to `nobody` with `setpriv` "
                    "(util-linux), which is not on PATH."
                )
        seccomp = _seccomp_program(platform.machine())
        if seccomp is None:
            _warn_once(f"no seccomp syscall table for {platform.machine()!r}: filter off")
        return cls(bwrap, _readonly_view(_python_roots(python)), setpriv, seccomp)

    def prepare(self, code: str, cfg: PythonToolConfig, stack: contextlib.ExitStack) -> _Launch:
        code_fd = stack.enter_context(
            _memfd("rlpt-pytool-code", code.encode("utf-8", "surrogatepass"))
        )
        info_read, info_write = _info_pipe(stack)
        inherited = [code_fd, info_write]
        argv = [self.bwrap, *self.view, *self._workdir_args(cfg, code_fd)]
        argv += [*_NAMESPACE_ARGS[self.setpriv is not None], "--die-with-parent", "--new-session"]
        argv += ["--clearenv", *_setenv_args(_child_env(WORKDIR)), "--chdir", WORKDIR]
        argv += ["--info-fd", str(info_write)]
        if self.seccomp is not None:
            seccomp_fd = stack.enter_context(_memfd("rlpt-pytool-seccomp", self.seccomp))
            inherited.append(seccomp_fd)
            argv += ["--seccomp", str(seccomp_fd)]
        if self.setpriv is not None:  # keep only what setpriv needs to become nobody
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--", *self._drop_root(), *_python_argv(cfg, f"{WORKDIR}/main.py")]
        env = {"PATH": "/usr/bin:/bin"}  # bwrap's own, inherited by the sandbox's init
        return _Launch(argv, "/", env, tuple(inherited), info_read, shell_status=True)

    @staticmethod
    def _workdir_args(cfg: PythonToolConfig, code_fd: int) -> list[str]:
        """A size-limited private tmpfs holding the code; everything else read-only."""
        return [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(cfg.max_disk_bytes), "--perms", "1777", "--tmpfs", WORKDIR,
            "--perms", "0444", "--file", str(code_fd), f"{WORKDIR}/main.py",
            "--remount-ro", "/dev",
            "--remount-ro", "/",
        ]  # fmt: skip

    def _drop_root(self) -> list[str]:
        """For a root caller: ``nobody``, no groups, no capabilities; exec'ing python
        (bwrap sets no_new_privs) cannot regain any. Nothing for anyone else."""
        if self.setpriv is None:
            return []
        return [
            self.setpriv,
            f"--reuid={_NOBODY}",
            f"--regid={_NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]


# A root caller makes no user namespace, so that the code can run as a real `nobody`
# (a user namespace made by root would map it back to root); otherwise bwrap needs one
# and then forbids nested ones.
_NAMESPACE_ARGS = {
    True: (
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ),
    False: ("--unshare-all", "--unshare-user", "--disable-userns"),
}


def _info_pipe(stack: contextlib.ExitStack) -> tuple[int, int]:
    """A pipe for bwrap's ``--info-fd`` report, read without blocking after the run."""
    read_end, write_end = os.pipe()
    stack.callback(os.close, read_end)
    stack.callback(os.close, write_end)
    os.set_blocking(read_end, False)
    return read_end, write_end


def _setenv_args(env: dict[str, str]) -> list[str]:
    return [arg for key, value in env.items() for arg in ("--setenv", key, value)]


@contextlib.contextmanager
def _memfd(name: str, data: bytes):
    """An anonymous in-memory file holding ``data``, for bwrap to read by fd."""
    fd = os.memfd_create(name)
    try:
        _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@functools.lru_cache(maxsize=8)
def _python_roots(python: str) -> tuple[str, ...]:
    """Directories the interpreter needs (its prefixes, venv and base), asked of itself."""
    probe = (
        "import os, sys\n"
        "for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:\n"
        "    print(p)\n"
    )
    try:
        out = subprocess.run(
            [python, "-I", "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SandboxUnavailable(f"cannot ask {python!r} for its prefixes: {e}") from e
    dirs = [os.path.dirname(os.path.abspath(python)), os.path.dirname(os.path.realpath(python))]
    dirs += out.split("\n")
    return tuple(
        sorted({p for d in dirs if d for p in (d, os.path.realpath(d)) if os.path.isdir(p)})
    )


_SYSTEM_DIRS = ("/usr",)
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")


def _readonly_view(roots: tuple[str, ...]) -> tuple[str, ...]:
    """bwrap arguments for the read-only file system: system dirs plus ``roots``.

    Parent directories of a bound path are created explicitly world-readable: bwrap
    would make them 0700, which ``nobody`` could not traverse.
    """
    args = [arg for d in _SYSTEM_DIRS for arg in ("--ro-bind", d, d)]
    for link in _SYSTEM_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    args += [arg for f in _SYSTEM_FILES for arg in ("--ro-bind-try", f, f)]
    bound = list(_SYSTEM_DIRS)
    made: set[str] = set()
    for root in sorted(roots, key=len):  # parents before children
        if any(root == b or root.startswith(b.rstrip("/") + "/") for b in bound):
            continue
        for parent in _parents(root):
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", root, root]
        bound.append(root)
    return tuple(args)


def _parents(path: str) -> list[str]:
    """``/a/b/c`` -> ``['/a', '/a/b']``."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@functools.lru_cache(maxsize=8)
def _self_check(launcher: _Bubblewrap, python: str) -> None:
    """Run a trivial program in the sandbox once per process: a host where bwrap is
    installed but namespaces are not permitted must refuse, not fail every call."""
    cfg = PythonToolConfig(timeout_s=60.0, python=python)
    result = _execute("print(6 * 7)", cfg, launcher)
    if not (result.ok and result.stdout == "42\n"):
        why = (result.stderr.strip() or result.detail)[-2000:]
        raise SandboxUnavailable(
            f"bubblewrap is installed but its self-check failed: {why}. {_INSTALL_HINT}"
        )


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)


# ------------------------------------------------------------------------------ seccomp

# System calls a Python snippet never needs and that widen the kernel surface or undo
# the sandbox: (x86-64 number, aarch64 number); None where the architecture lacks it.
# Numbers from the kernel's asm/unistd_64.h (x86-64) and asm-generic/unistd.h (aarch64).
_DENIED_SYSCALLS = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "syslog": (103, 116),
    "acct": (163, 89),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "fanotify_init": (300, 262),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
}
_CLONE = {"x86_64": (56, 435), "aarch64": (220, 435)}  # clone, clone3
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000  # x86-64's x32 ABI: the same calls under other numbers
_NAMESPACE_FLAGS = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME

# Classic BPF, as in linux/filter.h and linux/seccomp.h.
_LD_W_ABS, _JEQ, _JGE, _AND, _RET = 0x20, 0x15, 0x35, 0x54, 0x06
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_EPERM, _ENOSYS = 1, 38
_DATA_NR, _DATA_ARCH, _DATA_ARG0 = 0, 4, 16  # offsets in struct seccomp_data


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


@functools.lru_cache(maxsize=4)
def _seccomp_program(machine: str) -> bytes | None:
    """The filter bwrap installs before exec'ing the code (``--seccomp FD``).

    Denied calls fail with EPERM rather than killing, so the code sees an ordinary
    ``PermissionError``. ``clone3`` gets ENOSYS (its flags live in memory the filter
    cannot read; the C library then falls back to ``clone``), and ``clone`` with any
    namespace flag is refused. A call under another ABI kills the process.
    """
    if machine not in _AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    eperm = _RET_ERRNO | _EPERM
    prog = [_bpf(_LD_W_ABS, _DATA_ARCH), _bpf(_JEQ, _AUDIT_ARCH[machine], jt=1)]
    prog += [_bpf(_RET, _RET_KILL_PROCESS), _bpf(_LD_W_ABS, _DATA_NR)]
    if machine == "x86_64":
        prog += [_bpf(_JGE, _X32_BIT, jf=1), _bpf(_RET, eperm)]
    for numbers in _DENIED_SYSCALLS.values():
        if numbers[column] is not None:
            prog += [_bpf(_JEQ, numbers[column], jf=1), _bpf(_RET, eperm)]
    clone, clone3 = _CLONE[machine]
    prog += [_bpf(_JEQ, clone3, jf=1), _bpf(_RET, _RET_ERRNO | _ENOSYS)]
    prog += [_bpf(_JEQ, clone, jt=1), _bpf(_RET, _RET_ALLOW)]
    prog += [_bpf(_LD_W_ABS, _DATA_ARG0), _bpf(_AND, _NAMESPACE_FLAGS)]
    prog += [_bpf(_JEQ, 0, jf=1), _bpf(_RET, _RET_ALLOW), _bpf(_RET, eperm)]
    return b"".join(prog)


# -------------------------------------------------------------------------- unisolated


@dataclass(frozen=True)
class _Unisolated:
    """The fallback without bubblewrap: a temp dir, the audit hook and rlimits, plus
    ``unshare --net --pid`` where permitted. Hostile code can defeat it."""

    unshare: str | None

    def prepare(self, code: str, cfg: PythonToolConfig, stack: contextlib.ExitStack) -> _Launch:
        workdir = tempfile.mkdtemp(prefix="rlpt_pytool_")
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        code_path = os.path.join(workdir, "main.py")
        with open(code_path, "wb") as f:
            f.write(code.encode("utf-8", "surrogatepass"))
        argv = _python_argv(cfg, code_path)
        if self.unshare is not None:
            argv = [self.unshare, *_UNSHARE, *argv]
        return _Launch(argv, workdir, _child_env(workdir))


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


# ---------------------------------------------------------------------- process control


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
    id) cannot be reused before :func:`_stop` runs. False at the deadline."""
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _stop(proc: subprocess.Popen, info_fd: int | None) -> None:
    """Kill whatever is left and return only when all of it is gone.

    Killing the sandbox's init makes the kernel kill every process of its PID namespace
    (``setsid`` or not) before init counts as exited; the group kill then ends bwrap
    itself, or the whole job when there is no sandbox.
    """
    init = _sandbox_init(proc.pid, info_fd) if info_fd is not None else None
    if init is not None:
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(init, signal.SIGKILL)
            select.select([init], [], [], 10.0)  # readable once init (and all) exited
        finally:
            os.close(init)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30.0)


def _sandbox_init(bwrap_pid: int, info_fd: int) -> int | None:
    """A pidfd for the sandbox's init, as reported on bwrap's ``--info-fd``; None if bwrap
    never got that far or init is gone. Init is bwrap's own child: checking the parent
    after opening the pidfd rules out a recycled pid."""
    try:
        match = re.search(rb'"child-pid":\s*(\d+)', os.read(info_fd, 65536))
    except BlockingIOError:
        return None
    if match is None:
        return None
    pid = int(match.group(1))
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if _parent_pid(pid) != bwrap_pid:
        os.close(pidfd)
        return None
    return pidfd


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


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
    if "No space left on device" in stderr:
        return "output_limit", f"filled the {cfg.max_disk_bytes}-byte work dir"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory", f"memory limit of {cfg.memory_bytes} bytes reached"
    if rc == -signal.SIGKILL:
        return "memory", "killed by SIGKILL (out of memory)"
    if rc != 0:
        return "exit_code", f"exited with status {rc}"
    return None, "ok"


def _since(start: float) -> float:
    return time.monotonic() - start
