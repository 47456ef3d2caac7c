"""Hostile programs: each ends in error or timeout within its timeout plus 1 s and leaves the host unchanged.

Many programs first escape the Python layer (``ESCAPE`` re-creates a complete ``posix`` module from the
interpreter's built-in importer), so that the OS layers (rlimits, chroot, uid nobody, network namespace,
empty environment, closed fds) are what is tested, not only the import allow-list. After every program the
test checks the host: a canary file outside the sandbox is unchanged, no file the programs aim at exists,
no sandbox process is left beyond the pool's servers, the parent's secret did not leak, and an ordinary
batch still gives correct values.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from reftkit.reward import sandbox
from reftkit.reward.sandbox import run_programs

TIMEOUT = 1.0
SECRET = "reftkit-canary-secret-5f1c"
PWNED = "/tmp/reftkit_pwned"
NOBODY = 65534


def program(*body: str, prelude: tuple[str, ...] = ()) -> str:
    return "".join(f"{line}\n" for line in prelude) + "def solution():\n" + "".join(f"    {line}\n" for line in body)


# Escape the Python layer: a fresh posix module with every function, straight from the built-in importer.
ESCAPE = (
    "classes = dict((c.__name__, c) for c in ().__class__.__base__.__subclasses__())",
    "loader = classes['BuiltinImporter']",
    "def builtin(name):",
    "    return loader.create_module(classes['ModuleSpec'](name, loader))",
    "posix = builtin('posix')",
)


def escaped(*body: str) -> str:
    return program(*body, prelude=ESCAPE)


ERROR = {"error"}
TIMEOUT_ONLY = {"timeout"}

# name -> (program text with {canary} / {pwned} / {pid} placeholders, allowed statuses)
HOSTILE: dict[str, tuple[str, set[str]]] = {
    "fork_bomb_import": (program("import os", "while True:", "    os.fork()"), ERROR),
    "fork_escaped": (escaped("posix.fork()", "return 1"), ERROR),
    "fork_bomb_escaped_swallowing_errors": (
        escaped("while True:", "    try:", "        posix.fork()", "    except BaseException:", "        pass"),
        TIMEOUT_ONLY,
    ),
    "memory_bomb_list": (program("x = [0] * 10 ** 10", "return len(x)"), ERROR),
    "memory_bomb_doubling": (program("s = 'a'", "while True:", "    s += s"), ERROR),
    "infinite_loop": (program("while True:", "    pass"), TIMEOUT_ONLY),
    "infinite_loop_swallowing_the_alarm": (
        program(
            "while True:",
            "    try:",
            "        while True:",
            "            pass",
            "    except BaseException:",
            "        pass",
        ),
        TIMEOUT_ONLY,
    ),
    "uninterruptible_c_computation": (program("return 10 ** 10 ** 8"), TIMEOUT_ONLY),
    "alarm_ignored_via_escaped_signal_module": (
        escaped("sig = builtin('_signal')", "sig.signal(14, 1)  # SIGALRM, SIG_IGN", "while True:", "    pass"),
        ERROR | TIMEOUT_ONLY,  # the re-created module may crash the runner: contained either way
    ),
    "os_system": (program("import os", "return os.system('touch {pwned}_system')"), ERROR),
    "os_system_via_random": (program("import random", "return random._os.system('touch {pwned}_random')"), ERROR),
    "subprocess": (
        program("import subprocess", "return subprocess.run(['touch', '{pwned}_sub']).returncode"),
        ERROR,
    ),
    "exec_shell_escaped": (escaped("posix.execv('/bin/sh', ['sh', '-c', 'touch {pwned}_exec'])"), ERROR),
    "socket": (program("import socket", "s = socket.create_connection(('1.1.1.1', 80))", "return 1"), ERROR),
    "socket_escaped": (escaped("s = builtin('_socket')", "return 1"), ERROR),
    "open_absolute_path": (program("open('{pwned}_open', 'w').write('x')", "return 1"), ERROR),
    "write_absolute_path_escaped": (
        escaped("fd = posix.open('{pwned}_escaped', 0o101)  # O_CREAT | O_WRONLY"),
        ERROR,
    ),
    "delete_canary_escaped": (escaped("posix.unlink('{canary}')", "return 1"), ERROR),
    "overwrite_canary_via_builtins_module": (
        escaped("b = loader.load_module('builtins')", "b.open('{canary}', 'w').write('pwned')", "return 1"),
        ERROR,
    ),
    "read_etc_passwd": (program("return open('/etc/passwd').read()"), ERROR),
    "read_etc_passwd_escaped": (escaped("fd = posix.open('/etc/passwd', 0)", "return 1"), ERROR),
    "list_proc_escaped": (escaped("return str(posix.listdir('/proc'))"), ERROR),
    "environment_variable": (program("import os", "return os.environ['REFTKIT_CANARY_SECRET']"), ERROR),
    "environment_variable_escaped": (
        escaped("b = loader.load_module('builtins')", "return b.__import__('os').environ['REFTKIT_CANARY_SECRET']"),
        ERROR,
    ),
    "ctypes": (program("import ctypes", "return ctypes.CDLL(None).getpid()"), ERROR),
    "ctypes_escaped": (escaped("return str(builtin('_ctypes'))"), ERROR),
    "sys_exit": (program("import sys", "sys.exit(0)"), ERROR),
    "raise_system_exit": (program("raise SystemExit(0)"), ERROR),
    "os_underscore_exit_escaped": (escaped("posix._exit(0)"), ERROR),
    "kill_the_training_process_escaped": (escaped("posix.kill({pid}, 9)", "return 1"), ERROR),
    "stop_the_training_process_escaped": (escaped("posix.kill({pid}, 19)", "return 1"), ERROR),
    "kill_the_sandbox_server_escaped": (escaped("posix.kill(posix.getppid(), 9)", "return 1"), ERROR),
    "stop_the_sandbox_server_escaped": (escaped("posix.kill(posix.getppid(), 19)", "return 1"), ERROR | TIMEOUT_ONLY),
    "huge_output": (program("for i in range(100000):", "    print('spam' * 100)", "raise ValueError('done')"), ERROR),
    "deep_recursion": (program("def f(n):", "    return f(n + 1)", "return f(0)"), ERROR),
    "deep_recursion_past_the_limit": (
        program(
            "classes = ().__class__.__base__.__subclasses__()",
            "for c in classes:",
            "    g = getattr(getattr(c, '__init__', None), '__globals__', {{}})",
            "    if 'sys' in g:",
            "        g['sys'].setrecursionlimit(10 ** 7)",
            "        break",
            "def f(n):",
            "    return f(n + 1) + 1",
            "return f(0)",
        ),
        ERROR | TIMEOUT_ONLY,  # a crash (stack overflow), or still recursing at the deadline
    ),
    "dunder_import": (program("return __import__('os').system('touch {pwned}_dunder')"), ERROR),
    "builtins_dict_import": (program("return __builtins__['__import__']('os').getcwd()"), ERROR),
    "real_import_from_builtins_module": (
        escaped("imp = loader.load_module('builtins').__import__", "return imp('subprocess').call(['true'])"),
        ERROR,
    ),
    "importlib": (program("import importlib", "return importlib.import_module('os').getcwd()"), ERROR),
    "relative_import": (program("from . import sandbox", "return 1"), ERROR),
    "eval_import": (program("return eval(\"__import__('os').getcwd()\")"), ERROR),
    "exec_removed": (program("exec('x = 1')", "return 1"), ERROR),
    "thread_that_never_finishes": (program("import threading", "threading.Thread(target=lambda: None).start()"), ERROR),
    "thread_escaped": (
        escaped(
            "t = builtin('_thread')", "def spin():", "    while True:", "        pass", "t.start_new_thread(spin, ())"
        ),
        ERROR,
    ),
    "big_file_in_scratch_escaped": (
        escaped(
            "fd = posix.open('big', 0o101)  # O_CREAT | O_WRONLY",
            "for _ in range(20):",
            "    posix.write(fd, b'x' * (1 << 20))",
            "return 1",
        ),
        ERROR,
    ),
}

ORDINARY = [
    program("apples = 12", "eaten = 5", "return apples - eaten"),
    program("from fractions import Fraction", "return Fraction(7, 2) * 2"),
    program("import math", "return math.sqrt(81)"),
    program("return 'done'"),
    program("return 1 / 0"),
]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    canary = tmp_path_factory.mktemp("canary") / "canary.txt"
    canary.write_text("untouched")
    os.environ["REFTKIT_CANARY_SECRET"] = SECRET
    yield canary
    del os.environ["REFTKIT_CANARY_SECRET"]


def _server_pids() -> set[int]:
    pool = sandbox._POOL
    return {server.proc.pid for server in pool.servers} if pool is not None else set()


def _another_jobs(process: psutil.Process) -> bool:
    """A process under some other user process than us (another reftkit run's sandbox), not an orphan."""
    try:
        for parent in process.parents():
            if parent.pid == os.getpid():
                return False
            if parent.pid != 1 and parent.uids().real != NOBODY:
                return True
    except psutil.NoSuchProcess:
        return False
    return False


def _stray_processes() -> list[psutil.Process]:
    """Our descendants and any orphaned process of uid nobody, except the pool's servers."""
    servers = _server_pids()
    candidates = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and uids.real == NOBODY and not _another_jobs(process):
            candidates[process.pid] = process
    return [p for pid, p in candidates.items() if pid not in servers and p.is_running() and p.status() != "zombie"]


def _wait_for_no_strays() -> list[psutil.Process]:
    deadline = time.monotonic() + 2.0
    while (strays := _stray_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return strays


def _wait_for_empty_scratch() -> bool:
    deadline = time.monotonic() + 2.0
    while any(os.listdir(s.scratch) for s in sandbox._POOL.servers):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_suite_is_big_enough():
    assert len(HOSTILE) >= 25


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained(name: str, host: Path):
    text, statuses = HOSTILE[name]
    source = text.format(canary=host, pwned=PWNED, pid=os.getpid())
    start = time.monotonic()
    (result,) = run_programs([source], timeout=TIMEOUT)
    elapsed = time.monotonic() - start

    assert result.status in statuses, result
    assert elapsed <= TIMEOUT + 1.0, elapsed
    assert result.value is None
    assert SECRET not in (result.error or "")
    # The host is unchanged.
    assert host.read_text() == "untouched"
    assert not [p for p in Path("/tmp").iterdir() if p.name.startswith(Path(PWNED).name)]
    assert _wait_for_no_strays() == []
    assert _wait_for_empty_scratch()  # the program's files are gone (the server clears after answering)
    # The pool is healthy.
    results = run_programs(ORDINARY, timeout=TIMEOUT)
    assert [r.value for r in results] == [7, 7.0, 9.0, "done", None]
    assert [r.status for r in results] == ["ok", "ok", "ok", "ok", "error"]


def test_all_hostile_programs_in_one_batch_with_ordinary_ones(host: Path):
    names = sorted(HOSTILE)
    texts = [HOSTILE[n][0].format(canary=host, pwned=PWNED, pid=os.getpid()) for n in names]
    sandbox._CACHE.clear()
    start = time.monotonic()
    results = run_programs([*texts, *ORDINARY], timeout=TIMEOUT)
    elapsed = time.monotonic() - start
    for name, result in zip(names, results, strict=False):
        assert result.status in HOSTILE[name][1] | {"error"}, (name, result)  # a killed server: error
    assert [r.value for r in results[len(names) :]] == [7, 7.0, 9.0, "done", None]
    slow = sum(1 for n in names if HOSTILE[n][1] != ERROR)
    assert elapsed <= (slow + 2) * (TIMEOUT + 1.0)
    assert host.read_text() == "untouched"
    assert _wait_for_no_strays() == []


def test_the_os_layers_are_active_when_root():
    layers = sandbox.confinement()
    if os.geteuid() == 0:
        assert {"chroot", "nobody"} <= set(layers)
    else:
        assert layers == []
