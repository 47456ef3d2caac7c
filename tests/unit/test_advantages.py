"""Hand-computed values for the critic-free advantage estimators, the loss aggregations and the k3 KL loss
(reftkit.rl.ppo); the arithmetic is in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from reftkit.config.loading import load_config
from reftkit.config.schema import ConfigError
from reftkit.rl.ppo import (
    ESTIMATORS,
    Aggregation,
    critic_free_advantages,
    kl_loss,
    policy_loss,
    sequence_advantages,
)

# Two questions, k = 3 samples each: rewards 1 / 0 / 0.1 (correct / no answer / wrong number) and 1 / 1 / 0.
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])
SCORES = torch.tensor([1.0, 0.0, 0.1, 1.0, 1.0, 0.0])
# Group 0: mean 1.1/3 = 0.366667, deviations (0.633333, -0.366667, -0.266667), unbiased variance
# (0.401111 + 0.134444 + 0.071111) / 2 = 0.303333, std 0.550757.
# Group 1: mean 2/3, deviations (1/3, 1/3, -2/3), unbiased variance (1/9 + 1/9 + 4/9) / 2 = 1/3, std 0.577350.
CENTRED = [0.633333, -0.366667, -0.266667, 1 / 3, 1 / 3, -2 / 3]


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_grpo_divides_the_centred_reward_by_the_group_std():
    s0, s1 = 0.550757, math.sqrt(1 / 3)
    expected = [0.633333 / s0, -0.366667 / s0, -0.266667 / s0, (1 / 3) / s1, (1 / 3) / s1, (-2 / 3) / s1]
    close(sequence_advantages("grpo", SCORES, GROUPS), expected)  # 1.149933, -0.665750, -0.484182, 0.57735, ...


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # 1 - (0 + 0.1)/2 = 0.95; 0 - (1 + 0.1)/2 = -0.55; 0.1 - (1 + 0)/2 = -0.4; 1 - (1 + 0)/2 = 0.5 (twice); 0 - 1 = -1
    close(sequence_advantages("rloo", SCORES, GROUPS), [0.95, -0.55, -0.4, 0.5, 0.5, -1.0])
    # and RLOO is the centred reward scaled by k / (k - 1)
    close(sequence_advantages("rloo", SCORES, GROUPS), [1.5 * c for c in CENTRED])


def test_reinforce_baseline_and_dr_grpo_centre_without_the_std():
    close(sequence_advantages("reinforce_baseline", SCORES, GROUPS), CENTRED)
    close(sequence_advantages("dr_grpo", SCORES, GROUPS), CENTRED)
    assert ESTIMATORS["reinforce_baseline"].whiten and not ESTIMATORS["dr_grpo"].whiten
    assert ESTIMATORS["dr_grpo"].loss_agg == "constant" and ESTIMATORS["grpo"].loss_agg == "sequence_mean"


def test_reinforce_centres_on_the_whole_step_and_ignores_the_questions():
    # mean of the six rewards 3.1 / 6 = 0.516667: 1 - 0.516667 = 0.483333, 0 - 0.516667, 0.1 - 0.516667 = -0.416667
    expected = [0.483333, -0.516667, -0.416667, 0.483333, 0.483333, -0.516667]
    close(sequence_advantages("reinforce", SCORES, GROUPS), expected)
    close(sequence_advantages("reinforce", SCORES, torch.arange(6)), expected)  # one sample per question: the same
    assert ESTIMATORS["reinforce"].whiten and not ESTIMATORS["reinforce"].needs_groups


def test_groups_are_found_by_question_not_by_position():
    # the same samples interleaved (as rows split across processes would be gathered) give the same advantages
    order = torch.tensor([0, 3, 1, 4, 2, 5])
    for name in ("grpo", "rloo", "reinforce", "reinforce_baseline", "dr_grpo"):
        close(sequence_advantages(name, SCORES[order], GROUPS[order]), sequence_advantages(name, SCORES, GROUPS)[order])


def test_a_group_of_equal_rewards_has_no_advantage():
    scores, groups = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0]), torch.tensor([7, 7, 7, 2, 2])
    for name in ("grpo", "rloo", "reinforce_baseline", "dr_grpo"):
        adv = sequence_advantages(name, scores, groups)
        close(adv[:3], [0.0, 0.0, 0.0])
        assert adv[3] > 0 > adv[4]


def test_gae_is_not_a_sequence_estimator():
    assert ESTIMATORS["gae"].needs_critic and not ESTIMATORS["gae"].needs_groups
    with pytest.raises(ValueError, match="critic-free"):
        sequence_advantages("gae", SCORES, GROUPS)


MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def test_critic_free_token_advantages_carry_the_kl_still_to_come():
    seq = torch.tensor([0.5, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.0, 0.0, 0.1]])  # 9.0 sits in the padding: ignored
    # no KL: the sample's advantage on each counted token, 0 in the padding
    close(critic_free_advantages(seq, MASK), [[0.5, 0.5, 0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    # beta 0.1, KL to go: row 0 (0.6, 0.5, 0.3), row 1 (0.5, 0.1, 0.1, 0.1)
    close(
        critic_free_advantages(seq, MASK, kl, beta=0.1),
        [[0.44, 0.45, 0.47, 0.0], [-1.05, -1.01, -1.01, -1.01]],
    )


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, 7.0]])  # 100 is padding
    close(Aggregation("sequence_mean")(per_token, MASK), 3.75)  # row means 2 and 5.5
    close(Aggregation("token_mean")(per_token, MASK), 4.0)  # (6 + 22) / 7 tokens
    close(Aggregation("constant", max_len=5)(per_token, MASK), 2.8)  # 28 / (2 sequences x 5)
    # a process holding these 2 rows of a minibatch of 4 sequences and 14 tokens divides by the global counts
    close(Aggregation("sequence_mean", n_sequences=4)(per_token, MASK), 1.875)
    close(Aggregation("token_mean", n_sequences=4, n_tokens=14)(per_token, MASK), 2.0)
    close(Aggregation("constant", n_sequences=4, max_len=5)(per_token, MASK), 1.4)
    with pytest.raises(ValueError, match="max_len"):
        Aggregation("constant")(per_token, MASK)


def test_policy_loss_at_ratio_one_is_minus_the_aggregated_advantage():
    adv = torch.tensor([[1.0, 2.0, 3.0, 0.0], [-4.0, -5.0, -6.0, -7.0]])
    logp = torch.zeros(2, 4)
    for kind, expected in (("sequence_mean", -(2.0 - 5.5) / 2), ("token_mean", -(6.0 - 22.0) / 7)):
        loss, _ = policy_loss(logp, logp, adv, MASK, aggregate=Aggregation(kind))
        close(loss, expected)
    loss, _ = policy_loss(logp, logp, adv, MASK, aggregate=Aggregation("constant", max_len=8))
    close(loss, 16.0 / 16)  # -(6 - 22) / (2 x 8)


def test_kl_loss_is_the_aggregated_k3_and_pulls_towards_the_reference():
    # logp = (ln 1/2, ln 1/4), ref = (ln 1/4, ln 1/2): k3 = (ln2 - 0.5, 1 - ln2), mean 0.25
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss = kl_loss(logp, ref, torch.ones(1, 2), Aggregation("token_mean"))
    close(loss, 0.25)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): (1 - 1/2, 1 - 2) / 2 tokens -> push the first down, the second up
    close(logp.grad, [[0.25, -0.5]])


def test_group_estimators_need_several_samples_per_question():
    with pytest.raises(ConfigError, match="samples_per_question >= 2"):
        load_config("default", None, ["reft.samples_per_question=1", "reft.questions_per_step=32"])  # rloo, k=1
    config = load_config("default", None, ["reft.advantage=rloo", "reft.samples_per_question=4"])
    assert config.reft.advantage == "rloo"
    with pytest.raises(ConfigError, match="not one of"):
        load_config("default", None, ["reft.loss_agg=per_token"])
    with pytest.raises(ConfigError, match="no value head"):
        overrides = ["reft.advantage=grpo", "reft.value_warmup_steps=1"]
        load_config("default", None, overrides)
    assert load_config("default").reft.positive_only  # the default preset's choice (docs/results-notes.md)
    assert not load_config(None).reft.positive_only  # the library's default: plain estimators
    k1 = ["reft.advantage=reinforce", "reft.samples_per_question=1", "reft.questions_per_step=32"]
    assert load_config("default", None, k1).reft.samples_per_question == 1  # REINFORCE++ has no groups to compare
    gae = ["reft.advantage=gae", "reft.samples_per_question=1", "reft.questions_per_step=32"]  # README: the paper back
    assert load_config("default", None, gae).reft.advantage == "gae"
