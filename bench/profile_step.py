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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rollout_vs_trl import COT, bench_config, parse_args, prepare_model, quiet
from torch.profiler import ProfilerActivity, profile

from reftkit.data.base import prompt_text
from reftkit.data.registry import load_task
from reftkit.models.loading import load_causal_lm, load_tokenizer
from reftkit.models.policy import PolicyWithValue
from reftkit.reward.answers import RewardTable, grade_batch
from reftkit.reward.sandbox import shutdown
from reftkit.rl.ppo import ESTIMATORS
from reftkit.rollout.base import generation_config
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import decode_responses, encode_prompts
from reftkit.trainers.common import make_accelerator, param_count, sample_policy
from reftkit.trainers.reft import make_experience, ppo_update
from reftkit.trainers.stepwise import Rollout

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
    config = bench_config(args)
    data = load_task(config.task)
    problems = data.train[: args.questions]
    accelerator = make_accelerator(config.mixed_precision)
    tmp = tempfile.TemporaryDirectory(prefix="reftkit-profile-")
    model_dir = prepare_model(args, config, data, Path(tmp.name))
    tokenizer = load_tokenizer(model_dir)
    prompts = encode_prompts(tokenizer, [prompt_text(p, COT) for p in problems])
    question_ids = list(range(args.questions))
    cfg = config.reft
    engine, gen = make_engine(cfg.rollout_backend), generation_config(cfg, tokenizer)
    policy = PolicyWithValue(load_causal_lm(model_dir, tokenizer), critic=ESTIMATORS[cfg.advantage].needs_critic)
    ref = load_causal_lm(model_dir, tokenizer).to(accelerator.device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.param_groups(cfg.lr, cfg.lr), eps=1e-8, weight_decay=0.0)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    policy.eval()
    lm = accelerator.unwrap_model(policy).lm
    table = RewardTable(partial_reward=cfg.partial_reward)
    rows = [i for i in question_ids for _ in range(args.k)]
    print(f"model: {args.model or 'build_tiny'}, {param_count(lm) / 1e6:.1f}M params, vocab {lm.config.vocab_size}; "
          f"{args.questions} questions x k={args.k}, max_new_tokens {args.max_new_tokens}; "
          f"{args.threads} thread(s); mixed precision {accelerator.mixed_precision}")  # fmt: skip

    def step(seed: int, profiled: bool) -> None:
        state: dict = {}

        def generate() -> None:
            rng = torch.Generator(device=accelerator.device).manual_seed(seed)
            state["batch"], state["responses"] = sample_policy(engine, lm, prompts, question_ids, gen, args.k, rng,
                                                               accelerator)  # fmt: skip

        def reward() -> None:
            texts = decode_responses(tokenizer, state["responses"])
            graded = grade_batch([problems[i] for i in rows], texts, COT, data.answer_type, table,
                                 config.eval.program_timeout)  # fmt: skip
            scores = torch.tensor([g.reward for g in graded], device=accelerator.device)
            state["rollout"] = Rollout(torch.tensor(rows), state["batch"], state["responses"],
                                       [problems[i] for i in rows], texts, graded, scores)  # fmt: skip

        def score() -> None:
            state["exp"] = make_experience(policy, ref, state["rollout"], config, accelerator)

        def update() -> None:
            ppo_update(policy, optimizer, state["exp"], config, accelerator)

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
    tmp.cleanup()


if __name__ == "__main__":
    main()
