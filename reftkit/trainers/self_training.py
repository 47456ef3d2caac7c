"""The paper's self-training baselines (REFERENCE.md A.5), on the same footing as ReFT.

* **Offline self-training**: sample the warm-up model on the training questions, keep per question up to
  ``max_per_question`` unique correct chains chosen at random plus the gold chain once (the reference kept
  the first 10 and the gold twice), and run plain SFT on that from the base model.
* **Online self-training**: from the warm-up, each step samples the policy like ReFT does and minimises
  ½·CE(its correct samples) + ½·CE(the gold chains of the same questions); no value head, KL or negatives.
  ``self_training.online_gold=false`` drops the gold term (CE of the correct samples alone): like ReFT, it
  then learns only from its own samples.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from reftkit.answers import Outcome, grade_batch
from reftkit.config import RunConfig
from reftkit.models import load_trainable_lm, trainable_parameters
from reftkit.rollout import decode_responses, encode_prompts
from reftkit.sampling import Sample, by_question
from reftkit.tasks.base import ANSWER_TRIGGER, CoT, Problem, TaskData, full_program, prompt_text, target_text
from reftkit.trainers.checkpoints import StageCheckpoints, result_from_json, result_to_json
from reftkit.trainers.common import (
    MetricsLog,
    NonFiniteGuard,
    Selection,
    apply_gradients,
    question_batches,
    rollout_engine,
    sample_policy,
    step_plan,
    validation_accuracy,
)
from reftkit.trainers.reft import ReFTResult
from reftkit.trainers.sft import batch_sft_loss, save_model, tokenize_examples


def chain_from_completion(problem: Problem, completion: str, cot: CoT) -> str | None:
    """The completion as a gold-style ``Problem.cot``: a whole program for P-CoT; for N-CoT the text before
    the answer sentence (None when it has none, since the SFT target re-appends that sentence)."""
    if cot == "python":
        return full_program(problem, completion)
    head, sep, _ = completion.rpartition(ANSWER_TRIGGER)
    return head.strip() if sep and head.strip() else None


def offline_st_problems(
    problems: Sequence[Problem], samples: Sequence[Sample], cot: CoT, max_per_question: int, rng: random.Random
) -> list[Problem]:
    """Offline self-training data: every problem once with its gold chain, then up to ``max_per_question``
    distinct correct sampled chains of it, chosen at random; a sample identical to the gold chain is not
    added again. The extra items get ids ``<id>#st<j>``."""
    groups = by_question(samples)
    data = []
    for problem in problems:
        data.append(problem)
        gold = target_text(problem, cot)
        chains = {}
        for s in groups.get(problem.id, []):
            chain = chain_from_completion(problem, s.completion, cot) if s.correct else None
            if chain is not None and target_text(Problem(problem.id, "", problem.answer, chain), cot) != gold:
                chains.setdefault(s.completion, chain)
        chosen = rng.sample(sorted(chains), min(max_per_question, len(chains)))
        data += [
            Problem(f"{problem.id}#st{j}", problem.question, problem.answer, chains[c]) for j, c in enumerate(chosen)
        ]
    return data


