"""Run model-written programs contained, and return what their ``solution()`` returned.

Why this file is long: it is one file importing nothing of reftkit, on purpose: each server runs
this very file as an isolated script (``python -I -S sandbox.py``: no site-packages, no environment, no
reftkit on the path), so everything the server and its runners execute must be in it; split modules
could not be imported there.

:func:`run_programs` is the only way reftkit executes model output (RL rewards, evaluation, gold-program
checks). A program is the text of a module defining ``solution()``; each gets ``status`` "ok" / "error" /
"timeout", its value as a plain float, int, str or bool (or None when ``solution()`` returned None), and a
short error message.

Processes (three levels)
    *parent* (the training process) -- keeps a lazily started, persistent pool of ``N`` *servers*
    (``REFTKIT_SANDBOX_WORKERS``, default ``min(2, cpu_count)``), reused across calls and shut down at exit.
    A server is ``python -I -S`` running this file: started with an empty environment, stdin/stdout pipes to
    the parent only, stderr and everything else closed, its own session (process group), and a private
    scratch directory as working directory. It imports the allowed modules once (sympy too, when installed;
    its internal imports are then done), confines itself (below) and waits for requests. It never runs
    model code: per request (a chunk of programs) it forks a *runner*, which sets its own limits, disarms
    ``os`` and runs the chunk's programs one after another, streaming one JSON line per result back over a
    private pipe. The fork is cheap (~1-2 ms, amortised over a chunk of up to 64 programs) and gives every
    chunk a clean interpreter state: nothing a program changes survives its chunk.

Time
    Timeouts are per program and do not grow with the batch. The runner arms a wall-clock ``ITIMER_REAL``
    for each program (cheap case: Python loops). The server, which runs no model code, expects each result
    line within ``timeout + 0.25 s`` and otherwise SIGKILLs the runner (C-level hangs like ``10**10**8``,
    handlers that swallow the alarm) and forks a new one for the rest of the chunk. The parent in turn
    expects each line from a server within ``timeout + 0.9 s`` and otherwise kills the whole server process
    group and replaces the server; so a program ends within its timeout plus one second whatever it does.

Containment, layered (each layer is meant to hold on its own; pure-Python restrictions are bypassable,
e.g. through ``().__class__.__base__.__subclasses__()``, which is why the OS layers exist)
    * OS, server (only when started as root, each layer skipped if the kernel refuses it): a new, empty
      network namespace (``unshare(CLONE_NEWNET)``: no interface but a down loopback), ``chroot`` into the
      scratch directory (nothing outside it exists for the program: no ``/etc/passwd``, no ``/tmp``), then
      the uid/gid of ``nobody`` with no groups and ``no_new_privs``. :func:`confinement` reports which layers
      a server has. Without root none of these is available (no network namespace: sockets are blocked only
      by the Python layer below; files are protected by the user's own permissions).
    * OS, runner: ``RLIMIT_AS`` = ``memory_mb`` (the whole runner, interpreter and preloaded modules
      included), ``RLIMIT_CPU`` = the chunk's total budget (cumulative CPU of one chunk only, since a runner
      lives for one chunk), ``RLIMIT_FSIZE`` 1 MiB, ``RLIMIT_NOFILE`` 16, ``RLIMIT_CORE`` 0 and
      ``RLIMIT_NPROC`` 0 (no fork, no threads; the kernel enforces it for non-root uids, which is why the
      server drops root). Fds 0-2 lead to /dev/null, every other fd but the result pipe is closed.
    * Python, runner: programs get a restricted ``__builtins__`` (no ``open``, ``exec``, ``compile``,
      ``input``, ``breakpoint``; ``eval`` stays, as model programs use it and it inherits the restricted
      builtins) whose ``__import__`` allows only :data:`ALLOWED_MODULES` (absolute imports only); ``os`` and
      ``posix`` lose their process, file, signal and fd functions (``random._os`` and friends are in reach
      of a program); ``sys.stdout``/``stderr`` are a buffer that keeps 10 KB and is discarded.
    Nothing of the parent is inherited: no environment variables, no open files, no cwd.

Speed
    Warm servers, chunks (fork amortised), results streamed, identical texts run once per call, and a
    bounded LRU cache (100k entries) keyed by (text, timeout, memory_mb) across calls. Verdicts a program
    caused (ok, error, timeout, a runner it killed) are cached; failures of the machinery (a server that
    died or stalled) are not.

Known limits: programs of one chunk share a runner, so a program that escapes the Python layer (see above)
could tamper with the results of later programs in its chunk; all runners run as the same uid
(``nobody``) and could signal each other's processes, which costs at most the in-flight program of another
server an error verdict; without root there is no OS-level network or filesystem isolation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

#: Top-level modules a program may import (absolute imports only). sympy/mpmath only when installed.
ALLOWED_MODULES = frozenset(
    {
        "math",
        "cmath",
        "fractions",
        "decimal",
        "itertools",
        "functools",
        "operator",
        "statistics",
        "collections",
        "re",
        "string",
        "datetime",
        "numbers",
        "random",
        "heapq",
        "bisect",
        "copy",
        "typing",
        "__future__",
        "sympy",
        "mpmath",
    }
)
# Imported by the server before it confines itself (after a chroot nothing can be imported any more).
_PRELOAD = (
    *sorted(ALLOWED_MODULES - {"sympy", "mpmath"}),
    *("collections.abc", "encodings.ascii", "encodings.latin_1", "builtins", "resource"),
)
_OPTIONAL = ("sympy", "sympy.abc", "mpmath")

_SERVER_GRACE = 0.25  # seconds a runner may be silent beyond a program's timeout before the server kills it
_PARENT_GRACE = 0.9  # seconds a server may be silent beyond a program's timeout before the parent kills it
_STARTUP_PATIENCE = 60.0  # seconds a new server may take to import and confine itself
_MAX_CHUNK = 64
_CACHE_SIZE = 100_000
_MAX_TEXT = 100
_MAX_ERROR = 200
_MAX_OUTPUT = 10_000
_MAX_LINE = 1 << 16
_FILE_SIZE_LIMIT = 1 << 20
_NOBODY = 65534
_STATUSES = ("ok", "error", "timeout")


@dataclass(frozen=True)
class ProgramResult:
    status: str  # "ok" | "error" | "timeout"
    value: float | int | str | bool | None  # what solution() returned when ok, as a plain value
    error: str | None  # short message, e.g. "ZeroDivisionError: division by zero"


def run_programs(programs: Sequence[str], timeout: float = 2.0, memory_mb: int = 512) -> list[ProgramResult]:
    """Run each program's ``solution()`` in the sandbox; results in input order, identical texts run once.

    ``timeout`` is per program (wall clock, seconds); ``memory_mb`` bounds the address space of the process
    running it (interpreter and preloaded modules included, so keep it above ~300 MB when sympy is installed).
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if memory_mb <= 0:
        raise ValueError("memory_mb must be positive")
    if not programs:
        return []
    with _LOCK:
        found: dict[str, ProgramResult] = {}
        missing: list[str] = []
        for text in dict.fromkeys(programs):
            cached = _CACHE.get((text, timeout, memory_mb))
            if cached is None:
                missing.append(text)
            else:
                _CACHE.move_to_end((text, timeout, memory_mb))
                found[text] = cached
        if missing:
            for text, (result, cacheable) in zip(missing, _pool().run(missing, timeout, memory_mb), strict=True):
                found[text] = result
                if cacheable:
                    _CACHE[(text, timeout, memory_mb)] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return [found[text] for text in programs]


