"""PPO pieces for ReFT: token log-probs, KL-shaped rewards, GAE, whitening and the clipped losses.

Small pure functions on tensors, so each one can be checked by hand (tests/unit/test_ppo.py) and the
trainer only wires them together.

Tensor convention. Every per-token tensor is *response-aligned*, shape ``[B, R]``: position ``t`` is the
``t``-th generated token of sample ``b``, i.e. the ``t``-th action. ``mask[b, t]`` is 1 for the actions
that count -- every generated token up to and including EOS, or every generated token when the sample
was truncated without EOS -- and 0 after it (right padding). Masks may be float or bool.
``values[b, t]`` is V(state before action ``t``). The state after the last action is terminal (V = 0),
also for truncated samples, as in the ReFT reference. Everything returned is float32 except
``last_action_index`` (long) and ``masked_sums`` (float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

AdvantageEstimator = Literal["gae", "grpo", "rloo", "reinforce", "reinforce_baseline", "dr_grpo"]
LossAggregation = Literal["auto", "sequence_mean", "token_mean", "constant"]


def _zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` in float32 with padding set to 0 (``where``, so garbage or inf in padding cannot leak)."""
    return torch.where(mask.bool(), x.float(), 0.0)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(token) per position; log_softmax in float32 because bf16 logits lose the small log-probs."""
    logp = logits.float().log_softmax(dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


LOGPROB_CHUNK_ROWS = 256
"""Positions per chunk of ``token_logprobs``: a float32 chunk of a 49k-token vocabulary is then about 50 MB."""


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / T)[token], chunk by chunk of positions in float32: neither pass holds a float32
    [positions, vocab] tensor; the backward recomputes each chunk's softmax from the saved logits and
    log-sum-exp (d logp / d logits = onehot(token) - softmax, divided by T)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, tokens: Tensor, temperature: float, chunk: int) -> Tensor:
        flat, index = logits.reshape(-1, logits.size(-1)), tokens.reshape(-1, 1).long()
        out = torch.empty(flat.size(0), dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for start in range(0, flat.size(0), chunk):
            rows = slice(start, start + chunk)
            part = flat[rows].float() if temperature == 1.0 else flat[rows].float() / temperature
            lse[rows] = part.logsumexp(-1)
            out[rows] = part.gather(-1, index[rows]).squeeze(-1)
        out -= lse
        ctx.save_for_backward(logits, index, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out.view(tokens.shape)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        logits, index, lse = ctx.saved_tensors
        flat, g = logits.reshape(-1, logits.size(-1)), grad_out.reshape(-1, 1).float()
        grad = torch.empty_like(flat)
        for start in range(0, flat.size(0), ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            part = flat[rows].to(torch.float32, copy=True)  # one float32 chunk, then in place: -g * softmax
            if ctx.temperature != 1.0:
                part.div_(ctx.temperature)
            part.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-g[rows]).scatter_add_(-1, index[rows], g[rows])
            grad[rows] = part if ctx.temperature == 1.0 else part.div_(ctx.temperature)
        return grad.view_as(logits), None, None, None


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0, chunk: int = LOGPROB_CHUNK_ROWS) -> Tensor:
    """``logprobs_from_logits(logits / temperature, tokens)`` in float32 (equal to 1e-5) without materialising
    the float32 log-softmax over the vocabulary: what scoring and the PPO loss use when no top-k / top-p
    filter applies."""
    return _TokenLogprobs.apply(logits, tokens, float(temperature), chunk)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens.

    "k1" (log pi - log ref) is unbiased and what ReFT puts in the reward; it can be negative per token.
    "k3" (exp(-d) + d - 1 with d = log pi - log ref) is also unbiased but never negative, a steadier
    number to log (Schulman, "Approximating KL divergence").
    """
    log_ratio = logp.float() - ref_logp.float()
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1' or 'k3'")


