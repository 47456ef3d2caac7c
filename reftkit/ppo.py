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

import torch
from torch import Tensor


def _zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` in float32 with padding set to 0 (``where``, so garbage or inf in padding cannot leak)."""
    return torch.where(mask.bool(), x.float(), 0.0)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(token) per position; log_softmax in float32 because bf16 logits lose the small log-probs."""
    logp = logits.float().log_softmax(dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


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


def whiten(x: Tensor, mask: Tensor, sums: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over counted positions, unbiased variance, 0 in the padding.

    The mean is not added back: whitened advantages are centred, so about half the actions are pushed
    down. ``sums`` (from ``masked_sums``, possibly all-reduced) gives the statistics; by default they
    come from ``x`` itself.
    """
    count, total, total_sq = (masked_sums(x, mask) if sums is None else sums.double()).unbind()
    mean = total / count
    var = ((total_sq - count * mean * mean) / (count - 1).clamp(min=1.0)).clamp(min=0.0)
    out = (x.double() - mean) * torch.rsqrt(var + eps)
    return _zero_outside(out, mask)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    n_sequences: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate, averaged per sequence over its tokens, then over sequences.

    The per-sequence mean is the ReFT reference's aggregation: every sample weighs the same, so a short
    answer's tokens each weigh more than a long answer's. ``n_sequences`` divides the sum over these rows
    instead of their count: a process holding part of a minibatch passes the minibatch's size.
    """
    log_ratio = logp.float() - old_logp.float()
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    loss = _mean_over_sequences(masked_mean(per_token, mask, dim=1), n_sequences)
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
    the policy ratio. Same per-sequence aggregation (and ``n_sequences``) as ``policy_loss``; computed in float32.
    """
    v, v_old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = v_old + (v - v_old).clamp(-clip_range, clip_range)
    unclipped = (v - ret).square()
    clipped = (v_clipped - ret).square()
    per_token = torch.maximum(unclipped, clipped)
    loss = 0.5 * _mean_over_sequences(masked_mean(per_token, mask, dim=1), n_sequences)
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
