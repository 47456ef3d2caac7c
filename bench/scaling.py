"""Scaling on the CPU: the same run with 1 and with 2 processes (``accelerate launch --num_processes 2 --cpu``).

    python bench/scaling.py [--steps 6] [--questions 32] [--k 4]

Both runs are ``reftkit run`` on the embedded synthetic task with the ``micro`` model (fast to train), with
ReFT at ``--questions`` questions x ``--k`` samples per step, the same global batch in both. Each process gets
``--threads`` torch threads (default: cores / processes, so both runs use the whole machine). Printed: the
median seconds of an SFT step (from the log's wall clock) and of a PPO step (its ``step_seconds``: sampling,
grading, scoring and the update), and the speed-up 1 process / 2 processes. Take the figures on an idle
machine: torch slows several-fold when another process holds a core.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, processes: int, threads: int, overrides: list[str]) -> float:
    cli = ["-m", "reftkit.cli", "run", "--preset", "micro", "--out", str(out), *overrides]
    if processes == 1:
        command = [sys.executable, *cli]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu"]
        command += ["--num_cpu_threads_per_process", str(threads), *cli]
    started = time.time()
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - started


def step_times(out: Path) -> tuple[float, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sft = [r["wall"] for r in records if r["stage"] == "sft"]
    ppo = [r["step_seconds"] for r in records if r["stage"] == "reft"]
    return statistics.median(b - a for a, b in itertools.pairwise(sft)), statistics.median(ppo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="PPO steps")
    parser.add_argument("--questions", type=int, default=32, help="questions per PPO step (global)")
    parser.add_argument("--k", type=int, default=4, help="samples per question")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    overrides = [
        "task.n_train=256", "sft.batch_size=32", "sft.warmup_epochs=2", "mixed_precision=auto",
        f"reft.questions_per_step={args.questions}", f"reft.samples_per_question={args.k}",
        f"reft.minibatch_size={args.questions * args.k // 2}", f"reft.max_steps={args.steps}", "reft.eval_every=1000",
    ]  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            threads = args.threads or max(1, cores // processes)
            wall = run(Path(tmp, str(processes)), processes, threads, overrides)
            rows[processes] = (*step_times(Path(tmp, str(processes))), wall, threads)
    print(f"{cores} cores; micro model, {args.questions} questions x {args.k} samples per PPO step")
    print("| processes | threads each | SFT step (s) | PPO step (s) | whole run (s) |")
    print("|---|---|---|---|---|")
    for processes, (sft, ppo, wall, threads) in rows.items():
        print(f"| {processes} | {threads} | {sft:.3f} | {ppo:.2f} | {wall:.1f} |")
    print(f"SFT step speed-up 2/1 processes: {rows[1][0] / rows[2][0]:.2f}")
    print(f"PPO step speed-up 2/1 processes: {rows[1][1] / rows[2][1]:.2f}")


if __name__ == "__main__":
    main()
