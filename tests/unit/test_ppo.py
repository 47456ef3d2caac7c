"""Hand-checked golden values for reftkit.rl.ppo; the arithmetic is in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from reftkit.rl.ppo import (
    explained_variance,
    gae,
    kl_penalty,
    last_action_index,
    logprobs_from_logits,
    masked_mean,
    masked_sums,
    policy_loss,
    shaped_rewards,
    token_logprobs,
    value_loss,
    whiten,
)

# Row 0 emits EOS at t=2 of R=4 (t=3 is padding); row 1 is truncated, all 4 actions count.
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_logprobs_from_logits_matches_hand_softmax():
    # logits (0, ln 2, ln 3) -> softmax = (1, 2, 3) / 6.
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)]] * 2])  # [B=1, R=2, V=3]
    tokens = torch.tensor([[2, 0]])
    close(logprobs_from_logits(logits, tokens), [[math.log(3 / 6), math.log(1 / 6)]])


def test_logprobs_from_logits_bf16_in_float32_out():
    # Uniform logits over 3 tokens: log(1/3) whichever token; computed in float32.
    out = logprobs_from_logits(torch.zeros(1, 2, 3, dtype=torch.bfloat16), torch.tensor([[1, 2]]))
    assert out.dtype == torch.float32
    close(out, [[-math.log(3.0)] * 2])


def test_kl_k1_and_k3_hand_values():
    # logp = (ln 1/2, ln 1/4), ref = (ln 1/4, ln 1/2): d = logp - ref = (ln 2, -ln 2).
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    ln2 = math.log(2.0)
    close(kl_penalty(logp, ref, "k1"), [ln2, -ln2])
    # k3 = exp(ref - logp) - (ref - logp) - 1: exp(-ln2) + ln2 - 1 = ln2 - 0.5; exp(ln2) - ln2 - 1 = 1 - ln2.
    k3 = kl_penalty(logp, ref, "k3")
    close(k3, [ln2 - 0.5, 1.0 - ln2])
    assert (k3 >= 0).all()


def test_kl_zero_when_policies_agree_and_unknown_kind_rejected():
    logp = torch.log(torch.tensor([0.1, 0.7, 0.2]))
    close(kl_penalty(logp, logp, "k1"), [0.0, 0.0, 0.0])
    close(kl_penalty(logp, logp, "k3"), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(logp, logp, "k2")


def test_last_action_index_eos_truncated_and_bool_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert last_action_index(mask).tolist() == [2, 3, 0]
    assert last_action_index(MASK).tolist() == [2, 3]


def test_last_action_index_rejects_empty_row():
    with pytest.raises(ValueError, match="at least one action"):
        last_action_index(t([1, 1, 0], [0, 0, 0]))


def test_shaped_rewards_score_at_eos_and_at_last_truncated_token():
    kl = t([0.1, 0.2, -0.1, 0.7], [0.3, 0.0, 0.1, 0.2])
    scores = torch.tensor([1.0, 0.1])
    # beta = 0.5 -> -0.5 * kl, padding zeroed:
    # row 0: (-0.05, -0.1, 0.05 + score 1.0 at the EOS index 2, 0 (padding, kl 0.7 ignored))
    # row 1: (-0.15, 0.0, -0.05, -0.1 + score 0.1 at the last index 3)
    rewards = shaped_rewards(scores, kl, MASK, beta=0.5)
    close(rewards, [[-0.05, -0.1, 1.05, 0.0], [-0.15, 0.0, -0.05, 0.0]])


# GAE, gamma = 1, lam = 0.95, so A_t = delta_t + 0.95 * A_{t+1}, delta_t = r_t + V_{t+1} - V_t.
# Row 0 (ends at t=2; padding has a garbage value 9 and reward 5 that must be ignored):
#   r = (0, 0, 1), V = (0.5, 1.0, 0.5), V after t=2 is 0 (terminal)
#   t=2: delta = 1 + 0 - 0.5 = 0.5                   A = 0.5
#   t=1: delta = 0 + 0.5 - 1.0 = -0.5                A = -0.5 + 0.95 * 0.5 = -0.025
#   t=0: delta = 0 + 1.0 - 0.5 = 0.5                 A = 0.5 + 0.95 * -0.025 = 0.47625
#   returns = A + V = (0.97625, 0.975, 1.0)
# Row 1 (truncated, 4 actions):
#   r = (0, 0.5, 0, 1), V = (1.0, 0.5, 0.5, 1.0)
#   t=3: delta = 1 + 0 - 1.0 = 0                     A = 0
#   t=2: delta = 0 + 1.0 - 0.5 = 0.5                 A = 0.5
#   t=1: delta = 0.5 + 0.5 - 0.5 = 0.5               A = 0.5 + 0.95 * 0.5 = 0.975
#   t=0: delta = 0 + 0.5 - 1.0 = -0.5                A = -0.5 + 0.95 * 0.975 = 0.42625
#   returns = (1.42625, 1.475, 1.0, 1.0)
GAE_REWARDS = t([0.0, 0.0, 1.0, 5.0], [0.0, 0.5, 0.0, 1.0])
GAE_VALUES = t([0.5, 1.0, 0.5, 9.0], [1.0, 0.5, 0.5, 1.0])
ROW0_ADV = [0.47625, -0.025, 0.5]
ROW1_ADV = [0.42625, 0.975, 0.5, 0.0]


def test_gae_hand_values_for_eos_and_truncated_rows():
    adv, ret = gae(GAE_REWARDS, GAE_VALUES, MASK, gamma=1.0, lam=0.95)
    close(adv, [[*ROW0_ADV, 0.0], ROW1_ADV])
    close(ret, [[0.97625, 0.975, 1.0, 0.0], [1.42625, 1.475, 1.0, 1.0]])
    assert adv[0, 3].item() == 0.0 and ret[0, 3].item() == 0.0  # exactly 0 after the row's end


def test_gae_padding_does_not_change_a_short_row():
    # Row 0 alone with R = 3 (no padding at all) gives the same advantages as inside the padded batch.
    adv_alone, _ = gae(GAE_REWARDS[:1, :3], GAE_VALUES[:1, :3], torch.ones(1, 3))
    adv_batch, _ = gae(GAE_REWARDS, GAE_VALUES, MASK)
    close(adv_alone, [ROW0_ADV])
    close(adv_batch[:1, :3], adv_alone)


def test_gae_terminal_value_is_zero():
    # One action, r = 1, V = 0.3; the next slot is padding with V = 100, which must not be bootstrapped:
    # A = 1 + 0 - 0.3 = 0.7, return = 1.0.
    adv, ret = gae(t([1.0, 0.0]), t([0.3, 100.0]), t([1.0, 0.0]))
    close(adv, [[0.7, 0.0]])
    close(ret, [[1.0, 0.0]])


def test_gae_discount_with_lambda_one_is_monte_carlo():
    # gamma = 0.9, lam = 1: r = (0, 1), V = (0.5, 0.5).
    # t=1: delta = 1 - 0.5 = 0.5, A = 0.5;  t=0: delta = 0.9 * 0.5 - 0.5 = -0.05, A = -0.05 + 0.9 * 0.5 = 0.4
    # = discounted return 0.9 * 1 minus V_0 0.5.
    adv, ret = gae(t([0.0, 1.0]), t([0.5, 0.5]), t([1.0, 1.0]), gamma=0.9, lam=1.0)
    close(adv, [[0.4, 0.5]])
    close(ret, [[0.9, 1.0]])


# Whitening batch: counted values 1..7 (padding 100). n = 7, sum = 28, mean = 4,
# squared deviations 9 + 4 + 1 + 0 + 1 + 4 + 9 = 28, unbiased var = 28 / 6 = 14 / 3.
WX = t([1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, 7.0])


def test_masked_mean_all_and_per_row():
    # all: 28 / 7 = 4; row 0: (1 + 2 + 3) / 3 = 2; row 1: (4 + 5 + 6 + 7) / 4 = 5.5.
    close(masked_mean(WX, MASK), 4.0)
    close(masked_mean(WX, MASK, dim=1), [2.0, 5.5])


def test_masked_sums_hand_values():
    # row 0: count 3, sum 6, squares 1 + 4 + 9 = 14; row 1: 4, 22, 16 + 25 + 36 + 49 = 126.
    close(masked_sums(WX[:1], MASK[:1]), [3.0, 6.0, 14.0])
    sums = masked_sums(WX, MASK)
    assert sums.dtype == torch.float64
    close(sums, [7.0, 28.0, 140.0])


def test_whiten_hand_value_zero_mean_unit_unbiased_var_zero_padding():
    w = whiten(WX, MASK)
    # (1 - 4) / sqrt(14 / 3) = -3 / 2.1602469 = -1.3887301
    close(w[0, 0], -1.3887301, atol=1e-5)
    assert w[0, 3].item() == 0.0
    counted = w[MASK.bool()]
    close(counted.mean(), 0.0, atol=1e-6)
    close(counted.var(unbiased=True), 1.0, atol=1e-6)


def test_whiten_with_summed_shard_statistics_equals_whole_batch():
    # Two "processes" each hold one row; adding their (count, sum, sumsq) is what all-reduce does.
    sums = masked_sums(WX[:1], MASK[:1]) + masked_sums(WX[1:], MASK[1:])
    sharded = torch.cat([whiten(WX[:1], MASK[:1], sums=sums), whiten(WX[1:], MASK[1:], sums=sums)])
    close(sharded, whiten(WX, MASK))


def test_policy_loss_at_ratio_one_is_minus_sequence_mean_advantage():
    adv = t([1.0, 2.0, 3.0, 50.0], [-1.0, 0.0, 1.0, 2.0])
    logp = t([-1.0, -2.0, -0.5, -3.0], [-0.1, -0.2, -0.3, -0.4])
    loss, stats = policy_loss(logp, logp.clone(), adv, MASK)
    # per-token loss = -A; row 0: -(1 + 2 + 3) / 3 = -2; row 1: -(-1 + 0 + 1 + 2) / 4 = -0.5; mean -1.25.
    close(loss, -1.25)
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(stats["ratio_mean"], 1.0)


def test_policy_loss_positive_advantage_ratio_clipped_at_upper_bound():
    # Token 0: ratio 1.5, A = 2: max(-2 * 1.5, -2 * 1.2) = max(-3, -2.4) = -2.4 (clipped).
    # Token 1: ratio 1,   A = 1: -1 (not clipped).  Loss = (-2.4 - 1) / 2 = -1.7, clipfrac 1/2.
    old = t([-1.0, -1.0])
    logp = old + t([math.log(1.5), 0.0])
    loss, stats = policy_loss(logp, old, t([2.0, 1.0]), t([1.0, 1.0]), clip_eps=0.2)
    close(loss, -1.7)
    close(stats["clipfrac"], 0.5)
    # approx_kl = (0.5 * ln(1.5)^2 + 0) / 2 = 0.5 * 0.4054651^2 / 2 = 0.0411004
    close(stats["approx_kl"], 0.0411004, atol=1e-6)
    close(stats["ratio_mean"], 1.25)


def test_policy_loss_negative_advantage_ratio_clipped_at_lower_bound():
    # ratio 0.5, A = -1: max(1 * 0.5, 1 * 0.8) = 0.8 (clipped at 1 - 0.2).
    old = t([-2.0])
    loss, stats = policy_loss(old + math.log(0.5), old, t([-1.0]), t([1.0]))
    close(loss, 0.8)
    close(stats["clipfrac"], 1.0)


def test_policy_loss_pessimistic_side_is_not_clipped():
    # ratio 1.5, A = -1: max(1.5, 1.2) = 1.5, the unclipped term wins, so no clipping is counted.
    old = t([-2.0])
    loss, stats = policy_loss(old + math.log(1.5), old, t([-1.0]), t([1.0]))
    close(loss, 1.5)
    close(stats["clipfrac"], 0.0)


def test_policy_loss_clipped_token_gets_no_gradient():
    # Same two tokens as the upper-bound case: d loss / d logp = 0 for the clipped token,
    # and -A * ratio / 2 = -1 * 1 / 2 = -0.5 for the unclipped one (per-sequence mean over 2 tokens).
    old = t([-1.0, -1.0])
    logp = (old + t([math.log(1.5), 0.0])).requires_grad_()
    loss, _ = policy_loss(logp, old, t([2.0, 1.0]), t([1.0, 1.0]))
    loss.backward()
    close(logp.grad, [[0.0, -0.5]])


def test_policy_loss_is_a_mean_over_sequences_not_tokens():
    # Row 0 has one action with A = 1; row 1 has four actions with A = 0.
    # Per-sequence: mean(-1, 0) = -0.5.  (A token mean would give -1 / 5 = -0.2.)
    mask = t([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    adv = t([1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    logp = torch.zeros(2, 4)
    loss, _ = policy_loss(logp, logp, adv, mask)
    close(loss, -0.5)


def test_value_loss_clipped_and_unclipped_cases():
    # clip_range 0.2, old value 1.0 everywhere.
    # row 0 t=0: v = 1.5, ret = 2.0: v_clip = 1.2; max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64) = 0.64, clipped
    # row 1 t=0: v = 1.1, ret = 2.0: inside the range, v_clip = 1.1; both 0.81, not strictly larger
    # row 1 t=1: v = 1.5, ret = 1.0: v_clip = 1.2; max(0.25, 0.04) = 0.25, the unclipped error wins
    # row means: 0.64 and (0.81 + 0.25) / 2 = 0.53; loss = 0.5 * (0.64 + 0.53) / 2 = 0.2925
    mask = t([1.0, 0.0], [1.0, 1.0])
    values = t([1.5, 7.0], [1.1, 1.5])
    returns = t([2.0, -7.0], [2.0, 1.0])
    loss, stats = value_loss(values, torch.ones(2, 2), returns, mask, clip_range=0.2)
    close(loss, 0.2925)
    close(stats["vf_clipfrac"], 1 / 3)


def test_value_loss_bf16_inputs_computed_in_float32():
    # v = 1.5, old = 1.0, ret = 2.0 (exact in bf16): clipped error 0.64, loss 0.5 * 0.64 = 0.32.
    bf = dict(dtype=torch.bfloat16)
    loss, stats = value_loss(
        torch.tensor([[1.5]], **bf), torch.tensor([[1.0]], **bf), torch.tensor([[2.0]], **bf), t([1.0])
    )
    assert loss.dtype == torch.float32
    close(loss, 0.32)
    close(stats["vf_clipfrac"], 1.0)


def test_explained_variance_perfect_hand_and_constant_returns():
    mask = t([1.0, 1.0, 1.0, 0.0])
    returns = t([1.0, 2.0, 3.0, 50.0])
    close(explained_variance(returns.clone(), returns, mask), 1.0)
    # values (1, 2, 2): residuals (0, 0, 1), mean 1/3, population var ((1/3)^2 * 2 + (2/3)^2) / 3 = 2/9;
    # Var(returns) = (1 + 0 + 1) / 3 = 2/3; EV = 1 - (2/9) / (2/3) = 2/3.
    close(explained_variance(t([1.0, 2.0, 2.0, -50.0]), returns, mask), 2 / 3)
    # Constant returns: defined as 0, not nan.
    close(explained_variance(t([0.0, 1.0, 2.0, 0.0]), t([1.0, 1.0, 1.0, 9.0]), mask), 0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_logprobs_equal_the_full_log_softmax_and_its_gradient(temperature):
    """The chunked path (chunks of 7 positions that do not divide 3 x 11) against log_softmax over the vocabulary,
    float32: values and gradients to 1e-5."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 11, 500)).requires_grad_()
    tokens = torch.randint(0, 500, (3, 11))
    weights = torch.randn(3, 11)
    full = logprobs_from_logits(logits / temperature, tokens)
    chunked = token_logprobs(logits, tokens, temperature, chunk=7)
    close(chunked, full.detach(), atol=1e-5)
    (want,) = torch.autograd.grad((full * weights).sum(), logits)
    (got,) = torch.autograd.grad((chunked * weights).sum(), logits)
    close(got, want, atol=1e-5)


def test_chunked_token_logprobs_take_bf16_logits_give_float32_and_a_bf16_gradient():
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16, requires_grad=True)
    out = token_logprobs(logits, torch.tensor([[1, 3]]))
    assert out.dtype == torch.float32
    close(out, [[math.log(1 / 4), math.log(1 / 4)]])
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    # d log p(token) / d logits = onehot - softmax = onehot - 1/4 for each position
    close(logits.grad.float(), [[[-0.25, 0.75, -0.25, -0.25], [-0.25, -0.25, -0.25, 0.75]]])
