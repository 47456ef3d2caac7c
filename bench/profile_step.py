"""Where one reftkit PPO step spends its time: the torch profiler over each phase of a step (generate, reward,
score, update), as ``bench/rollout_vs_trl.py`` runs it, with the ops that take the most self CPU time in each.

    OMP_NUM_THREADS=1 python bench/profile_step.py --model models/smollm2-135m-instruct --questions 4 --k 4 \\
        --max-new-tokens 64 [--threads 1]

The step is the reftkit side of ``rollout_vs_trl.py`` (same config, batch and model preparation): one untimed
warm-up step, then one profiled step. Ops are grouped by input shapes, so the LM head ([rows, hidden] x
[hidden, vocab]) stands apart from the layers' projections. Profiling adds overhead per op, so the phase seconds
printed here are above those of the unprofiled bench; read the shares, and time with ``rollout_vs_trl.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rollout_vs_trl import parse_args, quiet, set_up
from torch.profiler import ProfilerActivity, profile

from reftkit.reward.sandbox import shutdown
from reftkit.trainers.common import param_count, sample_policy
from reftkit.trainers.reft import make_experience, ppo_update

TOP = 12  # ops listed per phase


def top_ops(prof: profile, limit: int) -> list[tuple[str, str, int, float]]:
    """(op, input shapes, calls, self CPU seconds) of the ``limit`` ops with the most self CPU time."""
    rows = [(e.key, str(e.input_shapes)[:70], e.count, e.self_cpu_time_total / 1e6)
            for e in prof.key_averages(group_by_input_shape=True)]  # fmt: skip
    return sorted(rows, key=lambda r: -r[3])[:limit]


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], repeats=1)
    torch.set_num_threads(args.threads)
    quiet()
    bench = set_up(args, prefix="reftkit-profile-")
    accelerator = bench.accelerator
    policy, optimizer = bench.policy()
    lm = accelerator.unwrap_model(policy).lm
    print(f"model: {args.model or 'build_tiny'}, {param_count(lm) / 1e6:.1f}M params, vocab {lm.config.vocab_size}; "
          f"{args.questions} questions x k={args.k}, max_new_tokens {args.max_new_tokens}; "
          f"{args.threads} thread(s); mixed precision {accelerator.mixed_precision}")  # fmt: skip

    def step(seed: int, profiled: bool) -> None:
        state: dict = {}

        def generate() -> None:
            rng = torch.Generator(device=accelerator.device).manual_seed(seed)
            state["batch"], state["responses"] = sample_policy(
                bench.engine, lm, bench.prompts, bench.question_ids, bench.gen, args.k, rng, accelerator
            )

        def reward() -> None:
            state["rollout"] = bench.graded(state["batch"], state["responses"])

        def score() -> None:
            state["exp"] = make_experience(policy, bench.ref, state["rollout"], bench.config, accelerator)

        def update() -> None:
            ppo_update(policy, optimizer, state["exp"], bench.config, accelerator)

        total = 0.0
        for name, phase in (("generate", generate), ("reward", reward), ("score", score), ("update", update)):
            if not profiled:
                phase()
                continue
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                phase()
            seconds = time.perf_counter() - start
            total += seconds
            print(f"\n{name}: {seconds:.2f} s (profiled)")
            if name == "generate":
                mask = state["responses"].mask
                print(f"  {int(mask.sum())} real tokens of {mask.numel()} row x step slots")
            print(f"  {'op':<34} {'input shapes':<70} {'calls':>6} {'self s':>7} {'share':>6}")
            for op, shapes, calls, self_s in top_ops(prof, TOP):
                print(f"  {op[:34]:<34} {shapes:<70} {calls:6d} {self_s:7.3f} {self_s / seconds:6.1%}")
        if profiled:
            print(f"\nwhole step (profiled): {total:.2f} s")

    step(1000, profiled=False)
    step(1001, profiled=True)
    shutdown()
    bench.tmp.cleanup()


if __name__ == "__main__":
    main()
