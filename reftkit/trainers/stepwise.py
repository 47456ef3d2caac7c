"""The loop of the trainers that sample as they learn (ReFT, online self-training) and the record they share.

Every step: take the step's training questions, sample ``samples_per_question`` chains of each with the policy,
grade them (one ``Rollout``), hand the rollout to the trainer's ``update`` (PPO, or cross-entropy on the correct
chains), log the rollout's and the update's figures; every ``eval_every`` steps validate and keep the best
checkpoint; save a resumable checkpoint when one is due. Resume, selection, the non-finite guard, the progress
bar and the final save live here once. Every stage gets the same inputs (``StageContext``); a trainer hands the
loop only what differs (``StepwiseTrainer``: its model, optimizer, saving and update), through ``train_stepwise``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import RunConfig
from reftkit.data.base import CoT, Problem, TaskData, prompt_text
from reftkit.reward.answers import Graded, RewardTable, grade_batch, outcome_counts
from reftkit.rollout.base import Batch, Responses, generation_config
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import decode_responses, encode_prompts
from reftkit.runtime.interrupt import stop_after_step
from reftkit.trainers.checkpoints import StageCheckpoints, result_from_json, result_to_json
from reftkit.trainers.common import (
    MetricsLog,
    NonFiniteGuard,
    Selection,
    greedy_accuracy,
    question_batches,
    sample_policy,
    step_plan,
)


@dataclass
class StepResult:
    """What a step-wise trainer (ReFT, online self-training) keeps: best-on-validation and last checkpoints."""

    best_dir: Path
    last_dir: Path
    best_step: int
    val_history: dict[int, float] = field(default_factory=dict)


@dataclass
class Rollout:
    """One step's samples, built once and read by every trainer. Rows are grouped by question (the ``k``
    samples of a question are adjacent); every field holds all rows of the step, whichever process sampled them.
    """

    questions: torch.Tensor  # [N] index of each row's training question (its group)
    prompts: Batch  # [N, P] each row's left-padded prompt
    responses: Responses  # [N, R] each row's right-padded sample, its mask and whether it was cut
    problems: list[Problem]  # [N] each row's problem
    texts: list[str]  # [N] each sample's text (no EOS)
    graded: list[Graded]  # [N] outcome, extracted answer, reward
    scores: torch.Tensor  # [N] the rewards, on the training device

    @property
    def lengths(self) -> torch.Tensor:
        """[N] tokens in each response, EOS included."""
        return self.responses.mask.sum(1)

    def figures(self) -> dict[str, Any]:
        """The step's sampling figures: mean reward, share of each outcome, response length, share cut."""
        counts = outcome_counts(self.graded)
        return {
            "reward": self.scores.mean(),
            **{f"frac_{k}": v / len(self.graded) for k, v in counts.items()},
            "response_length": self.lengths.float().mean(),
            "truncated": self.responses.truncated.float().mean(),
        }


@dataclass
class StageContext:
    """What every step-wise stage is given by the pipeline: the run's config and data, the warm-up it starts from,
    where it writes, and the log and accelerator of the run."""

    config: RunConfig
    warmup_dir: Path
    tokenizer: PreTrainedTokenizerBase
    data: TaskData
    out_dir: Path
    log: MetricsLog
    accelerator: Accelerator
    warmup_val_acc: float | None = None
    """The warm-up's validation accuracy, logged as step 0 (None: validated again)."""
    epoch_offset: float = 0.0
    """Places the logged epochs after the warm-up's, so curves of both stages share an axis."""


