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
from collections.abc import Sequence
from itertools import chain
from typing import Any

from reftkit.data.base import ANSWER_TRIGGER, CoT, Problem, full_program, target_text
from reftkit.evaluation.sampling import Sample, by_question
from reftkit.models.trainable import load_trainable_lm, trainable_parameters
from reftkit.reward.answers import Outcome
from reftkit.trainers.common import NonFiniteGuard, adamw, apply_gradients, backward_parts
from reftkit.trainers.sft import save_model, sft_loss_parts, tokenize_examples
from reftkit.trainers.stepwise import Rollout, StageContext, StepResult, StepwiseTrainer, train_stepwise


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


def train_online_st(ctx: StageContext) -> StepResult:
    """Online self-training from the warm-up with ReFT's sampling, steps, learning rate and selection."""
    return train_stepwise(ctx, "online_st", _online_st_trainer)


def _online_st_trainer(ctx: StageContext) -> StepwiseTrainer:
    """The policy, its optimizer and the cross-entropy update on each step's correct samples (and gold chains)."""
    config, tokenizer, accelerator = ctx.config, ctx.tokenizer, ctx.accelerator
    cfg = config.reft
    model = load_trainable_lm(ctx.warmup_dir, tokenizer, config.model, config.seed)
    optimizer = adamw(trainable_parameters(model), lr=cfg.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()  # no dropout, as in ReFT
    gold = tokenize_examples(tokenizer, ctx.data.train, config.task.cot)
    pad = tokenizer.pad_token_id

    def update(rollout: Rollout, step: int, guard: NonFiniteGuard) -> dict[str, Any]:
        lengths = rollout.lengths.long().tolist()
        kept = [
            j for j, g in enumerate(rollout.graded)
            if g.outcome == Outcome.CORRECT and not bool(rollout.responses.truncated[j])  # the EOS is in the target
        ]  # fmt: skip
        prompts = {j: rollout.prompts.ids[j][rollout.prompts.mask[j].bool()].tolist() for j in kept}  # unpadded
        correct = [(prompts[j] + rollout.responses.ids[j, : lengths[j]].tolist(), len(prompts[j])) for j in kept]
        questions = list(dict.fromkeys(rollout.questions.tolist()))
        losses = []
        with_gold = config.self_training.online_gold
        parts = cfg.grad_accum_steps
        for _ in range(cfg.ppo_epochs if with_gold or correct else 0):  # nothing to learn from: no update
            if with_gold:
                terms = sft_loss_parts(model, [gold[q] for q in questions], pad, accelerator, parts, weight=0.5)
                if correct:
                    terms = chain(terms, sft_loss_parts(model, correct, pad, accelerator, parts, weight=0.5))
            else:
                terms = sft_loss_parts(model, correct, pad, accelerator, parts)
            loss = backward_parts(accelerator, terms)
            apply_gradients(accelerator, loss, model, optimizer, cfg.grad_clip, guard=guard, backward=False)
            losses.append(accelerator.reduce(loss, reduction="mean").item())
        return {"kept": len(correct), "loss": sum(losses) / len(losses) if losses else None}

    return StepwiseTrainer(
        model, optimizer, lambda: accelerator.unwrap_model(model),
        lambda target: save_model(accelerator, accelerator.unwrap_model(model), tokenizer, target), update,
    )  # fmt: skip
