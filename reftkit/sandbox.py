"""Run model-written programs out of process and return what their ``solution()`` returned.

The reference exec'd programs in an unlimited pebble pool (REFERENCE.md C): no memory limit, stdout spam,
the parent's environment and files in reach. Here each call of :func:`run_programs` starts one fresh
worker (``python -I`` running this file) with an empty environment, a throw-away working directory and
CPU / memory / file-size limits. The worker runs the programs one after another, each in fresh globals
under a sub-second wall-clock alarm, and streams one JSON line per result over a private copy of its
stdout, so programs that print cannot corrupt the results.

A program can still stall the worker in ways no signal interrupts (``10**10**8``), kill it (``os._exit``)
or exhaust a limit. The parent therefore expects a result line within ``timeout`` plus a grace period;
when the worker stalls or dies, the program it was running gets that verdict and the rest are retried in
a new worker, so one bad program costs only its own timeout.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Seconds a worker may take beyond a program's timeout (start-up, scheduling on a loaded machine).
_GRACE = 2.0
_MAX_TEXT = 100
_MAX_ERROR = 200
_FILE_SIZE_LIMIT = 1 << 20


@dataclass(frozen=True)
class ProgramResult:
    status: str  # "ok" | "error" | "timeout"
    value: float | int | str | bool | None  # what solution() returned when ok, as a plain value
    error: str | None  # short message, e.g. "ZeroDivisionError: division by zero"


def run_programs(programs: Sequence[str], timeout: float = 2.0, memory_mb: int = 512) -> list[ProgramResult]:
    """Run each program's ``solution()``; results in input order, identical texts run once."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    unique = list(dict.fromkeys(programs))
    results: list[ProgramResult] = []
    while len(results) < len(unique):
        answered, failure = _run_batch(unique[len(results) :], timeout, memory_mb)
        results.extend(answered)
        if failure is not None:
            results.append(failure)
    by_text = dict(zip(unique, results, strict=True))
    return [by_text[program] for program in programs]


def _run_batch(programs: list[str], timeout: float, memory_mb: int) -> tuple[list[ProgramResult], ProgramResult | None]:
    """Results for a prefix of ``programs``, plus the verdict on the next one if the worker failed on it."""
    request = {
        "programs": programs,
        "timeout": timeout,
        "memory_mb": memory_mb,
        "cpu_seconds": math.ceil(timeout * len(programs) + _GRACE),
    }
    patience = timeout + _GRACE
    with (
        tempfile.TemporaryDirectory(prefix="reftkit-sandbox-", ignore_cleanup_errors=True) as workdir,
        _start_worker(workdir) as worker,
    ):
        try:
            answered, stalled = _collect(worker, json.dumps(request).encode(), len(programs), patience)
        finally:
            # Not yet reaped, so the group id is still ours: this also ends anything the programs forked.
            os.killpg(worker.pid, signal.SIGKILL)
    if len(answered) == len(programs):
        return answered, None
    if stalled:
        return answered, _timeout_result(timeout)
    code = worker.returncode
    how = f"signal {-code} ({signal.strsignal(-code)})" if code < 0 else f"exit code {code}"
    return answered, ProgramResult("error", None, f"WorkerDied: {how}")


def _start_worker(workdir: str) -> subprocess.Popen:
    # The worker sets its own limits: preexec_fn is unsafe in a multi-threaded (torch) parent.
    return subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        env={},
        start_new_session=True,
    )


def _collect(worker: subprocess.Popen, request: bytes, count: int, patience: float) -> tuple[list[ProgramResult], bool]:
    """Read up to ``count`` result lines; the flag says the worker went ``patience`` seconds silent."""
    assert worker.stdin is not None and worker.stdout is not None
    answered: list[ProgramResult] = []
    try:
        worker.stdin.write(request)
        worker.stdin.close()
    except BrokenPipeError:
        return answered, False
    fd = worker.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + patience
    while len(answered) < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            return answered, True
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines[: count - len(answered)]:
            try:
                status, value, error = json.loads(line)
            except (TypeError, ValueError):  # not our output: treat the worker as dead
                return answered, False
            answered.append(ProgramResult(status, value, error))
            deadline = time.monotonic() + patience
    return answered, False


def _timeout_result(timeout: float) -> ProgramResult:
    return ProgramResult("timeout", None, f"TimeoutError: no result within {timeout:g} s")


# ---- everything below runs in the worker process ----


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in a program does not swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _plain(value: object) -> float | int | str | bool | None:
    """A JSON-safe stand-in for a return value: numbers stay numbers, anything else becomes short text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:  # too large for JSON and for any answer; keep only its sign
            return math.inf if value > 0 else -math.inf
        return int(value)
    if isinstance(value, float) or hasattr(type(value), "__float__"):
        try:
            return float(value)  # Fraction, Decimal, numpy scalars
        except (TypeError, ValueError, OverflowError):
            pass
    return str(value)[:_MAX_TEXT]


def _describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:_MAX_ERROR]


def _run_one(source: str, timeout: float) -> tuple[str, object, str | None]:
    """``[status, value, error]`` for one program, run in fresh globals under a wall-clock alarm."""
    namespace = {"__name__": "__program__", "math": math}
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compile(source, "<program>", "exec"), namespace)
            solution = namespace.get("solution")
            if not callable(solution):
                raise NameError("the program defines no solution()")
            value = _plain(solution())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return "timeout", None, _timeout_result(timeout).error
    except BaseException as exc:  # SystemExit, MemoryError and RecursionError are program errors too
        return "error", None, _describe(exc)
    return "ok", value, None


def _worker_main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    memory = request["memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (request["cpu_seconds"], request["cpu_seconds"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_SIZE_LIMIT, _FILE_SIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write then fails with an OSError
    signal.signal(signal.SIGALRM, _on_alarm)

    # Results go to a private copy of stdout; fds 1 and 2 (and sys.stdout/stderr) now lead to /dev/null.
    results = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the worker

    for source in request["programs"]:
        results.write(json.dumps(_run_one(source, request["timeout"])).encode() + b"\n")
        results.flush()
    os._exit(0)  # skip interpreter shutdown: threads or atexit hooks left by programs must not block it


if __name__ == "__main__":
    _worker_main()