def last_action_index(mask: Tensor) -> Tensor:
    """Index of the last counted action per row: the EOS token, or the last token of a truncated sample."""
    m = mask.bool()
    if not m.any(dim=1).all():
        raise ValueError("every row needs at least one action (a mask row is all zero)")
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).amax(dim=1)


def shaped_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token reward: -beta * KL at every action, plus the answer score at the last action.

    The sparse answer reward arrives only when the episode ends; the KL term keeps the policy near the
    SFT model at every step (Ziegler et al. 2019; Stiennon et al. 2020; ReFT).
    """
    rewards = -beta * _zero_outside(kl, mask)
    last = last_action_index(mask).unsqueeze(1)
    return rewards.scatter_add(1, last, scores.float().unsqueeze(1))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), returning ``(advantages, returns)``.

    Rewards and values are zeroed in the padding, so a short row's tail contributes delta = 0 and A = 0:
    the value after its last action is the terminal 0 and nothing leaks backwards from the padding.
    Inputs are detached: advantages and returns are targets, not something to differentiate.
    """
    r = _zero_outside(rewards.detach(), mask)
    v = _zero_outside(values.detach(), mask)
    next_values = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    deltas = r + gamma * next_values - v
    advantage = torch.zeros_like(v[:, 0])
    advantages = []
    for t in reversed(range(v.shape[1])):
        advantage = deltas[:, t] + gamma * lam * advantage
        advantages.append(advantage)
    adv = _zero_outside(torch.stack(advantages[::-1], dim=1), mask)
    return adv, adv + v


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over counted positions (all of them, or along ``dim``)."""
    m = mask.float()
    if dim is None:
        return _zero_outside(x, mask).sum() / m.sum()
    return _zero_outside(x, mask).sum(dim) / m.sum(dim)


def masked_sums(x: Tensor, mask: Tensor) -> Tensor:
    """``(count, sum, sum of squares)`` of ``x`` over counted positions, in float64.

    Three numbers that add across shards: all-reduce them, then ``whiten(..., sums=...)`` whitens every
    process's advantages with the global statistics.
    """
    m = mask.bool()
    xs = torch.where(m, x.double(), 0.0)
    return torch.stack([m.double().sum(), xs.sum(), (xs * xs).sum()])


def whiten(x: Tensor, mask: Tensor, sums: Tensor | None = None, eps: float = 1e-8, centre: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + eps) over counted positions, unbiased variance, 0 in the padding.

    The mean is not added back: whitened advantages are centred, so about half the actions are pushed
    down. ``centre=False`` only divides by the std: positive-only advantages stay >= 0 (re-centring would push
    down the samples the clamp left alone). ``sums`` (from ``masked_sums``, possibly all-reduced) gives the
    statistics; by default they come from ``x`` itself.
    """
    count, total, total_sq = (masked_sums(x, mask) if sums is None else sums.double()).unbind()
    mean = total / count
    var = ((total_sq - count * mean * mean) / (count - 1).clamp(min=1.0)).clamp(min=0.0)
    out = (x.double() - mean if centre else x.double()) * torch.rsqrt(var + eps)
    return _zero_outside(out, mask)


