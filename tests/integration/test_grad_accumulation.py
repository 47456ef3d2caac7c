"""Gradient accumulation gives the big batch's update: SFT (batch 32 = 2 x 16), one PPO step (minibatch 32 = 2 x 16,
with GAE and with GRPO's token-mean loss), one online self-training step and the reward model, each run once with
``grad_accum_steps=1`` and once with 2 in float32 from the same start, must end with the same weights within
float32 tolerance. And a different batch (a control) must not: the comparison can fail."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import reftkit.trainers.stepwise as stepwise
from reftkit.cli.main import main
from reftkit.config.schema import RewardModelConfig
from reftkit.data.base import Problem
from reftkit.evaluation.sampling import Sample
from reftkit.reward.answers import Graded, Outcome
from reftkit.trainers.common import MetricsLog, make_accelerator
from reftkit.trainers.reward_model import rm_examples, train_reward_model

pytestmark = pytest.mark.integration
FP32 = ["--preset", "micro", "mixed_precision=no"]


def parity_reward(problems, completions, *args, **kwargs):
    return [Graded(Outcome.CORRECT, None, 1.0) if len(text) % 2 else Graded(Outcome.WRONG, None, 0.1)
            for text in completions]  # fmt: skip


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a, b, atol: float = 2e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-4, msg=key)


def differs(a, b, atol: float = 2e-5) -> bool:
    wa, wb = weights(a), weights(b)
    return any(not torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4) for k in wa)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    runs = {}
    for name, extra in {"whole": [], "accum": ["sft.grad_accum_steps=2"], "small": ["sft.batch_size=16"]}.items():
        out = root / f"sft_{name}"
        assert main(["sft", "--out", str(out), *FP32, "sft.batch_size=32", *extra]) == 0
        runs[name] = out / "checkpoints"
    return runs


def test_sft_accumulation_equals_the_big_batch(sft_runs):
    assert_same_weights(sft_runs["whole"] / "sft_last", sft_runs["accum"] / "sft_last")
    assert differs(sft_runs["whole"] / "sft_last", sft_runs["small"] / "sft_last")  # the control


@pytest.mark.parametrize(
    "command, extra",
    [
        ("reft", []),
        ("reft", ["reft.advantage=grpo", "reft.loss_agg=token_mean", "reft.kl_mode=loss", "reft.sft_coef=0.5"]),
        ("online-st", []),
    ],
)
def test_one_step_with_accumulation_equals_the_big_minibatch(sft_runs, tmp_path, monkeypatch, command, extra):
    monkeypatch.setattr(stepwise, "grade_batch", parity_reward)  # rewards that differ, so every loss moves weights
    warmup = str(sft_runs["whole"] / "warmup")
    step = [*FP32, "reft.max_steps=1", "reft.minibatch_size=32", "reft.lr=1e-3", *extra]
    outs = {}
    for name, accum in {"whole": [], "accum": ["reft.grad_accum_steps=2"]}.items():
        outs[name] = tmp_path / name
        assert main([command, "--model", warmup, "--out", str(outs[name]), *step, *accum]) == 0
    last = f"{command.replace('-', '_')}_last"
    assert_same_weights(outs["whole"] / "checkpoints" / last, outs["accum"] / "checkpoints" / last)
    assert differs(sft_runs["whole"] / "warmup", outs["accum"] / "checkpoints" / last)  # the step did move them


def test_reward_model_accumulation_equals_the_big_batch(sft_runs, tmp_path):
    problems = {f"q{i}": Problem(f"q{i}", f"Tom has {i} apples. He buys {i + 2} more.", str(2 * i + 2))
                for i in range(4)}  # fmt: skip
    samples = [Sample(q, n, f"    x = {n}\n    return x", float(n), "correct" if n % 2 else "wrong", -1.0, 5,
                      problems[q].answer) for q in problems for n in range(4)]  # fmt: skip
    examples = rm_examples(problems, samples, "python")
    outs = {}
    for accum in (1, 2):
        cfg = RewardModelConfig(epochs=2, lr=1e-3, batch_size=8, max_length=64, grad_accum_steps=accum)
        outs[accum] = tmp_path / f"rm{accum}"
        train_reward_model(sft_runs["whole"] / "warmup", examples, cfg, outs[accum], MetricsLog(tmp_path / f"m{accum}"),
                           make_accelerator("no"), seed=0)  # fmt: skip
    assert_same_weights(outs[1], outs[2])
