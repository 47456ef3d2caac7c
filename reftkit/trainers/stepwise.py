"""The loop of the trainers that sample as they learn (ReFT, online self-training) and the record they share.

Every step: take the step's training questions, sample ``samples_per_question`` chains of each with the policy,
grade them (one ``Rollout``), hand the rollout to the trainer's ``update`` (PPO, or cross-entropy on the correct
chains), log the rollout's and the update's figures; every ``eval_every`` steps validate and keep the best
checkpoint; save a resumable checkpoint when one is due. Resume, selection, the non-finite guard, the progress
bar and the final save live here once; a trainer hands over only what differs (``StepwiseTrainer``).
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
from reftkit.rollout.generate import Batch, Responses, decode_responses, encode_prompts
from reftkit.trainers.checkpoints import StageCheckpoints, result_from_json, result_to_json
from reftkit.trainers.common import (
    MetricsLog,
    NonFiniteGuard,
    Selection,
    question_batches,
    rollout_engine,
    sample_policy,
    step_plan,
    validation_accuracy,
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
class StepwiseTrainer:
    """What a step-wise trainer hands the loop: its stage name, the prepared model and optimizer, how to reach the
    LM that samples and is validated, how to save it, and its update (rollout, step, guard -> logged figures)."""

    stage: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lm: Callable[[], PreTrainedModel]
    save: Callable[[Path], None]
    update: Callable[[Rollout, int, NonFiniteGuard], dict[str, Any]]


def start_stage(
    stage: str, out_dir: Path, config: RunConfig, log: MetricsLog, accelerator: Accelerator
) -> tuple[StageCheckpoints, StepResult | None]:
    """The stage's checkpoints and, when the stage already finished, its result (nothing to train)."""
    checkpoints = StageCheckpoints(out_dir, stage, config.checkpoint, log, accelerator)
    done = checkpoints.finished()
    return checkpoints, None if done is None else result_from_json(StepResult, done)


def run_steps(
    trainer: StepwiseTrainer,
    checkpoints: StageCheckpoints,
    config: RunConfig,
    warmup_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    out_dir: Path,
    log: MetricsLog,
    accelerator: Accelerator,
    warmup_val_acc: float | None = None,
    epoch_offset: float = 0.0,
) -> StepResult:
    """``reft.epochs`` epochs (capped by ``reft.max_steps``) of sample-grade-update steps from the warm-up; keeps the
    best-on-validation (``checkpoints/<stage>``) and the last (``<stage>_last``) model.

    ``epoch_offset`` places the logged epochs after the warm-up's, so curves of both stages share an axis."""
    cfg = config.reft
    cot: CoT = config.task.cot  # type: ignore[assignment]
    stage = trainer.stage
    table = RewardTable(partial_reward=cfg.partial_reward)
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in data.train])
    sample_rng = torch.Generator(device=accelerator.device).manual_seed(config.seed + 1)
    steps_per_epoch, total_steps = step_plan(len(prompts), cfg)
    dirs = {name: out_dir / "checkpoints" / name for name in (stage, f"{stage}_last")}
    selection = Selection()

    def validate(step: int, known: float | None = None) -> None:
        if known is None:
            known = validation_accuracy(trainer.lm(), tokenizer, data, config, accelerator)
        log.write(f"{stage}_eval", step, epoch=epoch_offset + step / steps_per_epoch, val_acc=known)
        if selection.record(step, known):
            trainer.save(dirs[stage])

    guard = NonFiniteGuard(config.checkpoint.max_nonfinite_in_row, log, stage)
    generators = {"sample": sample_rng}
    start = checkpoints.load_stepwise(trainer.model, trainer.optimizer, generators, selection, guard)
    if start == 0:
        validate(0, warmup_val_acc)
    engine = rollout_engine(cfg, warmup_dir)
    bar = tqdm(total=total_steps, initial=start, desc=stage.replace("_", "-"), unit="step", dynamic_ncols=True)
    batches = question_batches(len(prompts), cfg, torch.Generator().manual_seed(config.seed), total_steps, start)
    for step, questions in batches:
        guard.step = step
        started = time.time()
        lm = trainer.lm()
        batch, responses = sample_policy(lm, prompts, questions, cfg, tokenizer, sample_rng, accelerator, engine)
        rows = [q for q in questions for _ in range(cfg.samples_per_question)]
        problems = [data.train[i] for i in rows]
        texts = decode_responses(tokenizer, responses)
        graded = grade_batch(problems, texts, cot, data.answer_type, table, config.eval.program_timeout)
        scores = torch.tensor([g.reward for g in graded], device=accelerator.device)
        rollout = Rollout(torch.tensor(rows), batch, responses, problems, texts, graded, scores)
        figures = {**rollout.figures(), **trainer.update(rollout, step, guard)}
        figures["step_seconds"] = time.time() - started
        log.write(stage, step, epoch=epoch_offset + step / steps_per_epoch, **figures)
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
