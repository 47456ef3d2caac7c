"""Programs per second of reftkit.reward.sandbox.run_programs against a reference-style executor, side by side.

    python bench/sandbox.py [--n 2000] [--timeout 1.0] [--loops 5]

Batches are shaped like SVAMP/GSM8K P-CoT: real SVAMP ``answer_cot`` programs when
/work/shared/data/svamp/train_python.json exists (else synthetic ones), ~10% of them made to raise. The
"ordinary" batch has no infinite loops; the "realistic" batch adds ``--loops`` of them (each costs a full
timeout on every executor). Every timed batch uses new texts (a constant is varied) so that the sandbox's
cache does not help, except the "cached" row, which repeats a batch.

The reference-style executor is what the reference did: a process pool created anew for every batch, plain
``exec`` of each program, a per-program timeout via ``future.result(timeout)`` (plus an in-worker alarm, so
that an infinite loop cannot hold a pool worker forever), and the pool torn down after the batch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reftkit.reward.sandbox import run_programs, shutdown

SVAMP = Path("/work/shared/data/svamp/train_python.json")


def base_programs() -> list[str]:
    if SVAMP.exists():
        return [item["answer_cot"] for item in json.loads(SVAMP.read_text()) if "def solution" in item["answer_cot"]]
    rng = random.Random(0)
    programs = []
    for _ in range(1000):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        programs.append(
            "def solution():\n"
            f'    """A shop has {a} apples and buys {b} more in {c} boxes. How many per box?"""\n'
            f"    apples_initial = {a}\n    apples_bought = {b}\n    boxes = {c}\n"
            "    total = apples_initial + apples_bought\n    result = total / boxes\n    return result\n"
        )
    return programs


def make_batch(base: list[str], n: int, variant: int, loops: int, rng: random.Random) -> list[str]:
    """``n`` distinct programs: real ones with a varied constant, ~10% raising, ``loops`` infinite loops."""
    batch = []
    for i in range(n - loops):
        text = base[i % len(base)].rstrip() + f"\n\n_VARIANT = {variant * 1_000_000 + i}\n"
        if rng.random() < 0.10:
            text = text.replace("    return result", "    return result / 0", 1)
            if "/ 0" not in text:
                text = text.replace("def solution():\n", "def solution():\n    undefined_name + 1\n", 1)
        batch.append(text)
    for j in range(loops):
        batch.insert(
            rng.randrange(len(batch) + 1), f"def solution():\n    i = {variant}{j}\n    while True:\n        i += 1\n"
        )
    return batch


# ---- reference-style executor ----


class _Alarm(BaseException):
    pass


def _alarm(signum, frame):
    raise _Alarm


def _reference_exec(text: str, timeout: float):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        namespace: dict = {}
        exec(text, namespace)  # the reference: plain exec, no containment
        return ("ok", namespace["solution"]())
    except _Alarm:
        return ("timeout", None)
    except BaseException as exc:
        return ("error", type(exc).__name__)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def reference_run(programs: list[str], timeout: float, workers: int) -> list[str]:
    statuses = []
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers)  # anew for every batch
    try:
        futures = [pool.submit(_reference_exec, text, timeout) for text in programs]
        for future in futures:
            try:
                statuses.append(future.result(timeout=timeout + 1.0)[0])
            except concurrent.futures.TimeoutError:
                statuses.append("timeout")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return statuses


def timed(label: str, fn, n: int) -> float:
    start = time.perf_counter()
    statuses = fn()
    elapsed = time.perf_counter() - start
    counts = {s: statuses.count(s) for s in ("ok", "error", "timeout")}
    rate = n / elapsed
    print(f"  {label:<44} {elapsed:7.2f} s  {rate:9.0f} programs/s   {counts}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--loops", type=int, default=5)
    args = parser.parse_args()
    workers = int(os.environ.get("REFTKIT_SANDBOX_WORKERS", "0")) or max(1, min(2, os.cpu_count() or 1))
    rng = random.Random(0)
    base = base_programs()
    source = "SVAMP answer_cot" if SVAMP.exists() else "synthetic"
    print(f"{args.n} programs per batch ({source}, ~10% raising), timeout {args.timeout:g} s, {workers} workers,")
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    batches = [make_batch(base, args.n, v, 0, rng) for v in range(4)]
    loopy = [make_batch(base, args.n, 10 + v, args.loops, rng) for v in range(2)]

    def sandbox(batch):
        return lambda: [r.status for r in run_programs(batch, timeout=args.timeout)]

    def reference(batch):
        return lambda: reference_run(batch, args.timeout, workers)

    shutdown()
    print("ordinary batch (no infinite loops):")
    cold = timed("sandbox, cold (pool start included)", sandbox(batches[0]), args.n)
    warm = timed("sandbox, warm (new texts)", sandbox(batches[1]), args.n)
    cached = timed("sandbox, cached (same batch again)", sandbox(batches[1]), args.n)
    ref = timed("reference: pool per batch + plain exec", reference(batches[2]), args.n)
    print(f"realistic batch (+{args.loops} infinite loops):")
    warm_loops = timed("sandbox, warm (new texts)", sandbox(loopy[0]), args.n)
    ref_loops = timed("reference: pool per batch + plain exec", reference(loopy[1]), args.n)
    print("ratios (sandbox / reference):")
    print(f"  ordinary, warm: {warm / ref:.1f}x   ordinary, cold: {cold / ref:.1f}x", end="")
    print(f"   with loops: {warm_loops / ref_loops:.1f}x")
    print(f"  cached: {cached:.0f} programs/s")
    shutdown()


if __name__ == "__main__":
    main()
