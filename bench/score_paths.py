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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rollout_vs_trl import COT, bench_config, parse_args, prepare_model, quiet

import reftkit.models.policy as policy_module
import reftkit.trainers.reft as reft
from reftkit.data.base import prompt_text
from reftkit.data.registry import load_task
from reftkit.models.loading import load_causal_lm, load_tokenizer
from reftkit.models.policy import PolicyWithValue
from reftkit.reward.answers import RewardTable, grade_batch
from reftkit.reward.sandbox import shutdown
from reftkit.rl import ppo
from reftkit.rollout.base import generation_config
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import decode_responses, encode_prompts, warp_logits
from reftkit.trainers.common import make_accelerator, sample_policy
from reftkit.trainers.stepwise import Rollout

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
    config = bench_config(args)
    data = load_task(config.task)
    problems = data.train[: args.questions]
    accelerator = make_accelerator(config.mixed_precision)
    tmp = tempfile.TemporaryDirectory(prefix="reftkit-bench-")
    model_dir = prepare_model(args, config, data, Path(tmp.name))
    tokenizer = load_tokenizer(model_dir)
    prompts = encode_prompts(tokenizer, [prompt_text(p, COT) for p in problems])
    cfg = config.reft
    ref = load_causal_lm(model_dir, tokenizer).eval().requires_grad_(False)
    question_ids = list(range(args.questions))
    rows = [i for i in question_ids for _ in range(args.k)]
    sampler = PolicyWithValue(load_causal_lm(model_dir, tokenizer), critic=False).lm
    rng = torch.Generator().manual_seed(1)
    engine, gen = make_engine(cfg.rollout_backend), generation_config(cfg, tokenizer)
    batch, responses = sample_policy(engine, sampler, prompts, question_ids, gen, args.k, rng, accelerator)
    texts = decode_responses(tokenizer, responses)
    graded = grade_batch([problems[i] for i in rows], texts, COT, data.answer_type, RewardTable(), 3.0)
    scores = torch.tensor([g.reward for g in graded])
    rollout = Rollout(torch.tensor(rows), batch, responses, [problems[i] for i in rows], texts, graded, scores)
    width = batch.ids.size(1) + responses.ids.size(1)
    print(f"{len(rows)} rows, {int(responses.mask.sum())} response tokens, width {width}; {args.threads} thread(s)")
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    for round_ in range(args.repeats):
        for path in ("old", "new") if round_ % 2 == 0 else ("new", "old"):  # each goes first in turn
            use(path)
            policy = PolicyWithValue(load_causal_lm(model_dir, tokenizer), critic=False)
            optimizer = torch.optim.AdamW(policy.param_groups(cfg.lr, cfg.lr), eps=1e-8, weight_decay=0.0)
            policy, optimizer = accelerator.prepare(policy, optimizer)
            policy.eval()
            start = time.perf_counter()
            exp = reft.make_experience(policy, ref, rollout, config, accelerator)
            scored = time.perf_counter()
            reft.ppo_update(policy, optimizer, exp, config, accelerator)
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
    tmp.cleanup()


if __name__ == "__main__":
    main()
