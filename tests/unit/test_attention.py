"""The explicit attention computes what ``sdpa`` computes, forward and backward; the CPU-aware attention takes it
only where a CPU takes gradients in bf16, and is ``sdpa`` elsewhere."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.integrations import sdpa_attention

from reftkit.config.schema import TinyModelConfig
from reftkit.models import attention
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer

pytestmark = pytest.mark.skipif(attention.CPU_AWARE is None, reason="transformers without an attention registry")


def model(kind: str, implementation: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=1)
        config._attn_implementation = implementation
        return GPT2LMHeadModel(config).eval()  # no dropout; gradients still flow
    config = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2 if kind == "llama_gqa" else 4, vocab_size=50)  # fmt: skip
    config._attn_implementation = implementation
    return LlamaForCausalLM(config).eval()


def logits_and_grads(m: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    logits = m(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    (logits[valid] ** 2).mean().backward()  # a loss on real positions only, as every reftkit loss is
    return logits[valid].detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "gpt2"])
def test_the_explicit_path_matches_sdpa_forward_and_backward_in_float32(monkeypatch, kind):
    monkeypatch.setattr(attention, "takes_explicit_path", lambda query: True)  # in float32 too, to compare to 1e-5
    ids = torch.randint(2, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding, as prompts are batched
    mask[2, :1] = 0
    ours, theirs = model(kind, attention.CPU_AWARE), model(kind, "sdpa")
    (a, grads_a), (b, grads_b) = logits_and_grads(ours, ids, mask), logits_and_grads(theirs, ids, mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_without_gradients_it_is_sdpa_exactly():
    ids = torch.randint(2, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    ours, theirs = model("llama_gqa", attention.CPU_AWARE), model("llama_gqa", "sdpa")
    with torch.no_grad():
        assert torch.equal(
            ours(input_ids=ids, attention_mask=mask).logits, theirs(input_ids=ids, attention_mask=mask).logits
        )


def test_grouped_heads_on_a_cpu_skip_repeat_kv_with_the_same_attention(monkeypatch):
    """sdpa over grouped key/value heads in place: the logits of transformers' sdpa (which repeats the heads) bit for
    bit, and every gradient to rounding; the heads are never repeated."""
    ids = torch.randint(2, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    repeats = []
    real_repeat = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda x, n: repeats.append(n) or real_repeat(x, n))
    (a, grads_a) = logits_and_grads(model("llama_gqa", attention.CPU_AWARE), ids, mask)
    assert repeats == []  # and transformers' own path does repeat them:
    (b, grads_b) = logits_and_grads(model("llama_gqa", "sdpa"), ids, mask)
    assert repeats and set(repeats) == {2}
    assert torch.equal(a, b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_the_explicit_path_runs_only_where_a_cpu_takes_gradients_in_bf16(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].dtype) or (a[1], None))
    module = torch.nn.Module()
    bf16 = torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    fp32 = torch.zeros(1, 2, 3, 4, requires_grad=True)
    with torch.no_grad():
        attention.cpu_aware_attention(module, bf16, bf16, bf16, None)
    attention.cpu_aware_attention(module, fp32, fp32, fp32, None)
    assert calls == [torch.bfloat16, torch.float32]
    out, _ = attention.cpu_aware_attention(module, bf16, bf16, bf16, None)
    assert calls == [torch.bfloat16, torch.float32] and out.shape == (1, 3, 2, 4)
    with torch.autocast("cpu", torch.bfloat16):  # a float32 query that autocast computes in bf16 (a Llama's, RoPE'd)
        out, _ = attention.cpu_aware_attention(module, fp32, fp32, fp32, None)
    assert calls == [torch.bfloat16, torch.float32] and out.dtype == torch.bfloat16


def test_under_bf16_autocast_training_matches_sdpa_to_bf16_rounding(monkeypatch):
    ids = torch.randint(2, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    explicit = attention.explicit_attention
    calls = []
    monkeypatch.setattr(attention, "explicit_attention", lambda *a: calls.append(a[1].dtype) or explicit(*a))
    results = []
    for implementation in (attention.CPU_AWARE, "sdpa"):
        m = model("llama_gqa", implementation)
        with torch.autocast("cpu", torch.bfloat16):
            results.append(logits_and_grads(m, ids, mask))
    assert calls == [torch.float32] * m.config.num_hidden_layers  # the explicit path ran, in every layer
    (a, grads_a), (b, grads_b) = results
    assert (a.float() - b.float()).abs().max() < 0.05  # logits of size ~1, a few bf16 ulps
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=2e-2, rtol=5e-2, msg=name)


def test_loaded_models_use_it(tmp_path):
    folder = build_tiny(["a b c d e f"] * 20, TinyModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                        num_layers=1, num_heads=2, max_positions=32), tmp_path / "tiny", seed=0)  # fmt: skip
    m = load_causal_lm(folder, load_tokenizer(folder))
    assert m.config._attn_implementation == attention.CPU_AWARE
