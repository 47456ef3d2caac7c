"""The value warm-up (``reft.value_warmup_steps``): a value-only PPO update trains the value head (and a separate
value model) and leaves the policy and its optimiser state exactly as they were; a normal update moves both.
``reft.value_model=detached``: the value loss alone moves the head but not the trunk it reads. Scoring's forward
serves as the first minibatch's where one minibatch holds every row, with the same update."""

import math

import pytest
import torch
from accelerate import Accelerator

import reftkit.trainers.reft as reft
from reftkit.config.loading import load_config
from reftkit.config.schema import TinyModelConfig
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer
from reftkit.models.policy import PolicyWithValue
from reftkit.rl import ppo
from reftkit.rollout.base import GenerationConfig
from reftkit.rollout.generate import encode_prompts, generate, left_pad
from reftkit.trainers.common import make_accelerator
from reftkit.trainers.reft import make_experience, ppo_update
from reftkit.trainers.stepwise import Rollout

SMALL = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
TEXTS = ["Question:\nTom has 5 apples. He buys 3 more.\nAnswer reasoning:\n    a = 5\n    return a + 3"] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny(TEXTS, SMALL, tmp_path_factory.mktemp("tiny"), seed=0)
    return path, load_tokenizer(path)


def one_update(tiny, value_model: str, value_only: bool, overrides: tuple[str, ...] = (), full: bool = False):
    """Names of the parameters changed by one PPO update on four sampled rows with rewards 1, 0, 0.1, 1, and of
    those with optimiser state (``full``: each parameter's change by an SGD update, lr x its gradient,
    where AdamW's first step would turn a rounding-level gradient into a full lr-sized step, and the figures)."""
    path, tokenizer = tiny
    config = load_config("micro", None, ["mixed_precision=no", f"reft.value_model={value_model}", "reft.lr=1e-2",
                                         *overrides])  # fmt: skip
    accelerator = make_accelerator("no")  # float32 whatever precision an earlier test left accelerate's shared state in
    torch.manual_seed(0)
    value_lm = load_causal_lm(path, tokenizer) if value_model == "separate" else None
    policy = PolicyWithValue(load_causal_lm(path, tokenizer), value_lm).eval()
    ref = load_causal_lm(path, tokenizer).eval()
    groups = policy.param_groups(1e-2, 1e-2)
    optimizer = torch.optim.SGD(groups) if full else torch.optim.AdamW(groups, weight_decay=0.0)
    prompts = encode_prompts(tokenizer, ["Tom has 5 apples.", "He buys 3 more.", "Tom", "apples"])
    batch = left_pad(prompts, tokenizer.pad_token_id)
    responses = generate(
        policy.lm, batch, GenerationConfig(8, tokenizer.eos_token_id, tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    scores = torch.tensor([1.0, 0.0, 0.1, 1.0])
    rollout = Rollout(torch.arange(4), batch, responses, [], [], [], scores)  # 4 questions, one sample each
    exp = make_experience(policy, ref, rollout, config, accelerator)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    figures = ppo_update(policy, optimizer, exp, config, accelerator, value_only=value_only)
    if full:  # each parameter's change
        return {name: p.detach() - before[name] for name, p in policy.named_parameters()}, figures
    changed = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    with_state = {name for name, p in policy.named_parameters() if p in optimizer.state}
    return changed, with_state


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_value_only_update_leaves_the_policy_and_its_optimiser_state_alone(tiny, value_model):
    changed, with_state = one_update(tiny, value_model, value_only=True)
    assert {"value_head.weight", "value_head.bias"} <= changed
    assert not any(name.startswith("lm.") for name in changed | with_state)
    separate = {name for name in changed if name.startswith("value_lm.")}
    assert bool(separate) == (value_model == "separate")


def test_normal_update_moves_the_policy_too(tiny):
    changed, with_state = one_update(tiny, "shared", value_only=False)
    assert any(name.startswith("lm.") for name in changed)
    assert any(name.startswith("lm.") for name in with_state) and "value_head.weight" in changed


@pytest.mark.parametrize(("value_model", "trunk_moves"), [("shared", True), ("detached", False)])
def test_value_loss_reaches_the_trunk_only_when_shared(tiny, value_model, trunk_moves, monkeypatch):
    real = ppo.policy_loss
    monkeypatch.setattr(ppo, "policy_loss", lambda *args, **kwargs: tuple_scaled(real(*args, **kwargs), 0.0))
    changed, _ = one_update(tiny, value_model, value_only=False)
    assert "value_head.weight" in changed
    assert any(name.startswith("lm.model.") for name in changed) == trunk_moves


def tuple_scaled(result, factor):
    loss, stats = result
    return loss * factor, stats


def experience_of_four_samples(tiny, overrides: list[str]):
    """Two questions of two samples with scores (1, 0) and (0.1, 0.1), no KL: the experience and the response mask."""
    path, tokenizer = tiny
    config = load_config("micro", None, ["mixed_precision=no", "reft.samples_per_question=2", "reft.kl_coef=0",
                                         *overrides])  # fmt: skip
    policy = PolicyWithValue(load_causal_lm(path, tokenizer), None).eval()
    batch = left_pad(encode_prompts(tokenizer, ["Tom has 5 apples."] * 2 + ["He buys 3 more."] * 2),
                     tokenizer.pad_token_id)  # fmt: skip
    responses = generate(
        policy.lm, batch, GenerationConfig(6, tokenizer.eos_token_id, tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    rollout = Rollout(torch.tensor([0, 0, 1, 1]), batch, responses, [], [], [], torch.tensor([1.0, 0.0, 0.1, 0.1]))
    return make_experience(policy, None, rollout, config, Accelerator(cpu=True)), responses.mask.bool()


@pytest.mark.parametrize("positive_only", [False, True])
def test_positive_only_zeroes_the_advantages_of_samples_below_their_baseline(tiny, positive_only):
    """rloo: sequence advantages 1, -1, 0, 0; ``reft.positive_only`` keeps the 1 and zeroes the -1."""
    exp, mask = experience_of_four_samples(tiny, ["reft.advantage=rloo", f"reft.positive_only={positive_only}".lower()])
    first = exp.advantages[mask.cumsum(1) == 1]  # each row's first counted token: its sequence advantage
    expected = [1.0, 0.0 if positive_only else -1.0, 0.0, 0.0]
    assert first.tolist() == pytest.approx(expected)
    assert torch.equal(exp.advantages[~mask], torch.zeros_like(exp.advantages[~mask]))


def test_positive_only_survives_the_whitening(tiny):
    """reinforce_baseline: centred advantages 0.5, -0.5, 0, 0; positive-only clamps the -0.5, and the whitening must
    only rescale (divide by the std of the tokens' values), not re-centre, which would push the three samples it
    left alone down by the mean."""
    exp, mask = experience_of_four_samples(tiny, ["reft.advantage=reinforce_baseline", "reft.positive_only=true"])
    n, n0 = int(mask.sum()), int(mask[0].sum())  # tokens counted in all, and in the one kept sample
    mean = 0.5 * n0 / n
    std = math.sqrt((0.25 * n0 - n * mean * mean) / (n - 1))
    assert exp.advantages[0][mask[0]].tolist() == pytest.approx([0.5 / std] * n0, rel=1e-5)
    assert torch.equal(exp.advantages[1:], torch.zeros_like(exp.advantages[1:]))


@pytest.mark.parametrize("value_model", ["shared", "detached"])
def test_scoring_forward_is_the_first_minibatchs_with_the_same_update(tiny, value_model, monkeypatch):
    """One minibatch of all four rows (``fuses_first_pass``): scoring's forward, made with gradients, is the first
    minibatch's, so its ratio is 1 and its KL estimate 0 exactly, and the update is the one a separate forward
    makes (float32; every parameter's change to 1% of its largest entry: rows or signs out of place would move it
    by its whole size)."""
    results, forwards, real_score = {}, [], reft.score
    monkeypatch.setattr(reft, "score", lambda *a, **k: forwards.append(torch.is_grad_enabled()) or real_score(*a, **k))
    for fused in (True, False):
        monkeypatch.setattr(reft, "fuses_first_pass", lambda cfg, n_rows, fused=fused: fused)
        results[fused] = one_update(tiny, value_model, False, ("reft.ppo_epochs=1",), full=True)
    assert forwards == [True, False, True]  # fused: one forward, with gradients; else scoring's, then the update's
    (changes, figures), (separate, separate_figures) = results[True], results[False]
    assert figures["ratio_mean"] == 1.0 and figures["approx_kl"] == 0.0 and figures["clipfrac"] == 0.0
    assert figures.keys() == separate_figures.keys()
    assert any(change.abs().max() > 0 for change in changes.values())
    for name, change in changes.items():
        scale = float(separate[name].abs().max())
        torch.testing.assert_close(change, separate[name], atol=1e-2 * scale + 1e-9, rtol=0, msg=name)
