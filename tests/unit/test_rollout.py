"""Sampling and scoring must see the same positions: a left-padded row behaves exactly like the unpadded one."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reftkit.models.policy import PolicyWithValue, position_ids_from_mask
from reftkit.rollout.base import GenerationConfig, Responses
from reftkit.rollout.generate import generate, left_pad
from reftkit.trainers.reft import score

PAD, EOS = 0, 2


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_left_pad():
    batch = left_pad([[5, 6, 7], [8]], PAD)
    assert batch.ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert batch.mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_greedy_generation_is_padding_invariant():
    model = tiny_llama()
    short, long = [7, 8, 9], [5, 6, 7, 8, 9, 10, 11]
    together = generate(model, left_pad([long, short], PAD), GenerationConfig(12, EOS, PAD, temperature=0))
    alone = generate(model, left_pad([short], PAD), GenerationConfig(12, EOS, PAD, temperature=0))
    n = int(alone.mask[0].sum())
    assert together.ids[1, :n].tolist() == alone.ids[0, :n].tolist()


class ScriptedLM(torch.nn.Module):
    """Emits row b's scripted token at each decoding step, whatever the input: exact control over EOS."""

    def __init__(self, script: list[list[int]], vocab: int = 40) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.calls = torch.tensor(script), vocab, 0

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        logits = torch.full((input_ids.size(0), input_ids.size(1), self.vocab), -1e4)
        logits[:, -1].scatter_(1, self.script[:, self.calls, None], 0.0)
        self.calls += 1
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_responses_stop_at_eos_and_mask_includes_it():
    # row 0 ends after 2 tokens (EOS second), row 1 after 4; generation stops when both have ended
    script = ScriptedLM([[5, EOS, 9, 9, 9], [6, 7, 8, EOS, 9]])
    out = generate(script, left_pad([[5, 6], [7]], PAD), GenerationConfig(5, EOS, PAD, 0))
    assert out.ids.tolist() == [[5, EOS, PAD, PAD], [6, 7, 8, EOS]]
    assert out.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out.truncated.tolist() == [False, False]


def test_truncated_samples_keep_every_token():
    out = generate(ScriptedLM([[5, 6, 7], [5, EOS, 7]]), left_pad([[5, 6], [7]], PAD), GenerationConfig(3, EOS, PAD, 0))
    assert out.mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out.truncated.tolist() == [True, False]


def test_sampling_is_seeded():
    model = tiny_llama()
    prompts = left_pad([[5, 6], [7]], PAD)
    a = generate(model, prompts, GenerationConfig(8, EOS, PAD), generator=torch.Generator().manual_seed(1))
    b = generate(model, prompts, GenerationConfig(8, EOS, PAD), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.ids, b.ids)


def test_scoring_matches_the_logits_generation_sampled_from():
    """The per-token log-probs of a full forward equal those of incremental decoding, padded row included."""
    model = tiny_llama()
    policy = PolicyWithValue(model)
    prompts = left_pad([[5, 6, 7, 8], [9]], PAD)
    responses: Responses = generate(model, prompts, GenerationConfig(6, EOS, PAD, temperature=0))
    ids = torch.cat([prompts.ids, responses.ids], 1)
    mask = torch.cat([prompts.mask, responses.mask.long()], 1)
    logits, values = policy(ids, mask, logits_from=prompts.ids.size(1) - 1)
    greedy = logits[:, :-1].argmax(-1)
    valid = responses.mask.bool()
    assert torch.equal(greedy[valid], responses.ids[valid])
    assert values.shape == logits.shape[:2] and torch.all(values == 0)  # the head starts at zero


def test_top_k_one_is_greedy():
    model = tiny_llama()
    prompts = left_pad([[5, 6, 7]], PAD)
    greedy = generate(model, prompts, GenerationConfig(6, EOS, PAD, temperature=0))
    top_1 = GenerationConfig(6, EOS, PAD, temperature=1.0, top_k=1)
    topk = generate(model, prompts, top_1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy.ids, topk.ids)


def test_shared_prompt_cache_gives_the_same_samples_as_repeated_prompts():
    """n samples from one encoded prompt = the same prompt written n times (same seed, same draws)."""
    model = tiny_llama()
    prompts = [[5, 6, 7, 8], [9, 10]]
    gen = GenerationConfig(10, EOS, PAD, 1.0, return_logprobs=True)
    shared = generate(model, left_pad(prompts, PAD), gen, 3, generator=torch.Generator().manual_seed(3))
    repeated = [p for p in prompts for _ in range(3)]
    plain = generate(model, left_pad(repeated, PAD), gen, generator=torch.Generator().manual_seed(3))
    assert shared.ids.tolist() == plain.ids.tolist()
    assert torch.equal(shared.mask, plain.mask)
    torch.testing.assert_close(shared.logprobs, plain.logprobs, atol=1e-5, rtol=0)


def test_logprobs_are_those_of_the_distribution_sampled_from():
    """At the defaults the model's own log-probs; with temperature/top-k, those of the warped distribution."""
    model = tiny_llama()
    prompt = [5, 6, 7]
    for settings in ({}, {"temperature": 0.7, "top_k": 5}):
        gen = GenerationConfig(6, EOS, PAD, **settings, return_logprobs=True)
        out = generate(model, left_pad([prompt], PAD), gen, generator=torch.Generator().manual_seed(0))
        n = int(out.mask[0].sum())
        full = torch.tensor([prompt + out.ids[0, :n].tolist()])
        with torch.no_grad():
            logits = model(full).logits[0, len(prompt) - 1 : -1]
        temperature, top_k = settings.get("temperature", 1.0), settings.get("top_k", 0)
        scaled = logits / temperature
        if top_k:
            kth = scaled.topk(top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        expected = scaled.log_softmax(-1).gather(-1, full[0, len(prompt) :, None]).squeeze(-1)
        torch.testing.assert_close(out.logprobs[0, :n], expected, atol=1e-5, rtol=0)
        assert out.logprobs[0, n:].abs().sum() == 0


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.3, 7, 1.0), (0.8, 0, 0.7), (0.9, 5, 0.8)]
)
def test_ppo_scorer_agrees_with_the_sampler(temperature, top_k, top_p):
    """The log-probs PPO's ratio uses (``reft.score``) are those the sampler drew each token with, at any
    temperature/top-k/top-p; and every drawn token lies inside the scorer's top-k/top-p set (finite)."""
    model = tiny_llama(seed=3)
    policy = PolicyWithValue(model, critic=False)
    prompts = left_pad([[5, 6, 7, 8], [9], [11, 12]], PAD)
    gen = GenerationConfig(8, EOS, PAD, temperature, top_k, top_p, return_logprobs=True)
    out = generate(model, prompts, gen, 3, generator=torch.Generator().manual_seed(5))
    ids = torch.cat([prompts.ids.repeat_interleave(3, 0), out.ids], 1)
    mask = torch.cat([prompts.mask.repeat_interleave(3, 0), out.mask.long()], 1)
    logp, values = score(policy, ids, mask, prompts.ids.size(1), out.ids, sampling=(temperature, top_k, top_p))
    valid = out.mask.bool()
    assert values is None
    assert torch.isfinite(logp[valid]).all()
    torch.testing.assert_close(logp[valid], out.logprobs[valid], atol=1e-5, rtol=0)
    if (temperature, top_k, top_p) != (1.0, 0, 1.0):  # the warp matters: the plain model's log-probs differ
        plain, _ = score(policy, ids, mask, prompts.ids.size(1), out.ids)
        assert (plain[valid] - logp[valid]).abs().max() > 1e-3
