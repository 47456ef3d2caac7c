"""Scoring and update of one rollout with rows sharing a prompt run on its gathered KV cache, against one plain
forward over every row, paired in one run.

    OMP_NUM_THREADS=1 python bench/score_paths.py --model models/smollm2-135m-instruct --questions 2 --k 4 \\
        --max-new-tokens 64 --repeats 3

"shared": ``reftkit.models.policy.forward_from`` as reftkit runs it (the k samples of a question run its prompt
once). "plain": the same function with ``share_prefix=False``, one forward over every row, prompt included, as
before ``1a87323``. Both run the LM head only on the positions that predict a response token and take log-probs
by ``ppo.token_logprobs``. One rollout is sampled once; each round builds a fresh policy per side, then times
``make_experience`` (policy and reference forwards, no grad) and ``ppo_update`` (2 PPO epochs); the sides alternate
within a round, each going first in turn, and each ratio is the median of the per-round ratios. (Until ``1a87323``
this bench compared the ``logits_to_keep`` and chunked log-prob path against the full-vocabulary one.)"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rollout_vs_trl import parse_args, quiet, set_up

import reftkit.models.policy as policy_module
import reftkit.trainers.reft as reft
from reftkit.reward.sandbox import shutdown
from reftkit.trainers.common import sample_policy

SHARED = policy_module.forward_from


def _plain(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``forward_from`` with ``share_prefix=False`` however the caller passed its arguments."""
    names = ("lm", "input_ids", "attention_mask", "logits_from", "hidden", "share_prefix", "last")
    return SHARED(**(dict(zip(names, args, strict=False)) | kwargs | {"share_prefix": False}))


def use(path: str) -> None:
    """Switch the policy's and the reference's forwards to the ``shared`` or the ``plain`` path."""
    policy_module.forward_from = reft.forward_from = SHARED if path == "shared" else _plain


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
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "shared": []}
    for round_ in range(args.repeats):
        for path in ("plain", "shared") if round_ % 2 == 0 else ("shared", "plain"):  # each goes first in turn
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
    pairs = list(zip(times["plain"], times["shared"], strict=True))
    for i, phase in enumerate(("score", "update")):
        ratio = statistics.median(plain[i] / shared[i] for plain, shared in pairs)
        plain_s, shared_s = (statistics.median(t[i] for t in times[p]) for p in ("plain", "shared"))
        print(f"{phase}: plain {plain_s:.2f} s, shared {shared_s:.2f} s, paired ratio plain/shared {ratio:.2f}")
    whole = statistics.median((plain[0] + plain[1]) / (shared[0] + shared[1]) for plain, shared in pairs)
    print(f"score + update, paired ratio plain/shared: {whole:.2f}")
    shutdown()
    bench.tmp.cleanup()


if __name__ == "__main__":
    main()
