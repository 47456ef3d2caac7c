"""PPO end to end raises the reward it is given: the micro pipeline, with ReFT's grader replaced by one that pays
1 for a completion of at most 40 characters and 0.1 otherwise, a reward an untrained model can learn (where to
stop). Over 30 PPO steps at a high learning rate (3e-4, so that it takes seconds), the sampled reward of the
last 10 steps must clearly exceed that of the first 10, with the value head at the policy's learning rate (the
paper) and at its own, higher one, whose explained variance must then rise above zero.

The critic-free estimators (GRPO, RLOO, REINFORCE++, REINFORCE with a group baseline, Dr. GRPO; one PPO pass a
step at lr 1e-3) must raise it too, and with their advantage's sign flipped (the same run, the estimator's output
negated) the reward must not rise: the test fails on the sign error it is there to catch.

A sign error, a mask or GAE misalignment, or advantages that do not reach the policy would leave the reward flat
or lower it; the pure functions are checked by hand in tests/unit/test_ppo.py and test_advantages.py, this is the
wiring.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest

import reftkit.trainers.stepwise as stepwise
from reftkit.config.loading import load_config
from reftkit.pipeline import run_pipeline
from reftkit.reward.answers import Graded, Outcome
from reftkit.rl import ppo

pytestmark = pytest.mark.integration


def short_completion_reward(problems, completions, *args, **kwargs):
    return [
        Graded(Outcome.CORRECT, None, 1.0) if len(text) <= 40 else Graded(Outcome.WRONG, None, 0.1)
        for text in completions
    ]


def reft_records(out: Path, overrides: list[str], flip: str | None = None) -> list[dict]:
    """The ``reft`` records of a micro run on the short-completion reward; ``flip`` names an estimator whose
    advantages are negated for the run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stepwise, "grade_batch", short_completion_reward)
        if flip is not None:
            spec = ppo.ESTIMATORS[flip]
            flipped = dataclasses.replace(spec, sequence=lambda scores, groups: -spec.sequence(scores, groups))
            patch.setitem(ppo.ESTIMATORS, flip, flipped)
        fast = ["methods=reft", "reft.epochs=10", "reft.lr=3e-4", "reft.eval_every=1000"]
        config = load_config("micro", None, [*fast, *overrides])
        run_pipeline(config, out, overwrite=True, command="pytest ppo learns")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == "reft"]


@pytest.mark.parametrize("value_lr", [None, 3e-3])
def test_ppo_raises_a_learnable_reward(tmp_path, value_lr):
    overrides = [] if value_lr is None else [f"reft.value_lr={value_lr}"]
    reft = reft_records(tmp_path / "run", overrides)
    assert len(reft) == 30
    first = statistics.mean(r["reward"] for r in reft[:10])
    last = statistics.mean(r["reward"] for r in reft[-10:])
    assert last > first + 0.2, (first, last)  # measured: 0.21 -> 0.70 (value_lr None), 0.21 -> 0.61 (3e-3)
    if value_lr is not None:
        assert statistics.mean(r["explained_variance"] for r in reft[-10:]) > 0.08  # measured 0.18


def reward_gain(records: list[dict]) -> tuple[float, float]:
    return statistics.mean(r["reward"] for r in records[:10]), statistics.mean(r["reward"] for r in records[-10:])


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce", "reinforce_baseline", "dr_grpo"])
def test_critic_free_estimators_raise_a_learnable_reward_and_not_with_the_sign_flipped(tmp_path, estimator):
    # the micro preset samples 2 per question; one PPO pass at a higher rate halves the update's time
    overrides = [f"reft.advantage={estimator}", "reft.ppo_epochs=1", "reft.lr=1e-3"]
    learned = reft_records(tmp_path / "run", overrides)
    assert len(learned) == 30 and "value_loss" not in learned[0] and "explained_variance" not in learned[0]
    first, last = reward_gain(learned)
    assert last > first + 0.15, (estimator, first, last)  # measured 0.22 -> 0.81 (grpo), 0.25 -> 0.95, 0.18 -> 0.55
    first, last = reward_gain(reft_records(tmp_path / "flipped", overrides, flip=estimator))
    assert last < first + 0.05, ("flipped", estimator, first, last)  # measured 0.15 -> 0.11
