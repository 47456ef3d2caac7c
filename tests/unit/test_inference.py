"""Inference-time metrics on sampled chains: pass@k, majority voting, reranking, the curves over k."""

import math
from itertools import combinations

import pytest

from reftkit.evaluation.accuracy import (
    inference_curves,
    ks_up_to,
    majority_vote,
    pass_at_k,
    rerank_pick,
    vote_is_correct,
)
from reftkit.evaluation.sampling import Sample


def sample(qid: str, i: int, answer, outcome: str, score: float | None = None) -> Sample:
    return Sample(qid, i, f"completion {i}", answer, outcome, -1.0, 5, "3", score)


@pytest.mark.parametrize("n,c,k", [(5, 2, 2), (4, 1, 1), (6, 3, 3), (3, 0, 2), (5, 5, 1), (7, 2, 6)])
def test_pass_at_k_is_the_fraction_of_k_subsets_holding_a_correct_sample(n, c, k):
    correct = set(range(c))
    subsets = list(combinations(range(n), k))
    expected = sum(bool(correct & set(s)) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_closed_form_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 3, 8) == 1.0  # fewer than k wrong samples: any k include a correct one
    assert pass_at_k(100, 1, 100) == 1.0


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_counts_and_skips_missing_answers():
    assert majority_vote([1.0, None, None, None, 2.0, 2.0]) == 2.0
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["b", "a", "b"]) == "b"


def test_majority_vote_tie_goes_to_the_answer_seen_first():
    assert majority_vote([3.0, 2.0, 2.0, 3.0]) == 3.0
    assert majority_vote([None, 2.0, 3.0, 3.0, 2.0]) == 2.0
    assert majority_vote([5.0, 4.0, 6.0]) == 5.0


def test_vote_is_correct_uses_the_winning_answers_outcome():
    group = [sample("q", 0, 3.0, "correct"), sample("q", 1, 4.0, "wrong"), sample("q", 2, 4.0, "wrong")]
    assert not vote_is_correct(group)
    assert vote_is_correct(group[:1] + [sample("q", 3, None, "error")] * 5)  # errors do not vote
    assert not vote_is_correct([sample("q", 0, None, "no_answer")])


def test_rerank_picks_the_highest_scoring_valid_answer():
    group = [
        sample("q", 0, 4.0, "wrong", 0.6),
        sample("q", 1, None, "error", 0.99),  # the best score but no answer: never picked
        sample("q", 2, 3.0, "correct", 0.8),
        sample("q", 3, 5.0, "wrong", 0.8),  # tie with sample 2: the first wins
    ]
    assert rerank_pick(group).sample == 2
    assert rerank_pick([sample("q", 0, None, "error", 0.9)]) is None


def test_rerank_needs_scores():
    with pytest.raises(ValueError, match="no reward-model score"):
        rerank_pick([sample("q", 0, 3.0, "correct")])


def test_ks_up_to():
    assert ks_up_to(1) == [1]
    assert ks_up_to(8) == [1, 2, 4, 8]
    assert ks_up_to(100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_curves_at_full_k_and_pass_at_one():
    groups = {
        "a": [sample("a", i, a, o, s) for i, (a, o, s) in enumerate(
            [(3.0, "correct", 0.1), (4.0, "wrong", 0.9), (4.0, "wrong", 0.2), (3.0, "correct", 0.3)])],
        "b": [sample("b", i, a, o, s) for i, (a, o, s) in enumerate(
            [(None, "error", 0.5), (7.0, "correct", 0.7), (1.0, "wrong", 0.1), (2.0, "wrong", 0.2)])],
    }  # fmt: skip
    curves = inference_curves(groups, draws=50, seed=1, rerank=True)
    assert curves["k"] == [1, 2, 4]
    assert curves["pass"][0] == pytest.approx((2 / 4 + 1 / 4) / 2)  # pass@1 = mean fraction correct
    assert curves["pass"][-1] == 1.0
    # k = n: a votes 3.0 (tie with 4.0, 3.0 seen first) -> right; b: three single votes, 7.0 first -> right
    assert curves["vote"][-1] == 1.0
    # k = n: a picks 4.0 (score 0.9) -> wrong; b picks 7.0 (0.7) -> right
    assert curves["rerank"][-1] == 0.5
    # vote@1 and rerank@1 are a single random sample: in expectation the mean fraction correct
    assert curves["vote"][0] == pytest.approx(curves["pass"][0], abs=0.15)
    assert math.isclose(curves["vote"][0], curves["rerank"][0])


def test_curves_need_equal_sample_counts():
    groups = {"a": [sample("a", 0, 1.0, "wrong")], "b": [sample("b", i, 1.0, "wrong") for i in range(2)]}
    with pytest.raises(ValueError, match="same number of samples"):
        inference_curves(groups)
