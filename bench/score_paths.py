"""Scoring and update of one rollout with today's log-prob path against the full-vocabulary one, paired in one run.

    OMP_NUM_THREADS=1 python bench/score_paths.py --model models/smollm2-135m-instruct --questions 2 --k 4 \\
        --max-new-tokens 64 --repeats 3

"new": ``logits_to_keep`` (the LM head only from the last prompt position on) and ``ppo.token_logprobs`` (chunked
log-sum-exp, no float32 [rows, length, vocab] tensor). "old": full logits and ``log_softmax`` in float32 over the
vocabulary, as before ``355498d``. One rollout is sampled once; each round builds a fresh policy per side, then
times ``make_experience`` (policy and reference forwards, no grad) and ``ppo_update`` (2 PPO epochs); the sides
alternate within a round, each going first in turn, and each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rollout_vs_trl import parse_args, quiet, set_up

import reftkit.models.policy as policy_module
import reftkit.trainers.reft as reft
from reftkit.reward.sandbox import shutdown
from reftkit.rl import ppo
from reftkit.rollout.generate import warp_logits
from reftkit.trainers.common import sample_policy

NEW = (policy_module.logits_kept, reft.response_logprobs)


def _full_logprobs(logits: torch.Tensor, ids: torch.Tensor, sampling: tuple[float, int, float]) -> torch.Tensor:
    return ppo.logprobs_from_logits(warp_logits(logits, *sampling, keep=ids), ids)


def use(path: str) -> None:
    """Switch the scorer's two functions to the ``new`` or the ``old`` path."""
    kept, logprobs = NEW if path == "new" else ((lambda model, n: {}), _full_logprobs)
    policy_module.logits_kept = reft.logits_kept = kept
    reft.response_logprobs = logprobs


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], repeats=3)
    torch.set_num_threads(args.threads)
    quiet()
    bench = set_up(args)
    sampler, _ = bench.policy()
    rng = torch.Generator().manual_seed(1)
    lm = bench.accelerator.unwrap_model(sampler).lm
    batch, responses = sample_policy(bench.engine, lm, bench.prompts, bench.question_ids, bench.gen, args.k, rng,
                                     bench.accelerator)  # fmt: skip
    rollout = bench.graded(batch, responses)
    del sampler
    width = batch.ids.size(1) + responses.ids.size(1)
    tokens = int(responses.mask.sum())
    print(f"{len(bench.rows)} rows, {tokens} response tokens, width {width}; {args.threads} thread(s)")
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for round_ in range(args.repeats):
        for path in ("old", "new") if round_ % 2 == 0 else ("new", "old"):  # each goes first in turn
            use(path)
            policy, optimizer = bench.policy()
            start = time.perf_counter()
            exp = reft.make_experience(policy, bench.ref, rollout, bench.config, bench.accelerator)
            scored = time.perf_counter()
            reft.ppo_update(policy, optimizer, exp, bench.config, bench.accelerator)
            times[path].append((scored - start, time.perf_counter() - scored))
            print(f"round {round_} {path}: score {times[path][-1][0]:.2f} s, update {times[path][-1][1]:.2f} s")
            del policy, optimizer, exp
            gc.collect()
    pairs = list(zip(times["old"], times["new"], strict=True))
    for i, phase in enumerate(("score", "update")):
        ratio = statistics.median(old[i] / new[i] for old, new in pairs)
        old_s, new_s = (statistics.median(t[i] for t in times[p]) for p in ("old", "new"))
        print(f"{phase}: old {old_s:.2f} s, new {new_s:.2f} s, paired ratio old/new {ratio:.2f}")
    whole = statistics.median((old[0] + old[1]) / (new[0] + new[1]) for old, new in pairs)
    print(f"score + update, paired ratio old/new: {whole:.2f}")
    shutdown()
    bench.tmp.cleanup()


if __name__ == "__main__":
    main()
