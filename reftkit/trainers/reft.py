"""ReFT: PPO on sampled chains of thought with the answer reward (REFERENCE.md A.3).

One step: sample k CoTs for a batch of training questions, grade them, score them once with the policy
(old log-probs, values) and the frozen warm-up model (reference log-probs), fold the k1 KL into per-token
rewards with the score on the last action, compute GAE and whiten it globally, then run ``ppo_epochs``
passes of clipped policy + value loss over shuffled minibatches. The maths lives in ``reftkit.ppo``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit import ppo
from reftkit.answers import RewardTable, frac_correct_chain_disagrees, grade_batch, outcome_counts
from reftkit.config import RunConfig
from reftkit.distributed import local_rows, owned, world
from reftkit.models import (
    PolicyWithValue,
    load_trainable_lm,
    position_ids_from_mask,
    reference_model,
    trainable_parameters,
)
from reftkit.rollout import Batch, Responses, decode_responses, encode_prompts
from reftkit.tasks.base import CoT, TaskData, prompt_text
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
    write_atomically,
)


@dataclass
class ReFTResult:
    """What a step-wise trainer (ReFT, online self-training) keeps: best-on-validation and last checkpoints."""

    best_dir: Path
    last_dir: Path
    best_step: int
    val_history: dict[int, float] = field(default_factory=dict)


@dataclass
class Experience:
    """One step's rollouts, scored; per-token tensors are response-aligned [N, R] (see ``reftkit.ppo``).

    Under several processes each holds the rows ``rows`` of the step's ``n_rows`` (``reftkit.distributed``).
    """

    input_ids: torch.Tensor  # [N, P + R] prompt (left-padded) then response (right-padded)
    attention_mask: torch.Tensor  # [N, P + R]
    prompt_width: int  # P
    responses: Responses
    rows: list[int]
    n_rows: int
    old_logp: torch.Tensor
    old_values: torch.Tensor
    ref_logp: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def score(
    policy: PolicyWithValue,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    response_ids: torch.Tensor,
    value_into_trunk: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens and the values of the states before them, both [N, R]."""
    logits, values = policy(input_ids, attention_mask, prompt_width - 1, value_into_trunk)
    return ppo.logprobs_from_logits(logits[:, :-1], response_ids), values[:, :-1]


@torch.no_grad()
def reference_logprobs(
    ref: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    response_ids: torch.Tensor,
) -> torch.Tensor:
    logits = ref(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    ).logits
    return ppo.logprobs_from_logits(logits[:, prompt_width - 1 : -1], response_ids)