@dataclass
class StepwiseTrainer:
    """What a step-wise trainer hands the loop: the prepared model and optimizer, how to reach the LM that samples
    and is validated, how to save it, and its update (rollout, step, guard -> logged figures)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lm: Callable[[], PreTrainedModel]
    save: Callable[[Path], None]
    update: Callable[[Rollout, int, NonFiniteGuard], dict[str, Any]]


def train_stepwise(ctx: StageContext, stage: str, build: Callable[[StageContext], StepwiseTrainer]) -> StepResult:
    """Stage ``stage``: its result when it already finished, else the trainer ``build`` makes, trained by
    ``run_steps`` (built after the stage's record is read, so a finished stage loads no model)."""
    checkpoints = StageCheckpoints(ctx.out_dir, stage, ctx.config.checkpoint, ctx.log, ctx.accelerator)
    done = checkpoints.finished()
    if done is not None:
        return result_from_json(StepResult, done)
    return run_steps(ctx, stage, build(ctx), checkpoints)


def run_steps(ctx: StageContext, stage: str, trainer: StepwiseTrainer, checkpoints: StageCheckpoints) -> StepResult:
    """``reft.epochs`` epochs (capped by ``reft.max_steps``) of sample-grade-update steps from the warm-up; keeps the
    best-on-validation (``checkpoints/<stage>``) and the last (``<stage>_last``) model."""
    config, tokenizer, data, log, accelerator = ctx.config, ctx.tokenizer, ctx.data, ctx.log, ctx.accelerator
    cfg = config.reft
    cot: CoT = config.task.cot
    table = RewardTable(partial_reward=cfg.partial_reward)
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in data.train])
    sample_rng = torch.Generator(device=accelerator.device).manual_seed(config.seed + 1)
    steps_per_epoch, total_steps = step_plan(len(prompts), cfg)
    dirs = {name: ctx.out_dir / "checkpoints" / name for name in (stage, f"{stage}_last")}
    selection = Selection()

    def validate(step: int, known: float | None = None) -> None:
        if known is None:
            known = greedy_accuracy(trainer.lm(), tokenizer, data.val, config, data.answer_type, accelerator).accuracy
        log.write(f"{stage}_eval", step, epoch=ctx.epoch_offset + step / steps_per_epoch, val_acc=known)
        if selection.record(step, known):
            trainer.save(dirs[stage])

    guard = NonFiniteGuard(config.checkpoint.max_nonfinite_in_row, log, stage)
    generators = {"sample": sample_rng}
    start = checkpoints.load_stepwise(trainer.model, trainer.optimizer, generators, selection, guard)
    if start == 0:
        validate(0, ctx.warmup_val_acc)
    engine = make_engine(cfg.rollout_backend, ctx.warmup_dir)
    gen, k = generation_config(cfg, tokenizer), cfg.samples_per_question
    bar = tqdm(total=total_steps, initial=start, desc=stage.replace("_", "-"), unit="step", dynamic_ncols=True)
    batches = question_batches(len(prompts), cfg, torch.Generator().manual_seed(config.seed), total_steps, start)
    with stop_after_step():  # Ctrl-C / SIGTERM: stop after this step, its checkpoint written
        for step, questions in batches:
            guard.step = step
            started = time.time()
            batch, responses = sample_policy(engine, trainer.lm(), prompts, questions, gen, k, sample_rng, accelerator)
            rows = [q for q in questions for _ in range(k)]
            problems = [data.train[i] for i in rows]
            texts = decode_responses(tokenizer, responses)
            graded = grade_batch(problems, texts, cot, data.answer_type, table, config.eval.program_timeout)
            scores = torch.tensor([g.reward for g in graded], device=accelerator.device)
            rollout = Rollout(torch.tensor(rows), batch, responses, problems, texts, graded, scores)
            figures = {**rollout.figures(), **trainer.update(rollout, step, guard)}
            figures["step_seconds"] = time.time() - started
            log.write(stage, step, epoch=ctx.epoch_offset + step / steps_per_epoch, **figures)
            bar.update(1)
            shown = {"reward": f"{float(figures['reward']):.2f}"}
            shown |= {"kl": f"{float(figures['kl']):.2f}"} if "kl" in figures else {}
            bar.set_postfix(**shown, best_val=f"{selection.best:.3f}")
            if step % cfg.eval_every == 0 or step == total_steps:
                validate(step)
            checkpoints.save_stepwise(step, trainer.model, trainer.optimizer, generators, selection, guard)
    bar.close()
    trainer.save(dirs[f"{stage}_last"])
    result = StepResult(dirs[stage], dirs[f"{stage}_last"], selection.best_step, selection.history)
    checkpoints.finish(result_to_json(result))
    return result