def train_online_st(
    config: RunConfig,
    warmup_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    out_dir: Path,
    log: MetricsLog,
    accelerator: Accelerator,
    warmup_val_acc: float | None = None,
    epoch_offset: float = 0.0,
) -> ReFTResult:
    """Online self-training from the warm-up with ReFT's sampling, steps, learning rate and selection."""
    cfg = config.reft
    cot: CoT = config.task.cot  # type: ignore[assignment]
    checkpoints = StageCheckpoints(out_dir, "online_st", config.checkpoint, log, accelerator)
    if (done := checkpoints.finished()) is not None:
        return result_from_json(ReFTResult, done)
    model = load_trainable_lm(warmup_dir, tokenizer, config.model, config.seed)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, eps=1e-8, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()  # no dropout, as in ReFT
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in data.train])
    gold = tokenize_examples(tokenizer, data.train, cot)
    sample_rng = torch.Generator(device=accelerator.device).manual_seed(config.seed + 1)
    steps_per_epoch, total_steps = step_plan(len(prompts), cfg)
    dirs = {name: out_dir / "checkpoints" / name for name in ("online_st", "online_st_last")}
    selection = Selection()

    def validate(step: int, known: float | None = None) -> None:
        if known is None:
            known = validation_accuracy(accelerator.unwrap_model(model), tokenizer, data, config, accelerator)
        log.write("online_st_eval", step, epoch=epoch_offset + step / steps_per_epoch, val_acc=known)
        if selection.record(step, known):
            save_model(accelerator, accelerator.unwrap_model(model), tokenizer, dirs["online_st"])

    guard = NonFiniteGuard(config.checkpoint.max_nonfinite_in_row, log, "online_st")
    generators = {"sample": sample_rng}
    start = checkpoints.load_stepwise(model, optimizer, generators, selection, guard)
    if start == 0:
        validate(0, warmup_val_acc)
    engine = rollout_engine(cfg, warmup_dir)
    bar = tqdm(total=total_steps, initial=start, desc="online-st", unit="step", dynamic_ncols=True)
    batches = question_batches(len(prompts), cfg, torch.Generator().manual_seed(config.seed), total_steps, start)
    for step, questions in batches:
        guard.step = step
        started = time.time()
        _, responses = sample_policy(
            accelerator.unwrap_model(model), prompts, questions, cfg, tokenizer, sample_rng, accelerator, engine
        )
        rows = [q for q in questions for _ in range(cfg.samples_per_question)]
        graded = grade_batch(
            [data.train[i] for i in rows],
            decode_responses(tokenizer, responses),
            cot,
            data.answer_type,
            timeout=config.eval.program_timeout,
        )
        lengths = responses.mask.sum(1).long().tolist()
        correct = [
            (prompts[q] + responses.ids[j, : lengths[j]].tolist(), len(prompts[q]))
            for j, (q, g) in enumerate(zip(rows, graded, strict=True))
            if g.outcome == Outcome.CORRECT and not bool(responses.truncated[j])  # the EOS is part of the target
        ]
        losses = []
        with_gold = config.self_training.online_gold
        for _ in range(cfg.ppo_epochs if with_gold or correct else 0):  # nothing to learn from: no update
            if with_gold:
                loss = 0.5 * batch_sft_loss(model, [gold[q] for q in questions], tokenizer.pad_token_id, accelerator)
                if correct:
                    loss = loss + 0.5 * batch_sft_loss(model, correct, tokenizer.pad_token_id, accelerator)
            else:
                loss = batch_sft_loss(model, correct, tokenizer.pad_token_id, accelerator)
            apply_gradients(accelerator, loss, model, optimizer, cfg.grad_clip, guard=guard)
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        frac_correct = sum(g.outcome == Outcome.CORRECT for g in graded) / len(graded)
        log.write(
            "online_st",
            step,
            epoch=epoch_offset + step / steps_per_epoch,
            frac_correct=frac_correct,
            kept=len(correct),
            loss=sum(losses) / len(losses) if losses else None,
            response_length=responses.mask.sum(1).mean(),
            step_seconds=time.time() - started,
        )
        bar.update(1)
        bar.set_postfix(correct=f"{frac_correct:.2f}", best_val=f"{selection.best:.3f}")
        if step % cfg.eval_every == 0 or step == total_steps:
            validate(step)
        checkpoints.save_stepwise(step, model, optimizer, generators, selection, guard)
    bar.close()
    save_model(accelerator, accelerator.unwrap_model(model), tokenizer, dirs["online_st_last"])
    result = ReFTResult(dirs["online_st"], dirs["online_st_last"], selection.best_step, selection.history)
    checkpoints.finish(result_to_json(result))
    return result