def train_reft(
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
    """PPO from ``warmup_dir`` for ``reft.epochs`` epochs; keeps the best-on-validation and the last policy.

    ``epoch_offset`` places the logged epochs after the warm-up's, so curves of both stages share an axis.
    """
    cfg = config.reft
    cot: CoT = config.task.cot  # type: ignore[assignment]
    checkpoints = StageCheckpoints(out_dir, "reft", config.checkpoint, log, accelerator)
    if (done := checkpoints.finished()) is not None:
        return result_from_json(ReFTResult, done)
    lm_options = (tokenizer, config.model, config.seed)
    value_lm = load_trainable_lm(warmup_dir, *lm_options) if cfg.value_model == "separate" else None
    policy = PolicyWithValue(load_trainable_lm(warmup_dir, *lm_options), value_lm)
    ref = reference_model(warmup_dir, tokenizer, cfg, policy.lm, accelerator.device)
    groups = policy.param_groups(cfg.lr, cfg.value_lr or cfg.lr)
    optimizer = torch.optim.AdamW(groups, eps=1e-8, weight_decay=0.0)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    policy.eval()  # no dropout in rollouts or updates, so the first PPO ratio is exactly 1 (as the reference)
    table = RewardTable(partial_reward=cfg.partial_reward)
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in data.train])
    sample_rng = torch.Generator(device=accelerator.device).manual_seed(config.seed + 1)
    steps_per_epoch, total_steps = step_plan(len(prompts), cfg)

    dirs = {name: out_dir / "checkpoints" / name for name in ("reft", "reft_last")}
    selection = Selection()

    def validate(step: int, known: float | None = None) -> None:
        if known is None:
            known = validation_accuracy(accelerator.unwrap_model(policy).lm, tokenizer, data, config, accelerator)
        log.write("reft_eval", step, epoch=epoch_offset + step / steps_per_epoch, val_acc=known)
        if selection.record(step, known):
            _save(accelerator, policy, tokenizer, dirs["reft"])

    guard = NonFiniteGuard(config.checkpoint.max_nonfinite_in_row, log, "reft")
    generators = {"sample": sample_rng}
    start = checkpoints.load_stepwise(policy, optimizer, generators, selection, guard)
    if start == 0:
        validate(0, warmup_val_acc)
    engine = rollout_engine(cfg, warmup_dir)
    bar = tqdm(total=total_steps, initial=start, desc="reft", unit="step", dynamic_ncols=True)
    batches = question_batches(len(prompts), cfg, torch.Generator().manual_seed(config.seed), total_steps, start)
    for step, questions in batches:
        guard.step = step
        started = time.time()
        rows = [q for q in questions for _ in range(cfg.samples_per_question)]
        batch, responses = sample_policy(
            accelerator.unwrap_model(policy).lm, prompts, questions, cfg, tokenizer, sample_rng, accelerator, engine
        )
        problems = [data.train[i] for i in rows]
        texts = decode_responses(tokenizer, responses)
        graded = grade_batch(problems, texts, cot, data.answer_type, table, config.eval.program_timeout)
        scores = torch.tensor([g.reward for g in graded], device=accelerator.device)
        exp = make_experience(policy, ref, batch, responses, scores, config, accelerator)
        stats = {}
        if guard.ok(torch.isfinite(exp.advantages).all() & torch.isfinite(exp.returns).all(), "KL or value"):
            stats = ppo_update(policy, optimizer, exp, config, accelerator, guard, step <= cfg.value_warmup_steps)
        counts = outcome_counts(graded)
        old_logp, ref_logp, old_values, returns, mask = (
            accelerator.gather(t) for t in (exp.old_logp, exp.ref_logp, exp.old_values, exp.returns, exp.responses.mask)
        )  # every process's rows, for the logged figures
        figures = {
            "reward": scores.mean(),
            **{f"frac_{k}": v / len(graded) for k, v in counts.items()},
            "kl": (ppo.kl_penalty(old_logp, ref_logp, "k1") * mask).sum(1).mean(),  # per sequence
            "kl_k3": (ppo.kl_penalty(old_logp, ref_logp, "k3") * mask).sum(1).mean(),
            "response_length": mask.sum(1).mean(),
            "truncated": responses.truncated.float().mean(),
            "explained_variance": ppo.explained_variance(old_values, returns, mask),
            "step_seconds": time.time() - started,
            **stats,
        }
        if data.answer_type == "mcq":  # MCQ reward hacking (REFERENCE.md A.4): right letter, wrong chain
            figures["frac_correct_chain_disagrees"] = frac_correct_chain_disagrees(
                graded, texts, [p.question for p in problems]
            )
        log.write("reft", step, epoch=epoch_offset + step / steps_per_epoch, **figures)
        bar.update(1)
        bar.set_postfix(
            reward=f"{scores.mean():.2f}", kl=f"{float(figures['kl']):.2f}", best_val=f"{selection.best:.3f}"
        )
        if step % cfg.eval_every == 0 or step == total_steps:
            validate(step)
        checkpoints.save_stepwise(step, policy, optimizer, generators, selection, guard)
    bar.close()
    _save(accelerator, policy, tokenizer, dirs["reft_last"])
    result = ReFTResult(dirs["reft"], dirs["reft_last"], selection.best_step, selection.history)
    checkpoints.finish(result_to_json(result))
    return result


@torch.no_grad()
def make_experience(
    policy: PolicyWithValue,
    ref: PreTrainedModel,
    batch: Batch,
    responses: Responses,
    scores: torch.Tensor,
    config: RunConfig,
    accelerator: Accelerator,
) -> Experience:
    """Score this process's rows of the rollouts once and turn them into advantages and returns."""
    cfg = config.reft
    device = accelerator.device
    n_rows = len(scores)
    rows = owned(n_rows)
    input_ids = local_rows(torch.cat([batch.ids.to(device), responses.ids], dim=1), rows)
    attention_mask = local_rows(torch.cat([batch.mask.to(device), responses.mask.long()], dim=1), rows)
    responses = Responses(
        local_rows(responses.ids, rows), local_rows(responses.mask, rows), local_rows(responses.truncated, rows)
    )
    scores = local_rows(scores, rows)
    width = batch.ids.size(1)
    with accelerator.autocast():
        old_logp, old_values = score(policy, input_ids, attention_mask, width, responses.ids)
        ref_logp = reference_logprobs(ref, input_ids, attention_mask, width, responses.ids)
    mask = responses.mask
    kl = ppo.kl_penalty(old_logp, ref_logp, "k1")
    rewards = ppo.shaped_rewards(scores, kl, mask, cfg.kl_coef)
    advantages, returns = ppo.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        sums = accelerator.reduce(ppo.masked_sums(advantages, mask), reduction="sum")
        advantages = ppo.whiten(advantages, mask, sums)
    return Experience(
        input_ids, attention_mask, width, responses, rows, n_rows, old_logp, old_values, ref_logp, advantages, returns
    )