def confinement() -> list[str]:
    """The OS layers a sandbox server has ("netns", "chroot", "nobody"); empty when not started as root."""
    with _LOCK:
        return list(_pool().layers())


def shutdown() -> None:
    """Stop the worker pool (it restarts on the next call) and clear the result cache."""
    global _POOL
    with _LOCK:
        if _POOL is not None and _POOL.pid == os.getpid():
            _POOL.close()
        _POOL = None
        _CACHE.clear()


# ---- parent side ----

_LOCK = threading.RLock()
_CACHE: OrderedDict[tuple[str, float, int], ProgramResult] = OrderedDict()
_POOL: _Pool | None = None


def _pool() -> _Pool:
    global _POOL
    if _POOL is not None and _POOL.pid != os.getpid():  # forked (DataLoader, accelerate): not our servers
        _POOL.abandon()
        _POOL = None
    if _POOL is None:
        _POOL = _Pool(_worker_count())
    return _POOL


def _worker_count() -> int:
    configured = os.environ.get("REFTKIT_SANDBOX_WORKERS", "").strip()
    if configured:
        count = int(configured)
        if count < 1:
            raise ValueError("REFTKIT_SANDBOX_WORKERS must be at least 1")
        return count
    return max(1, min(2, os.cpu_count() or 1))


