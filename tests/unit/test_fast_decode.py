"""The lean decoder computes what the HF forward computes, and dropping finished rows changes no sample."""

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from reftkit.rollout import lean as lean_module
from reftkit.rollout.base import GenerationConfig
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import generate, left_pad
from reftkit.rollout.lean import HFDecoder, LeanDecoder, lean_unsupported, make_decoder
from reftkit.rollout.vllm_engine import responses_from_outputs, vllm_unavailable

PAD, NEVER = 0, 10_000  # NEVER: an EOS id outside the vocabulary, so no row ends
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=PAD, eos_token_id=2,
    )  # fmt: skip
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=4)).eval()
    if kind == "llama_gqa":  # two query heads share each key/value head
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False)).eval()
    if kind == "llama_biases":  # biases on every projection, attention and MLP
        return LlamaForCausalLM(LlamaConfig(**common, attention_bias=True, mlp_bias=True)).eval()
    if kind == "qwen2":  # biases on q, k, v
        return Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**common, num_key_value_heads=2, sliding_window=None)).eval()
    raise ValueError(kind)


def run_both(m: torch.nn.Module, autocast: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Logits of the two decoders at the start and at each of 8 steps, rows dropped midway."""
    batch = left_pad(PROMPTS, PAD)
    pairs = []
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        lean, hf = make_decoder(m, "lean"), make_decoder(m, "hf")
        assert isinstance(lean, LeanDecoder) and isinstance(hf, HFDecoder)
        a, b = lean.start(batch.ids, batch.mask, 2, 16), hf.start(batch.ids, batch.mask, 2, 16)
        pairs.append((a, b))
        tokens = b.float().argmax(-1)
        for step in range(8):
            if step == 3:
                rows = torch.tensor([0, 2, 3, 5])
                lean.keep(rows)
                hf.keep(rows)
                tokens = tokens[rows]
            a, b = lean.step(tokens), hf.step(tokens)
            pairs.append((a, b))
            tokens = b.float().argmax(-1)
    return pairs


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "llama_biases", "qwen2", "mistral"])
def test_lean_decoder_matches_the_hf_forward_in_float32(kind):
    for lean, hf in run_both(model(kind), autocast=False):
        assert lean.dtype == hf.dtype == torch.float32
        torch.testing.assert_close(lean, hf, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lean_decoder_follows_bf16_autocast_to_rounding(kind):
    for lean, hf in run_both(model(kind), autocast=True):
        assert lean.dtype == hf.dtype == torch.bfloat16
        assert (lean.float() - hf.float()).abs().max() < 0.05  # a few bf16 ulps of logits of size ~1


@pytest.mark.skipif(
    lean_module._onednn_packed(torch.zeros(4, 4, dtype=torch.bfloat16)) is None, reason="no oneDNN bf16 matmul here"
)
@pytest.mark.parametrize("kind", ["llama", "llama_biases", "qwen2"])
def test_prepacked_bf16_weights_change_no_logit(monkeypatch, kind):
    """The oneDNN-prepacked matmuls give exactly the logits of plain ``F.linear`` (same kernel, no reorder)."""
    m = model(kind)
    packed = run_both(m, autocast=True)
    monkeypatch.setattr(lean_module, "_onednn_packed", lambda weight: None)
    plain = run_both(m, autocast=True)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(packed, plain, strict=True))


def test_float32_weights_are_not_prepacked():
    assert lean_module._onednn_packed(torch.zeros(4, 4)) is None


def frequent_token(m: torch.nn.Module) -> int:
    """Sharpens the model's distributions (a random model's are nearly flat) and returns the token it samples
    most often: with it as EOS, rows end at many different steps."""
    with torch.no_grad():
        m.model.norm.weight.mul_(30.0)
    out = generate(m, left_pad(PROMPTS, PAD), GenerationConfig(24, NEVER, PAD), 1, torch.Generator().manual_seed(0))
    return int(torch.mode(out.ids.flatten()).values)


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "qwen2"])
def test_both_decoders_draw_the_same_samples_with_rows_dropped(kind):
    m = model(kind)
    eos = frequent_token(m)
    gen = GenerationConfig(40, eos, PAD, return_logprobs=True)
    runs = {
        name: generate(m, left_pad(PROMPTS, PAD), gen, 4, torch.Generator().manual_seed(3), decoder=name)
        for name in ("lean", "hf")
    }
    lean, hf = runs["lean"], runs["hf"]
    lengths = lean.mask.sum(1)
    assert lengths.min() < lengths.max() and (~lean.truncated).sum() >= 3  # rows ended at different steps
    assert torch.equal(lean.ids, hf.ids) and torch.equal(lean.mask, hf.mask)
    assert torch.equal(lean.truncated, hf.truncated)
    torch.testing.assert_close(lean.logprobs, hf.logprobs, atol=1e-5, rtol=1e-5)


class Recorded:
    """A decoder that records the rows it keeps, and drops none when ``can_drop`` is False."""

    def __init__(self, inner, can_drop: bool, kept: list[int]) -> None:
        self.inner, self.allowed, self.kept = inner, can_drop, kept

    @property
    def can_drop(self) -> bool:
        return self.allowed and self.inner.can_drop

    def start(self, *args):
        return self.inner.start(*args)

    def step(self, tokens):
        return self.inner.step(tokens)

    def keep(self, rows):
        self.kept.append(len(rows))
        self.inner.keep(rows)


@pytest.mark.parametrize("decoder", ["lean", "hf"])
def test_dropping_finished_rows_changes_no_sample(monkeypatch, decoder):
    m = model("llama")
    eos = frequent_token(m)
    runs, kept = {}, {True: [], False: []}
    for can_drop in (True, False):
        monkeypatch.setattr(
            "reftkit.rollout.generate.make_decoder",
            lambda mod, name, c=can_drop: Recorded(make_decoder(mod, name), c, kept[c]),
        )
        gen = GenerationConfig(40, eos, PAD, return_logprobs=True)
        runs[can_drop] = generate(m, left_pad(PROMPTS, PAD), gen, 4, torch.Generator().manual_seed(5), decoder=decoder)
    assert kept[True] and kept[True] == sorted(kept[True], reverse=True) and kept[True][-1] < 12  # rows dropped
    assert kept[False] == []
    dropped, full = runs[True], runs[False]
    assert torch.equal(dropped.ids, full.ids) and torch.equal(dropped.mask, full.mask)
    assert torch.equal(dropped.truncated, full.truncated)
    torch.testing.assert_close(dropped.logprobs, full.logprobs, atol=1e-5, rtol=1e-5)


def test_other_architectures_and_peft_models_use_the_hf_forward():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    assert "gpt2" in lean_unsupported(gpt2)
    assert isinstance(make_decoder(gpt2), HFDecoder)
    with pytest.raises(ValueError, match="cannot run this model"):
        make_decoder(gpt2, "lean")
    with pytest.raises(ValueError, match="auto, hf or lean"):
        make_decoder(gpt2, "vllm")
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert lean_unsupported(wrapped) is not None and isinstance(make_decoder(wrapped), HFDecoder)
    assert lean_unsupported(model("qwen2")) is None
    small = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    windowed = MistralForCausalLM(MistralConfig(**small, sliding_window=16, max_position_embeddings=64))
    assert "sliding-window" in lean_unsupported(windowed)


def test_vllm_outputs_become_right_padded_responses():
    EOS = 2

    def request(*completions):
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=t, finish_reason=r) for t, r in completions])

    outputs = [
        request(([7, 8, EOS], "stop"), ([7], "stop")),  # EOS returned; EOS not returned by the stop rule
        request(([9, 9, 9, 9], "length"), ([4, EOS, 5], "stop")),  # cut at the limit; text after EOS dropped
    ]
    out = responses_from_outputs(outputs, EOS, PAD, torch.device("cpu"))
    assert out.ids.tolist() == [[7, 8, EOS, PAD], [7, EOS, PAD, PAD], [9, 9, 9, 9], [4, EOS, PAD, PAD]]
    assert out.mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert out.truncated.tolist() == [False, False, True, False]


@pytest.mark.skipif(vllm_unavailable() is None, reason="vLLM and a CUDA GPU are present")
def test_vllm_backend_refuses_clearly_where_it_cannot_run(tmp_path):
    from reftkit.config.schema import ConfigError

    with pytest.raises(ConfigError, match="rollout_backend=vllm"):
        make_engine("vllm", tmp_path)


@pytest.mark.skipif(vllm_unavailable() is not None, reason=f"vLLM backend unavailable: {vllm_unavailable()}")
def test_vllm_backend_samples_the_synced_policy(tmp_path):
    m = model("llama").cuda()
    m.save_pretrained(tmp_path)
    gen = GenerationConfig(8, NEVER, PAD, temperature=0.0)
    engine = make_engine("vllm", tmp_path)
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = engine.generate(m, left_pad(PROMPTS, PAD), gen, 2, generator)
    assert out.ids.shape == (6, 8) and bool(out.truncated.all()) and bool(out.mask.all())
    assert torch.equal(out.ids[::2], out.ids[1::2])  # temperature 0: a prompt's two samples agree
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()  # every logit equal: greedy picks token 0, if the engine really received these weights
    assert bool((engine.generate(m, left_pad(PROMPTS, PAD), gen, 1, generator).ids == 0).all())