def ppo_update(
    policy: PolicyWithValue,
    optimizer: torch.optim.Optimizer,
    exp: Experience,
    config: RunConfig,
    accelerator: Accelerator,
    guard: NonFiniteGuard | None = None,
    value_only: bool = False,
) -> dict[str, float]:
    """``ppo_epochs`` passes over shuffled minibatches; returns the mean of each statistic.

    ``value_only`` (the value warm-up): the policy loss is weighted 0 and the value's gradient stops at a shared
    trunk, so the policy's gradients are zero (every process still joins the all-reduce); they are dropped
    before the optimiser step, which leaves the policy and its optimiser state as they were."""
    cfg = config.reft
    totals: dict[str, float] = {}
    updates = 0
    frozen = trainable_parameters(accelerator.unwrap_model(policy).lm) if value_only else []
    for _ in range(cfg.ppo_epochs):
        for global_mb in torch.randperm(exp.n_rows).split(cfg.minibatch_size):
            mb, scale, n_sequences = _local_minibatch(global_mb, exp.rows)
            mask = exp.responses.mask[mb]
            with accelerator.autocast():
                logp, values = score(
                    policy,
                    exp.input_ids[mb],
                    exp.attention_mask[mb],
                    exp.prompt_width,
                    exp.responses.ids[mb],
                    value_into_trunk=not value_only and cfg.value_model != "detached",
                )
            pg_loss, pg_stats = ppo.policy_loss(
                logp, exp.old_logp[mb], exp.advantages[mb], mask, cfg.clip_eps, n_sequences
            )
            vf_loss, vf_stats = ppo.value_loss(
                values, exp.old_values[mb], exp.returns[mb], mask, cfg.value_clip, n_sequences
            )
            loss = scale * ((0.0 if value_only else 1.0) * pg_loss + cfg.vf_coef * vf_loss)
            grad_norm = apply_gradients(accelerator, loss, policy, optimizer, cfg.grad_clip, guard=guard, frozen=frozen)
            figures = {
                "policy_loss": scale * pg_loss,  # the process mean of these is the minibatch's loss
                "value_loss": scale * vf_loss,
                "grad_norm": grad_norm,
                **pg_stats,
                **vf_stats,
            }
            for key, value in figures.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach() if isinstance(value, torch.Tensor) else value)
            updates += 1
    means = {key: value / updates for key, value in totals.items()}
    if world()[1] == 1:
        return means
    across = accelerator.reduce(torch.tensor(list(means.values()), device=accelerator.device), reduction="mean")
    return dict(zip(means, across.tolist(), strict=True))


def _local_minibatch(global_mb: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, float, int | None]:
    """(this process's rows of a minibatch of global rows, loss scale, sequences the loss is averaged over).

    One process: the minibatch itself, scale 1, its own size. Several: the loss is summed over the process's
    rows and divided by the minibatch's size, times the number of processes because DDP averages gradients;
    a process with no row of the minibatch still runs one row at scale 0, so that every process takes part
    in the gradient all-reduce.
    """
    size = world()[1]
    if size == 1:
        return global_mb, 1.0, None
    where = {row: i for i, row in enumerate(rows)}
    mine = [where[r] for r in global_mb.tolist() if r in where]
    if not mine:
        return torch.tensor([0]), 0.0, 1
    return torch.tensor(mine), float(size), len(global_mb)


def _save(accelerator: Accelerator, policy: PolicyWithValue, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    if accelerator.is_main_process:
        write_atomically(target, lambda tmp: accelerator.unwrap_model(policy).save(tmp, tokenizer))
    accelerator.wait_for_everyone()
