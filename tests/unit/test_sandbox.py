"""The program sandbox: results in order, errors and timeouts reported, the workers contained.

Hostile programs (escapes, bombs, host effects) are in test_sandbox_hostile.py."""

from __future__ import annotations

import time

from reftkit.reward.sandbox import ProgramResult, run_programs


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
    # A C-level computation no signal can interrupt: the silent runner is killed and replaced.
    deaf = program("x = 10 ** 10 ** 8", "return 1")
    start = time.monotonic()
    results = run_programs([OK, deaf, OK.replace("3", "4")], timeout=0.2)
    assert time.monotonic() - start < 5.0
    assert [r.status for r in results] == ["ok", "timeout", "ok"]
    assert results[2].value == 8


def test_printing_cannot_corrupt_results():
    noisy = program(
        "import random",
        "for i in range(20000):",
        "    print(i, 'not json', flush=True)",
        "print('[\"ok\", 999, null]')",
        "print('err', file=random._os.sys.stderr if hasattr(random._os, 'sys') else None)",
        "return 7",
    )
    assert run_programs([noisy, OK]) == [ProgramResult("ok", 7, None), ProgramResult("ok", 6, None)]


def test_the_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("REFTKIT_SANDBOX_PROBE", "secret")
    # os is not importable; random._os is in reach but has lost its environment (and the worker has none).
    blocked = program("import os", "return os.environ.get('REFTKIT_SANDBOX_PROBE')")
    probe = program("import random", "return getattr(random._os, 'environ', {}).get('REFTKIT_SANDBOX_PROBE')")
    blocked_result, probe_result = run_programs([blocked, probe])
    assert blocked_result.status == "error" and "not allowed" in blocked_result.error
    assert probe_result == ProgramResult("ok", None, None)


def test_return_values_become_plain_values():
    results = run_programs(
        [
            program("from fractions import Fraction", "return Fraction(3, 4)"),
            program("from decimal import Decimal", "return Decimal('1.5')"),
            program("return True"),
            program("return 'x' * 500"),
            program("return 10 ** 400"),
            program("return -10 ** 400"),
            program("return float('nan')"),
        ]
    )
    values = [r.value for r in results]
    assert values[:4] == [0.75, 1.5, True, "x" * 100]
    assert type(values[2]) is bool
    assert values[4:6] == [float("inf"), float("-inf")]
    assert values[6] != values[6]  # NaN is kept; the grader treats it as no answer


def test_unsupported_return_values_are_errors_and_numbers_of_libraries_are_floats():
    listed, symbolic, sympy_number, none = run_programs(
        [
            program("return [1, 2]"),
            program("import sympy", "return sympy.Symbol('x') + 1"),
            program("import sympy", "return sympy.Rational(3, 2)"),
            program("return None"),
        ]
    )
    assert listed == ProgramResult("error", None, "TypeError: unsupported return type list")
    assert symbolic.status == "error" and "unsupported return type" in symbolic.error
    assert sympy_number == ProgramResult("ok", 1.5, None)
    assert none == ProgramResult("ok", None, None)


def test_memory_bomb_is_an_error_not_a_crash():
    bomb, after = run_programs([program("x = bytearray(10 ** 10)", "return 1"), OK])
    assert bomb.status == "error" and "MemoryError" in bomb.error
    assert after.value == 6


KILLER = program(
    "classes = {c.__name__: c for c in ().__class__.__base__.__subclasses__()}",
    "loader = classes['BuiltinImporter']",
    "posix = loader.create_module(classes['ModuleSpec']('posix', loader))",
    "posix._exit(3)",
)


def test_a_program_that_kills_the_worker_loses_no_other_result():
    # Escapes the Python layer (re-loads posix with all its functions) and ends its own process.
    results = run_programs([OK, KILLER, program("return 5")])
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert "exit code 3" in results[1].error
    assert results[2].value == 5


def test_identical_programs_run_once_and_share_the_result():
    draw = program("import random", "return random.random()")
    results = run_programs([draw, OK, draw])
    assert results[0] == results[2] and results[0].status == "ok"
    assert run_programs([draw])[0] == results[0]  # cached across calls
    assert run_programs([draw], timeout=1.5)[0] != results[0]  # the cache key includes the limits


def test_state_changed_by_a_program_does_not_leak_into_the_next():
    tamper = program("import math, decimal", "math.pi = 3", "decimal.getcontext().prec = 2", "return 0")
    check = program("import math, decimal", "return str(math.pi) + ' ' + str(decimal.Decimal(1) / 3)")
    assert run_programs([tamper, check])[1].value == "3.141592653589793 0.3333333333333333333333333333"


def test_many_programs_in_chunks_keep_their_order():
    texts = [program(f"return {i} * 2") for i in range(500)]
    assert [r.value for r in run_programs(texts)] == [i * 2 for i in range(500)]
