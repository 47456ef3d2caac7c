"""ReFT: PPO on sampled chains of thought with the answer reward (REFERENCE.md A.3).

One step: sample k CoTs for a batch of training questions, grade them, score them once with the policy
(old log-probs, values) and the frozen warm-up model (reference log-probs), then make advantages with
``reft.advantage``: ``gae`` (the paper) folds the k1 KL into per-token rewards with the score on the last
action and runs GAE against the value head, whitened globally; the critic-free estimators (GRPO, RLOO, ...)
give every token of a sample one advantage from the rewards of its question's k samples. Then
``ppo_epochs`` passes of the clipped policy loss (+ value loss, + k3 KL loss, + gold CE, as configured) over
shuffled minibatches. The maths lives in ``reftkit.rl.ppo``; log-probs are those of the distribution sampled
from (``reftkit.rollout.generate.warp_logits``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import ReFTConfig, RunConfig
from reftkit.data.base import TaskData
from reftkit.models.policy import PolicyWithValue, forward_from, reference_model
from reftkit.models.trainable import load_trainable_lm, trainable_parameters
from reftkit.reward.answers import frac_correct_chain_disagrees
from reftkit.rl import ppo
from reftkit.rollout.base import Responses
from reftkit.rollout.generate import warp_logits
from reftkit.runtime.distributed import local_rows, owned, world
from reftkit.trainers.common import (
    NonFiniteGuard,
    adamw,
    apply_gradients,
    backward_parts,
    split_rows,
    write_atomically,
)
from reftkit.trainers.sft import collate, sft_loss, tokenize_examples
from reftkit.trainers.stepwise import Rollout, StageContext, StepResult, StepwiseTrainer, train_stepwise


@dataclass
class GoldChains:
    """The tokenised gold chain of every training question, for ``reft.sft_coef``'s cross-entropy term."""

    examples: list[tuple[list[int], int]]
    pad_id: int

    def loss(self, lm: PreTrainedModel, questions: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Token-mean cross-entropy of the gold chains of ``questions`` (each distinct question once). Under
        several processes each takes its own rows' questions: the term is the mean of the processes' shares."""
        examples = [self.examples[q] for q in dict.fromkeys(questions.tolist())]
        ids, mask, labels = (t.to(device) for t in collate(examples, self.pad_id))
        return sft_loss(lm, ids, mask, labels)


@dataclass
class Experience:
    """One step's rollouts, scored; per-token tensors are response-aligned [N, R] (see ``reftkit.rl.ppo``).

    Under several processes each holds the rows ``rows`` of the step's ``n_rows`` (``reftkit.runtime.distributed``).
    """

    input_ids: torch.Tensor  # [N, P + R] prompt (left-padded) then response (right-padded)
    attention_mask: torch.Tensor  # [N, P + R]
    prompt_width: int  # P
    responses: Responses
    rows: list[int]
    n_rows: int
    questions: torch.Tensor  # [N] index of each row's training question (its group)
    lengths: torch.Tensor  # [n_rows] response length of every row of the step, for global token counts
    old_logp: torch.Tensor
    old_values: torch.Tensor | None  # None without a critic
    ref_logp: torch.Tensor | None  # None with kl_coef = 0 (no reference model)
    advantages: torch.Tensor
    returns: torch.Tensor | None
    first_pass: tuple[torch.Tensor, torch.Tensor | None] | None = None  # scoring's graph (``fuses_first_pass``)


def fuses_first_pass(cfg: ReFTConfig, n_rows: int) -> bool:
    """Whether scoring's policy forward, made with gradients, can serve as the first PPO minibatch's (one minibatch
    of every row, one part, one process): the policy has not moved yet, so its log-probs are the old ones exactly
    (the first ratio is 1 bit for bit), and one forward of the step is saved."""
    return cfg.ppo_epochs >= 1 and cfg.minibatch_size >= n_rows and cfg.grad_accum_steps == 1 and world()[1] == 1


def score(
    policy: PolicyWithValue,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    response_ids: torch.Tensor,
    value_into_trunk: bool = True,
    sampling: tuple[float, int, float] = (1.0, 0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under the distribution they were sampled from (``sampling`` is
    temperature, top-k, top-p) and the values of the states before them (None without a critic), both [N, R]."""
    logits, values = policy(input_ids, attention_mask, prompt_width - 1, value_into_trunk, last=False)
    return response_logprobs(logits, response_ids, sampling), values


def response_logprobs(
    logits: torch.Tensor, response_ids: torch.Tensor, sampling: tuple[float, int, float]
) -> torch.Tensor:
    """Float32 log-probs of the drawn tokens under the sampling distribution; without a top-k / top-p filter by the
    chunked path (``ppo.token_logprobs``), which never holds float32 log-probs of the whole vocabulary."""
    temperature, top_k, top_p = sampling
    if top_k == 0 and top_p >= 1.0:
        return ppo.token_logprobs(logits, response_ids, temperature)
    return ppo.logprobs_from_logits(warp_logits(logits, *sampling, keep=response_ids), response_ids)


@torch.no_grad()
def reference_logprobs(
    ref: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    response_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The reference's log-probs of the response tokens at the sampling temperature (no top-k/top-p: a token
    outside the reference's own top set would have an infinite KL), as TRL does."""
    # logits from the last prompt position, which predicts the first response token, to the last but one
    logits, _ = forward_from(ref, input_ids, attention_mask, prompt_width - 1, last=False)
    return response_logprobs(logits, response_ids, (temperature, 0, 1.0))


def sampling_of(cfg: ReFTConfig) -> tuple[float, int, float]:
    """(temperature, top-k, top-p) of the rollouts, the distribution PPO's log-probs are taken under."""
    return cfg.temperature, cfg.top_k, cfg.top_p


def train_reft(ctx: StageContext) -> StepResult:
    """PPO from the warm-up for ``reft.epochs`` epochs; keeps the best-on-validation and the last policy."""
    return train_stepwise(ctx, "reft", _reft_trainer)


def _reft_trainer(ctx: StageContext) -> StepwiseTrainer:
    """The policy (with its value head or model), the frozen reference, the optimizer and the PPO update."""
    config, tokenizer, accelerator = ctx.config, ctx.tokenizer, ctx.accelerator
    cfg = config.reft
    lm_options = (tokenizer, config.model, config.seed)
    critic = ppo.ESTIMATORS[cfg.advantage].needs_critic
    value_lm = load_trainable_lm(ctx.warmup_dir, *lm_options) if critic and cfg.value_model == "separate" else None
    policy = PolicyWithValue(load_trainable_lm(ctx.warmup_dir, *lm_options), value_lm, critic=critic)
    ref = None
    if cfg.kl_coef > 0:
        ref = reference_model(ctx.warmup_dir, tokenizer, cfg, policy.lm, accelerator.device)
    gold = None
    if cfg.sft_coef > 0:
        gold = GoldChains(tokenize_examples(tokenizer, ctx.data.train, config.task.cot), tokenizer.pad_token_id)
    groups = policy.param_groups(cfg.lr, cfg.value_lr or cfg.lr)
    optimizer = adamw(groups)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    policy.eval()  # no dropout in rollouts or updates, so the first PPO ratio is exactly 1 (as the reference)

    def update(rollout: Rollout, step: int, guard: NonFiniteGuard) -> dict[str, Any]:
        exp = make_experience(policy, ref, rollout, config, accelerator)
        stats = {}
        finite = torch.isfinite(exp.advantages).all() & (exp.returns is None or torch.isfinite(exp.returns).all())
        if guard.ok(finite, "KL or value"):
            value_only = step <= cfg.value_warmup_steps
            stats = ppo_update(policy, optimizer, exp, config, accelerator, guard, value_only, gold)
        return {**experience_figures(exp, accelerator), **stats, **_mcq_figures(rollout, ctx.data)}

    return StepwiseTrainer(
        policy, optimizer, lambda: accelerator.unwrap_model(policy).lm,
        lambda target: _save(accelerator, policy, tokenizer, target), update,
    )  # fmt: skip


def experience_figures(exp: Experience, accelerator: Accelerator) -> dict[str, Any]:
    """The KL to the warm-up (per sequence, k1 and k3) and the critic's explained variance, over every process's
    rows; each only where there is a reference or a critic."""
    mask = accelerator.gather(exp.responses.mask)
    figures = {}
    if exp.ref_logp is not None:
        old_logp, ref_logp = accelerator.gather(exp.old_logp), accelerator.gather(exp.ref_logp)
        figures["kl"] = (ppo.kl_penalty(old_logp, ref_logp, "k1") * mask).sum(1).mean()
        figures["kl_k3"] = (ppo.kl_penalty(old_logp, ref_logp, "k3") * mask).sum(1).mean()
    if exp.old_values is not None:
        old_values, returns = accelerator.gather(exp.old_values), accelerator.gather(exp.returns)
        figures["explained_variance"] = ppo.explained_variance(old_values, returns, mask)
    return figures


def _mcq_figures(rollout: Rollout, data: TaskData) -> dict[str, Any]:
    """MCQ reward hacking (REFERENCE.md A.4): the share of samples with the right letter after a wrong chain."""
    questions = [p.question for p in rollout.problems]
    share = frac_correct_chain_disagrees(rollout.graded, rollout.texts, questions, data.answer_type)
    return {} if share is None else {"frac_correct_chain_disagrees": share}


@torch.no_grad()
def make_experience(
    policy: PolicyWithValue,
    ref: PreTrainedModel | None,
    rollout: Rollout,
    config: RunConfig,
    accelerator: Accelerator,
) -> Experience:
    """Score this process's rows of the rollout once and turn them into advantages (and, with a critic, returns);
    the rollout's scores and questions hold every row of the step, so group baselines see whole groups."""
    cfg = config.reft
    batch, responses, scores, questions = rollout.prompts, rollout.responses, rollout.scores, rollout.questions
    spec = ppo.ESTIMATORS[cfg.advantage]
    device = accelerator.device
    n_rows = len(scores)
    rows = owned(n_rows)
    input_ids = local_rows(torch.cat([batch.ids.to(device), responses.ids], dim=1), rows)
    attention_mask = local_rows(torch.cat([batch.mask.to(device), responses.mask.long()], dim=1), rows)
    responses = Responses(
        local_rows(responses.ids, rows), local_rows(responses.mask, rows), local_rows(responses.truncated, rows)
    )
    width = batch.ids.size(1)
    with accelerator.autocast():
        fused = fuses_first_pass(cfg, n_rows)
        with torch.set_grad_enabled(fused):
            scored = score(policy, input_ids, attention_mask, width, responses.ids, cfg.value_model != "detached",
                           sampling_of(cfg))  # fmt: skip
        first_pass = scored if fused else None
        old_logp, old_values = (None if t is None else t.detach() for t in scored)
        ref_logp = None
        if ref is not None:
            ref_logp = reference_logprobs(ref, input_ids, attention_mask, width, responses.ids, cfg.temperature)
    mask = responses.mask
    kl = None if ref_logp is None or cfg.kl_mode != "reward" else ppo.kl_penalty(old_logp, ref_logp, "k1")
    returns = None
    if spec.needs_critic:
        rewards = ppo.shaped_rewards(local_rows(scores, rows), torch.zeros_like(mask) if kl is None else kl, mask,
                                     cfg.kl_coef)  # fmt: skip
        advantages, returns = ppo.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    else:
        per_sample = ppo.sequence_advantages(cfg.advantage, scores.to(device), questions.to(device))
        if cfg.positive_only:
            per_sample = per_sample.clamp(min=0.0)
        advantages = ppo.critic_free_advantages(local_rows(per_sample, rows), mask, kl, cfg.kl_coef)
    if spec.whiten or (spec.needs_critic and cfg.whiten_advantages):
        sums = accelerator.reduce(ppo.masked_sums(advantages, mask), reduction="sum")
        clamped = cfg.positive_only and not spec.needs_critic  # re-centring would push the clamped samples down
        advantages = ppo.whiten(advantages, mask, sums, centre=not clamped)
    return Experience(
        input_ids, attention_mask, width, responses, rows, n_rows, local_rows(questions, rows), rollout.lengths,
        old_logp, old_values, ref_logp, advantages, returns, first_pass,
    )  # fmt: skip


def ppo_update(
    policy: PolicyWithValue,
    optimizer: torch.optim.Optimizer,
    exp: Experience,
    config: RunConfig,
    accelerator: Accelerator,
    guard: NonFiniteGuard | None = None,
    value_only: bool = False,
    gold: GoldChains | None = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes over shuffled minibatches; returns the mean of each statistic.

    The loss is the clipped policy loss, plus ``vf_coef`` x the value loss with a critic, plus ``kl_coef`` x the
    k3 KL with ``kl_mode=loss``, plus ``sft_coef`` x the cross-entropy of ``gold`` (tokenised gold chains of
    every training question) on the minibatch's questions.
    ``value_only`` (the value warm-up): the policy loss is weighted 0 and the value's gradient stops at a shared
    trunk, so the policy's gradients are zero (every process still joins the all-reduce); they are dropped
    before the optimiser step, which leaves the policy and its optimiser state as they were."""
    cfg = config.reft
    kind = ppo.ESTIMATORS[cfg.advantage].loss_agg if cfg.loss_agg == "auto" else cfg.loss_agg
    totals: dict[str, float] = {}
    updates = 0
    frozen = trainable_parameters(accelerator.unwrap_model(policy).lm) if value_only else []
    for _ in range(cfg.ppo_epochs):
        for global_mb in torch.randperm(exp.n_rows).split(cfg.minibatch_size):
            mb, scale, n_sequences = _local_minibatch(global_mb, exp.rows)
            shares = split_rows(mb.tolist(), cfg.grad_accum_steps)
            n_tokens = None
            if len(shares) > 1 or n_sequences is not None:  # each share divides by the minibatch's global counts
                n_sequences = n_sequences or len(global_mb)
                n_tokens = int(exp.lengths[global_mb.to(exp.lengths.device)].sum())
            aggregate = ppo.Aggregation(kind, n_sequences, n_tokens, cfg.max_new_tokens)
            figures: dict[str, float] = {}
            parts = _minibatch_losses(policy, exp, shares, aggregate, cfg, accelerator, value_only, gold, figures)
            loss = backward_parts(accelerator, (scale * part for part in parts))
            grad_norm = apply_gradients(
                accelerator, loss, policy, optimizer, cfg.grad_clip, guard=guard, frozen=frozen, backward=False
            )
            figures = {key: scale * value if key in SUMMED else value for key, value in figures.items()}
            figures["grad_norm"] = float(grad_norm)
            for key, value in figures.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1
    means = {key: value / updates for key, value in totals.items()}
    if world()[1] == 1:
        return means
    across = accelerator.reduce(torch.tensor(list(means.values()), device=accelerator.device), reduction="mean")
    return dict(zip(means, across.tolist(), strict=True))


def _minibatch_losses(
    policy: PolicyWithValue,
    exp: Experience,
    shares: list[list[int]],
    aggregate: ppo.Aggregation,
    cfg: ReFTConfig,
    accelerator: Accelerator,
    value_only: bool,
    gold: GoldChains | None,
    figures: dict[str, float],
) -> Iterator[torch.Tensor]:
    """A minibatch's loss in its gradient-accumulation ``shares`` (this process's rows), made one at a time, then
    the gold chains' cross-entropy as one more part; each part's figures are added to ``figures`` (the losses
    summed, the other statistics averaged)."""
    for share in shares:
        loss, share_figures = _minibatch_loss(policy, exp, torch.as_tensor(share), aggregate, cfg, accelerator,
                                              value_only)  # fmt: skip
        for key, value in share_figures.items():
            figures[key] = figures.get(key, 0.0) + float(value) / (1 if key in SUMMED else len(shares))
        yield loss
    if gold is not None and not value_only:  # one more part: the gold chains of the minibatch's questions
        questions = torch.cat([exp.questions[torch.as_tensor(share)] for share in shares])
        with accelerator.autocast():
            sft_term = gold.loss(accelerator.unwrap_model(policy).lm, questions, accelerator.device)
        figures["sft_loss"] = float(sft_term.detach())
        yield cfg.sft_coef * sft_term


SUMMED = ("policy_loss", "value_loss", "kl_loss", "sft_loss")  # add up over accumulation's shares (others: mean)


def _minibatch_loss(
    policy: PolicyWithValue,
    exp: Experience,
    rows: torch.Tensor,
    aggregate: ppo.Aggregation,
    cfg: ReFTConfig,
    accelerator: Accelerator,
    value_only: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss of this process's ``rows`` of a minibatch (all of it, or one share of it under gradient
    accumulation) and its figures."""
    mask = exp.responses.mask[rows]
    if exp.first_pass is not None:  # scoring's forward of every row (a value warm-up drops the trunk's gradients)
        (logp, values), exp.first_pass = exp.first_pass, None
        logp, values = logp[rows], None if values is None else values[rows]
    else:
        with accelerator.autocast():
            logp, values = score(
                policy,
                exp.input_ids[rows],
                exp.attention_mask[rows],
                exp.prompt_width,
                exp.responses.ids[rows],
                value_into_trunk=not value_only and cfg.value_model != "detached",
                sampling=sampling_of(cfg),
            )
    pg_loss, figures = ppo.policy_loss(logp, exp.old_logp[rows], exp.advantages[rows], mask, cfg.clip_eps,
                                       aggregate=aggregate)  # fmt: skip
    loss = (0.0 if value_only else 1.0) * pg_loss
    figures["policy_loss"] = pg_loss.detach()
    if values is not None:
        vf_loss, vf_stats = ppo.value_loss(
            values, exp.old_values[rows], exp.returns[rows], mask, cfg.value_clip, aggregate.n_sequences
        )
        loss = loss + cfg.vf_coef * vf_loss
        figures |= {"value_loss": vf_loss.detach(), **vf_stats}
    if cfg.kl_mode == "loss" and exp.ref_logp is not None:
        kl_term = ppo.kl_loss(logp, exp.ref_logp[rows], mask, aggregate)
        loss = loss + cfg.kl_coef * kl_term
        figures["kl_loss"] = kl_term.detach()
    return loss, figures


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