def _extra_path() -> list[str]:
    """Directories the isolated server needs on sys.path for the optional modules (sympy, mpmath)."""
    import importlib.util

    paths = []
    for name in ("sympy", "mpmath"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            root = os.path.dirname(os.path.dirname(spec.origin))
            if root not in paths:
                paths.append(root)
    return paths


class _Server:
    """One server process as the parent sees it."""

    def __init__(self, extra_path: list[str]) -> None:
        import subprocess
        import tempfile

        self.scratch = tempfile.mkdtemp(prefix="reftkit-sandbox-")
        # The server sets its own limits and confinement: preexec_fn is unsafe in a multi-threaded parent.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), *extra_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self.scratch,
            env={},
            close_fds=True,
            start_new_session=True,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.ready = False
        self.layers: list[str] = []
        self.buffer = b""
        self.inflight: deque[int] = deque()
        self.deadline = _now() + _STARTUP_PATIENCE

    def send(self, indices: list[int], programs: list[str], timeout: float, memory_mb: int) -> bool:
        request = {"programs": [programs[i] for i in indices], "timeout": timeout, "memory_mb": memory_mb}
        self.inflight.extend(indices)
        if self.ready:
            self.deadline = _now() + timeout + _PARENT_GRACE
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        except OSError:  # died: the caller sees EOF on its next read
            return False
        return True

    def close(self) -> None:
        import shutil

        with contextlib.suppress(OSError):  # not yet reaped, so the group id is still ours
            os.killpg(self.proc.pid, signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def abandon(self) -> None:
        """In a forked child: drop our copies of the pipes, leave the processes to the parent that owns them."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _Pool:
    def __init__(self, size: int) -> None:
        import atexit

        self.pid = os.getpid()
        self.extra_path = _extra_path()
        self.servers = [_Server(self.extra_path) for _ in range(size)]
        self.failed_starts = 0
        atexit.register(self._atexit)

    def _atexit(self) -> None:
        if self.pid == os.getpid():
            self.close()

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

    def abandon(self) -> None:
        for server in self.servers:
            server.abandon()
        self.servers = []

    def layers(self) -> list[str]:
        server = self.servers[0]
        while not server.ready:
            self._read(server, _STARTUP_PATIENCE)
            server = self.servers[0]
        return server.layers

    def _read(self, server: _Server, wait: float) -> None:
        ready, _, _ = select.select([server.fd], [], [], wait)
        if not ready:
            raise RuntimeError("sandbox server did not start")
        data = os.read(server.fd, _MAX_LINE)
        if not data:
            self._replace(server)
            raise RuntimeError("sandbox server died while starting")
        server.buffer += data
        for line in self._lines(server):
            self._ready_line(server, line)

    @staticmethod
    def _lines(server: _Server) -> list[bytes]:
        *lines, server.buffer = server.buffer.split(b"\n")
        return lines

    @staticmethod
    def _ready_line(server: _Server, line: bytes) -> bool:
        message = json.loads(line)
        if not (isinstance(message, list) and message and message[0] == "ready"):
            return False
        server.ready = True
        server.layers = list(message[1])
        return True

    def _replace(self, server: _Server) -> _Server:
        if not server.ready:
            self.failed_starts += 1
            if self.failed_starts > 3:
                raise RuntimeError("sandbox servers keep dying while starting")
        server.close()
        fresh = _Server(self.extra_path)
        self.servers[self.servers.index(server)] = fresh
        return fresh

    def run(self, programs: list[str], timeout: float, memory_mb: int) -> list[tuple[ProgramResult, bool]]:
        """(result, cacheable) per program."""
        results: list[tuple[ProgramResult, bool] | None] = [None] * len(programs)
        size = max(1, min(_MAX_CHUNK, math.ceil(len(programs) / (4 * len(self.servers)))))
        queue: deque[list[int]] = deque(
            list(range(i, min(i + size, len(programs)))) for i in range(0, len(programs), size)
        )
        remaining = len(programs)
        try:
            while remaining:
                for server in list(self.servers):
                    if not server.inflight and queue:
                        if server.proc.poll() is not None:  # died while idle (killed by a program of another)
                            server = self._replace(server)
                        server.send(queue.popleft(), programs, timeout, memory_mb)
                busy = [s for s in self.servers if s.inflight]
                wait = max(min(s.deadline for s in busy) - _now(), 0.0)
                readable, _, _ = select.select([s.fd for s in busy], [], [], wait)
                for server in busy:
                    if server.fd in readable:
                        remaining -= self._receive(server, programs, results, queue, timeout)
                    elif _now() >= server.deadline:
                        remaining -= self._fail(server, results, queue, stalled=True, timeout=timeout)
        except BaseException:
            # Interrupted (KeyboardInterrupt...): servers may hold half-answered chunks; start afresh next time.
            for server in list(self.servers):
                if server.inflight:
                    server.inflight.clear()
                    self._replace(server)
            raise
        return results  # type: ignore[return-value]

    def _receive(
        self,
        server: _Server,
        programs: list[str],
        results: list,
        queue: deque[list[int]],
        timeout: float,
    ) -> int:
        data = os.read(server.fd, _MAX_LINE)
        if not data:
            return self._fail(server, results, queue, stalled=False, timeout=timeout)
        server.buffer += data
        answered = 0
        for line in self._lines(server):
            try:
                if not server.ready and self._ready_line(server, line):
                    continue
                status, value, error = json.loads(line)
                if status not in _STATUSES or not server.inflight:
                    raise ValueError(line)
            except (TypeError, ValueError):
                return answered + self._fail(server, results, queue, stalled=False, timeout=timeout)
            results[server.inflight.popleft()] = (ProgramResult(status, value, error), True)
            answered += 1
        if len(server.buffer) > _MAX_LINE:
            return answered + self._fail(server, results, queue, stalled=False, timeout=timeout)
        server.deadline = _now() + (timeout + _PARENT_GRACE if server.ready else _STARTUP_PATIENCE)
        return answered

    def _fail(self, server: _Server, results: list, queue: deque[list[int]], stalled: bool, timeout: float) -> int:
        """A server died, stalled or talked nonsense.

        The server forwards results only as they come, so a program that stops or kills its server may have
        run ahead of the last result the parent saw: the first unanswered program is the culprit only when
        it is the only one left. Otherwise the unanswered programs go back one per chunk, which finds it.
        """
        pending = list(server.inflight)
        server.inflight.clear()
        answered = 0
        if len(pending) == 1 and server.ready:
            code = server.proc.poll()
            if stalled:
                result = _timeout_result(timeout)
            else:
                how = "no exit status" if code is None else _exit_text(code)
                result = ProgramResult("error", None, f"WorkerDied: sandbox server failed ({how})")
            results[pending[0]] = (result, False)
            answered = 1
        elif pending and server.ready:
            queue.extendleft([i] for i in reversed(pending))
        elif pending:  # never started: not the programs' fault
            queue.appendleft(pending)
        self._replace(server)
        return answered


def _now() -> float:
    import time

    return time.monotonic()


def _timeout_result(timeout: float) -> ProgramResult:
    return ProgramResult("timeout", None, _timeout_text(timeout))


def _timeout_text(timeout: float) -> str:
    return f"TimeoutError: no result within {timeout:g} s"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"signal {-code} ({name})"
    return f"exit code {code}"


# ---- server: runs in the worker process, never runs model code ----


def _server_main() -> None:
    # A Ctrl-C or SIGTERM sent to the whole process group is reftkit's to handle: it finishes the step in flight,
    # which needs these servers, then checkpoints. A server ends when reftkit closes its stdin (or kills it).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.path.extend(sys.argv[1:])
    import importlib

    for name in _PRELOAD:
        importlib.import_module(name)
    for name in _OPTIONAL:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    _warm_sympy()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)
    layers = _confine(os.getcwd()) if os.geteuid() == 0 else []
    import gc

    gc.collect()
    gc.freeze()  # fewer copy-on-write faults in the runners
    requests = os.fdopen(0, "rb")
    _write_all(1, json.dumps(["ready", layers]).encode() + b"\n")
    while True:
        line = requests.readline()
        if not line:
            os._exit(0)
        request = json.loads(line)
        _serve(request["programs"], float(request["timeout"]), int(request["memory_mb"]), devnull)


def _warm_sympy() -> None:
    """Run the common sympy entry points once so that their lazy imports happen before the chroot."""
    sympy = sys.modules.get("sympy")
    if sympy is None:
        return
    try:
        x = sympy.Symbol("x")
        sympy.solve(sympy.Eq(2 * x + 3, 7), x)
        sympy.simplify(sympy.sqrt(8) + sympy.Rational(1, 3))
        sympy.nsimplify(0.5)
        sympy.factorint(360)
        sympy.N(sympy.pi, 10)
        sympy.binomial(10, 3), sympy.factorial(5), sympy.isprime(97)
        sympy.expand((x + 1) ** 3)
        sympy.factor(x**2 - 1)
        sympy.integrate(x**2, (x, 0, 1))
        sympy.diff(sympy.sin(x), x)
        sympy.solve([x + sympy.Symbol("y") - 3, x - 1], [x, sympy.Symbol("y")])
        float(sympy.Float(1.5)), int(sympy.Integer(3))
    except Exception:
        pass


def _confine(jail: str) -> list[str]:
    """As root: empty network namespace, chroot into the scratch directory, become nobody. Best effort."""
    layers = []
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) == 0:  # CLONE_NEWNET
            layers.append("netns")
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no exec can regain privileges
        del libc
    except Exception:
        pass
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    try:
        os.chown(jail, _NOBODY, _NOBODY)
        os.chmod(jail, 0o700)
        os.chroot(jail)
        os.chdir("/")
        layers.append("chroot")
    except OSError:
        pass
    try:
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
        layers.append("nobody")
    except OSError:
        pass
    return layers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _serve(programs: list[str], timeout: float, memory_mb: int, devnull: int) -> None:
    """Answer one chunk on stdout, one line per program, forking runners until every program has a line."""
    start = 0
    while start < len(programs):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the runner
            try:
                os.close(read_end)
                _runner(programs[start:], timeout, memory_mb, write_end, devnull)
            finally:
                os._exit(70)
        os.close(write_end)
        try:
            start += _watch(pid, read_end, len(programs) - start, timeout)
        finally:
            os.close(read_end)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # already reaped by _death_verdict
                os.waitpid(pid, 0)
    _clear_scratch()


def _watch(pid: int, fd: int, count: int, timeout: float) -> int:
    """Forward the runner's result lines; when it stalls or dies, give the program it was on a verdict."""
    import time

    answered = 0
    pending = b""
    deadline = time.monotonic() + timeout + _SERVER_GRACE
    verdict: list | None = None
    while answered < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            verdict = ["timeout", None, _timeout_text(timeout)]
            break
        chunk = os.read(fd, _MAX_LINE)
        if not chunk:
            verdict = _death_verdict(pid, timeout)
            break
        *lines, pending = (pending + chunk).split(b"\n")
        good = []
        for line in lines[: count - answered]:
            try:
                status, value, error = json.loads(line)
                if not _well_formed(status, value, error):
                    raise ValueError(status)
            except (TypeError, ValueError):
                verdict = ["error", None, "WorkerDied: runner wrote a malformed result"]
                break
            good.append(json.dumps([status, value, error]).encode())
        if good:
            _write_all(1, b"\n".join(good) + b"\n")
            answered += len(good)
            deadline = time.monotonic() + timeout + _SERVER_GRACE
        if verdict is not None or len(pending) > _MAX_LINE:
            verdict = verdict or ["error", None, "WorkerDied: runner wrote a malformed result"]
            break
    if verdict is None:
        return answered
    _write_all(1, json.dumps(verdict).encode() + b"\n")
    return answered + 1


def _well_formed(status: object, value: object, error: object) -> bool:
    plain = (
        value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= _MAX_TEXT)
    )
    return status in _STATUSES and plain and (error is None or (isinstance(error, str) and len(error) <= _MAX_ERROR))


def _death_verdict(pid: int, timeout: float) -> list:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == -signal.SIGXCPU:
        return ["timeout", None, f"TimeoutError: CPU time limit exceeded (timeout {timeout:g} s)"]
    return ["error", None, f"WorkerDied: {_exit_text(code)}"]


def _clear_scratch() -> None:
    """Remove anything a program managed to create in the scratch directory (cwd)."""
    try:
        names = os.listdir(".")
    except OSError:
        return
    if names:
        import shutil

        for name in names:
            path = os.path.join(".", name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


# ---- runner: a forked child of the server, runs one chunk of programs ----


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in a program does not swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


class _CappedOutput:
    """Stand-in for sys.stdout / sys.stderr: keeps the first _MAX_OUTPUT characters, drops the rest."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> int:
        text = str(text)
        room = _MAX_OUTPUT - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def clear(self) -> None:
        self.parts.clear()
        self.size = 0


# Removed from os and posix in the runner: processes, signals, files and fds, identity, environment.
_DISARM_PREFIXES = ("exec", "spawn", "posix_spawn", "fork", "kill", "set", "wait", "chown", "lchown", "fchown")
_DISARM_NAMES = frozenset(
    """system popen _exit abort remove unlink rmdir removedirs rename renames replace mkdir makedirs mkfifo mknod
    link symlink chmod fchmod lchmod truncate ftruncate open openpty pipe pipe2 dup dup2 close closerange chdir
    fchdir chroot putenv unsetenv environ environb getenv register_at_fork write writev pwrite pwritev read
    readv pread sendfile fdopen plock nice sched_setaffinity memfd_create eventfd pidfd_open utime
    copy_file_range splice""".split()
)
_DROP_MODULES = ("subprocess", "socket", "_socket", "ssl", "_ssl", "select", "resource", "signal", "_signal", "pty")


def _runner(programs: list[str], timeout: float, memory_mb: int, result_fd: int, devnull: int) -> None:
    import builtins
    import resource

    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 1 << 16)
    memory = memory_mb << 20
    cpu = math.ceil(timeout * len(programs)) + 1
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_SIZE_LIMIT, _FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with an OSError instead
    signal.signal(signal.SIGALRM, _on_alarm)
    output = _CappedOutput()
    sys.stdout = sys.stderr = output  # type: ignore[assignment]
    sys.stdin = None  # type: ignore[assignment]

    write, exit_, setitimer, dumps = os.write, os._exit, signal.setitimer, json.dumps
    for module in (os, sys.modules.get("posix")):
        if module is None:
            continue
        for name in list(vars(module)):
            if name in _DISARM_NAMES or name.startswith(_DISARM_PREFIXES):
                delattr(module, name)
    for name in ("sys", "path"):
        vars(os).pop(name, None)
    for name in _DROP_MODULES:
        sys.modules.pop(name, None)

    allowed = {name: sys.modules[name] for name in ALLOWED_MODULES if name in sys.modules}
    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0:
            raise ImportError("relative imports are not allowed")
        if name.partition(".")[0] not in allowed:
            raise ImportError(f"import of {name!r} is not allowed in the sandbox")
        return real_import(name, globals, locals, fromlist, 0)

    safe = dict(vars(builtins))
    for name in ("open", "exec", "compile", "input", "breakpoint", "help", "exit", "quit", "copyright", "credits"):
        safe.pop(name, None)
    safe["__import__"] = guarded_import
    snapshot = {module: dict(vars(module)) for module in allowed.values()}
    decimal = allowed.get("decimal")

    for source in programs:
        result = _run_one(source, timeout, safe, setitimer, allowed.get("math", math))
        try:
            line = dumps(result, allow_nan=True).encode()
        except (TypeError, ValueError) as exc:
            line = dumps(["error", None, _describe(exc)]).encode()
        view = memoryview(line + b"\n")
        while view:
            view = view[write(result_fd, view) :]
        output.clear()
        if decimal is not None:
            decimal.setcontext(decimal.Context())
        sys.stdout = sys.stderr = output  # type: ignore[assignment]
        for module, namespace in snapshot.items():  # undo `math.pi = 3` and the like
            current = vars(module)
            if current != namespace:
                current.clear()
                current.update(namespace)
    exit_(0)  # skip interpreter shutdown: threads or atexit hooks left by programs must not block it


def _run_one(source: str, timeout: float, safe_builtins: dict, setitimer, math_module) -> list:
    """``[status, value, error]`` for one program, run in fresh globals under a wall-clock alarm."""
    namespace = {"__name__": "__program__", "__builtins__": safe_builtins, "math": math_module}
    try:
        setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compile(source, "<program>", "exec"), namespace)
            solution = namespace.get("solution")
            if not callable(solution):
                raise NameError("the program defines no solution()")
            value = _plain(solution())
        except _Timeout:
            raise
        except BaseException as exc:  # SystemExit, MemoryError and RecursionError are program errors too
            return ["error", None, _describe(exc)]
        finally:
            setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return ["timeout", None, _timeout_text(timeout)]
    return ["ok", value, None]


def _plain(value: object) -> float | int | str | bool | None:
    """The return value as a plain JSON value: numbers stay numbers, text is truncated, anything else fails."""
    import numbers

    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)[:_MAX_TEXT]
    if isinstance(value, int | numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        try:
            float(number)
        except OverflowError:  # too large for JSON and for any answer; keep only its sign
            return math.inf if number > 0 else -math.inf
        return number
    if isinstance(value, float) or hasattr(type(value), "__float__"):
        try:
            return float(value)  # Fraction, Decimal, sympy and numpy numbers
        except OverflowError:
            return math.inf if value > 0 else -math.inf  # type: ignore[operator]
        except (TypeError, ValueError) as exc:
            raise TypeError(f"unsupported return type {type(value).__name__} ({_describe(exc)})") from None
    raise TypeError(f"unsupported return type {type(value).__name__}")


def _describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:_MAX_ERROR]


if __name__ == "__main__":
    _server_main()