@dataclass(frozen=True)
class Aggregation:
    """How per-token losses become one number (``reft.loss_agg``).

    * ``sequence_mean`` (the ReFT reference): each sequence's token mean, then the mean over sequences, so every
      sample weighs the same and a short answer's tokens each weigh more than a long one's.
    * ``token_mean``: the mean over every counted token of the minibatch, so every token weighs the same.
    * ``constant`` (Dr. GRPO, Liu et al. 2025): the sum over tokens divided by sequences x ``max_len``, a
      constant, so the loss has no length bias in either direction.

    A process holding part of a minibatch passes the minibatch's ``n_sequences`` and ``n_tokens``, so its share
    is divided by the global count; without them the rows given are the whole minibatch.
    """

    kind: Literal["sequence_mean", "token_mean", "constant"] = "sequence_mean"
    n_sequences: int | None = None
    n_tokens: int | None = None
    max_len: int | None = None

    def __call__(self, per_token: Tensor, mask: Tensor) -> Tensor:
        if self.kind == "sequence_mean":
            return _mean_over_sequences(masked_mean(per_token, mask, dim=1), self.n_sequences)
        n_sequences = mask.shape[0] if self.n_sequences is None else self.n_sequences
        total = _zero_outside(per_token, mask).sum()
        if self.kind == "token_mean":
            return total / (mask.float().sum() if self.n_tokens is None else self.n_tokens)
        if self.kind == "constant":
            if self.max_len is None:
                raise ValueError("the constant aggregation needs max_len (the generation length limit)")
            return total / (n_sequences * self.max_len)
        raise ValueError(f"unknown loss aggregation {self.kind!r}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    n_sequences: int | None = None,
    aggregate: Aggregation | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate, aggregated over tokens and sequences by ``aggregate``.

    The default is the ReFT reference's per-sequence mean (see ``Aggregation``); ``n_sequences`` is that
    default's global minibatch size, kept for callers that pass only it.
    """
    aggregate = aggregate or Aggregation(n_sequences=n_sequences)
    log_ratio = logp.float() - old_logp.float()
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float = 0.2,
    n_sequences: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: the pessimistic max of the squared errors of the new and the clipped value.

    Clipping keeps the value head within ``clip_range`` of its rollout-time prediction per update, like
    the policy ratio. Aggregated as ``policy_loss`` by default (the per-sequence mean over ``n_sequences``),
    whatever ``reft.loss_agg`` says; computed in float32.
    """
    v, v_old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = v_old + (v - v_old).clamp(-clip_range, clip_range)
    unclipped = (v - ret).square()
    clipped = (v_clipped - ret).square()
    per_token = torch.maximum(unclipped, clipped)
    loss = 0.5 * Aggregation("sequence_mean", n_sequences)(per_token, mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def _mean_over_sequences(per_sequence: Tensor, n_sequences: int | None) -> Tensor:
    return per_sequence.mean() if n_sequences is None else per_sequence.sum() / n_sequences


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over counted tokens: 1 is a perfect critic, 0 a constant.

    Returns 0 when the returns do not vary, so the logged number is never nan.
    """
    with torch.no_grad():
        ret = returns.float()
        diff = ret - values.float()
        var_ret = masked_mean((ret - masked_mean(ret, mask)).square(), mask)
        var_diff = masked_mean((diff - masked_mean(diff, mask)).square(), mask)
        ev = 1.0 - var_diff / var_ret.clamp(min=torch.finfo(torch.float32).tiny)
        return torch.where(var_ret > 0, ev, torch.zeros_like(ev))


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, aggregate: Aggregation) -> Tensor:
    """The k3 KL estimate as a loss term (GRPO's ``kl_mode=loss``), aggregated like the policy loss.

    Differentiable through ``logp``: its gradient pulls the sampled tokens' probabilities back towards the
    reference, instead of the KL being a reward the advantages carry (``kl_mode=reward``, the paper's).
    """
    return aggregate(kl_penalty(logp, ref_logp, "k3"), mask)


# ----- critic-free advantages: one number per sample from its reward and its question's group -----------------


def _group_stats(scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: (sum of its group's scores, its group's size, the unbiased std of its group's scores)."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64, device=scores.device).index_add_(0, inverse, scores.double())
    mean = sums / counts
    squares = torch.zeros_like(sums).index_add_(0, inverse, (scores.double() - mean[inverse]).square())
    std = (squares / (counts - 1).clamp(min=1)).sqrt()
    return sums[inverse], counts[inverse].double(), std[inverse]


def _grpo(scores: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """(r - mean of its group) / (std of its group + eps): GRPO (Shao et al. 2024)."""
    sums, counts, std = _group_stats(scores, groups)
    return ((scores.double() - sums / counts) / (std + eps)).float()


def _rloo(scores: Tensor, groups: Tensor) -> Tensor:
    """r minus the mean of the other k-1 rewards of its question (Ahmadian et al. 2024)."""
    sums, counts, _ = _group_stats(scores, groups)
    return (scores.double() - (sums - scores.double()) / (counts - 1)).float()


def _batch_centred(scores: Tensor, groups: Tensor) -> Tensor:
    """r minus the mean reward of the whole step, questions ignored (REINFORCE++, Hu 2025: one baseline for the
    batch, so k = 1 works; the whitening that follows would centre the tokens anyway, but this sets the sign
    ``reft.positive_only`` reads)."""
    return (scores.double() - scores.double().mean()).float()


def _centred(scores: Tensor, groups: Tensor) -> Tensor:
    """r minus the mean of its group (REINFORCE with a group baseline; Dr. GRPO without the std)."""
    sums, counts, _ = _group_stats(scores, groups)
    return (scores.double() - sums / counts).float()


@dataclass(frozen=True)
class EstimatorSpec:
    """What an advantage estimator needs and does; ``sequence`` is None for GAE (per token, with a critic)."""

    sequence: Callable[[Tensor, Tensor], Tensor] | None
    needs_critic: bool = False
    needs_groups: bool = True
    whiten: bool = False
    """Whiten the token advantages over the batch (``reinforce_baseline``; GAE follows ``reft.whiten_advantages``)."""
    loss_agg: Literal["sequence_mean", "token_mean", "constant"] = "sequence_mean"
    """The aggregation ``reft.loss_agg=auto`` picks."""


ESTIMATORS: dict[str, EstimatorSpec] = {
    "gae": EstimatorSpec(None, needs_critic=True, needs_groups=False),
    "grpo": EstimatorSpec(_grpo),
    "rloo": EstimatorSpec(_rloo),
    "reinforce": EstimatorSpec(_batch_centred, needs_groups=False, whiten=True),
    "reinforce_baseline": EstimatorSpec(_centred, whiten=True),
    "dr_grpo": EstimatorSpec(_centred, loss_agg="constant"),
}
"""The one registry of advantage estimators (``reft.advantage``), as veRL's ``AdvantageEstimator``."""


def sequence_advantages(estimator: str, scores: Tensor, groups: Tensor) -> Tensor:
    """One advantage per sample [N] from its score and the scores of the samples of the same question.

    ``groups[i]`` is the question of row ``i``; groups may sit anywhere in the batch and differ in size, but a
    group of one has no baseline (rloo divides by k - 1 = 0), so the caller requires k >= 2 where ``needs_groups``.
    ``scores`` must hold every row of the step (``reinforce`` centres on their mean).
    """
    spec = ESTIMATORS[estimator]
    if spec.sequence is None:
        raise ValueError(f"{estimator!r} is not a critic-free estimator")
    return spec.sequence(scores.float(), groups)


def critic_free_advantages(seq_adv: Tensor, mask: Tensor, kl: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """Token advantages [N, R] from sequence advantages: the same value on every counted token of a sample,
    minus (with the KL folded into the reward) beta times the KL still to come from that token on.

    With gamma = 1 the return of token t under the shaped reward is the score minus beta * sum_{t' >= t} KL_t';
    the score part is replaced by its baselined ``seq_adv`` (OpenRLHF's reinforce / rloo with the KL in the
    reward). Without ``kl`` every token of a sample gets ``seq_adv``.
    """
    adv = seq_adv.float().unsqueeze(1).expand_as(mask.float())
    if kl is not None and beta:
        penalty = _zero_outside(kl, mask)
        to_go = penalty.flip(1).cumsum(1).flip(1)
        adv = adv - beta * to_go
    return _zero_outside(adv, mask)
