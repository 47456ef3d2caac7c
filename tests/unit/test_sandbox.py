"""The interim program executor: results in order, errors and timeouts reported, the worker contained."""

from __future__ import annotations

import time

from reftkit.sandbox import ProgramResult, run_programs


def program(*body: str) -> str:
    return "def solution():\n" + "".join(f"    {line}\n" for line in body)


OK = program("a = 3", "return a * 2")
LOOP = program("while True:", "    pass")


def test_empty_input_starts_nothing():
    assert run_programs([]) == []


def test_returns_the_value_of_solution():
    assert run_programs([OK]) == [ProgramResult("ok", 6, None)]


def test_order_is_kept_across_ok_error_and_timeout():
    results = run_programs([OK, program("return 1 / 0"), LOOP, program("return 2.5")], timeout=0.3)
    assert [r.status for r in results] == ["ok", "error", "timeout", "ok"]
    assert [r.value for r in results] == [6, None, None, 2.5]


def test_program_errors_are_reported_with_a_message():
    syntax, division, missing = run_programs([program("return (1"), program("return 1 / 0"), "x = 1\n"])
    assert syntax.status == "error" and syntax.error.startswith("SyntaxError")
    assert division == ProgramResult("error", None, "ZeroDivisionError: division by zero")
    assert missing.status == "error" and "solution" in missing.error


def test_infinite_loop_times_out_and_later_programs_are_answered():
    start = time.monotonic()
    results = run_programs([LOOP, OK], timeout=0.5)
    assert time.monotonic() - start < 1.5
    assert results[0] == ProgramResult("timeout", None, "TimeoutError: no result within 0.5 s")
    assert results[1].value == 6


def test_a_program_that_ignores_the_alarm_costs_only_its_own_timeout():
    # Stands in for a C-level hang no signal can interrupt: the parent gives up on the silent worker.
    deaf = program("import signal, time", "signal.signal(signal.SIGALRM, signal.SIG_IGN)", "time.sleep(60)")
    start = time.monotonic()
    results = run_programs([OK, deaf, OK.replace("3", "4")], timeout=0.2)
    assert time.monotonic() - start < 5.0
    assert [r.status for r in results] == ["ok", "timeout", "ok"]
    assert results[2].value == 8


def test_printing_cannot_corrupt_results():
    noisy = program(
        "import os, sys",
        "for i in range(20000):",
        "    print(i, 'not json', flush=True)",
        "os.write(1, b'[\"ok\", 999, null]\\n')",
        "sys.__stdout__.write('garbage\\n')",
        "print('err', file=sys.stderr)",
        "return 7",
    )
    assert run_programs([noisy, OK]) == [ProgramResult("ok", 7, None), ProgramResult("ok", 6, None)]


def test_the_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("REFTKIT_SANDBOX_PROBE", "secret")
    probe = program("import os", "return os.environ.get('REFTKIT_SANDBOX_PROBE') or os.environ.get('HOME')")
    assert run_programs([probe]) == [ProgramResult("ok", None, None)]


def test_return_values_become_plain_values():
    results = run_programs(
        [
            program("from fractions import Fraction", "return Fraction(3, 4)"),
            program("from decimal import Decimal", "return Decimal('1.5')"),
            program("return True"),
            program("return 'x' * 500"),
            program("return [1, 2]"),
            program("return 10 ** 400"),
            program("return -10 ** 400"),
            program("return float('nan')"),
        ]
    )
    values = [r.value for r in results]
    assert values[:5] == [0.75, 1.5, True, "x" * 100, "[1, 2]"]
    assert type(values[2]) is bool
    assert values[5:7] == [float("inf"), float("-inf")]
    assert values[7] != values[7]  # NaN is kept; the grader treats it as no answer


def test_memory_bomb_is_an_error_not_a_crash():
    bomb, after = run_programs([program("x = bytearray(10 ** 10)", "return 1"), OK])
    assert bomb.status == "error" and "MemoryError" in bomb.error
    assert after.value == 6


def test_a_program_that_kills_the_worker_loses_no_other_result():
    results = run_programs([OK, program("import os", "os._exit(3)"), program("return 5")])
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert "exit code 3" in results[1].error
    assert results[2].value == 5


def test_identical_programs_run_once_and_share_the_result():
    counter = program(
        "import pathlib",
        "p = pathlib.Path('runs.txt')",
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x')",
        "return len(p.read_text())",
    )
    results = run_programs([counter, OK, counter])
    assert results[0] == results[2] == ProgramResult("ok", 1, None)
