"""Any HF causal LM by path: GPT-2, Llama, OPT and Qwen2 load, pad correctly, and score padded rows exactly."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from reftkit.config.schema import TinyModelConfig
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer, train_tokenizer
from reftkit.models.policy import PolicyWithValue, forward_from
from reftkit.models.trainable import enable_gradient_checkpointing
from reftkit.rollout.base import GenerationConfig
from reftkit.rollout.generate import encode_prompts, generate, left_pad

SMALL = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
TEXTS = ["Question:\nTom has 5 apples. He buys 3 more.\nAnswer reasoning:\n    a = 5\n    return a + 3"] * 20


def save_arch(tmp_path, config_cls, **kwargs):
    tokenizer = train_tokenizer(TEXTS, 300)
    common = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "pad_token_id": None}
    config = config_cls(**common, **kwargs)
    torch.manual_seed(0)
    path = tmp_path / config_cls.__name__
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


LAYERS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
ARCHS = {
    "llama": (LlamaConfig, {**LAYERS, "intermediate_size": 64}),
    "gpt2": (GPT2Config, {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}),
    "opt": (OPTConfig, {**LAYERS, "ffn_dim": 64, "word_embed_proj_dim": 32, "max_position_embeddings": 128}),
    "qwen2": (Qwen2Config, {**LAYERS, "intermediate_size": 64, "num_key_value_heads": 1}),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architectures_score_left_padded_rows_exactly(tmp_path, arch):
    config_cls, kwargs = ARCHS[arch]
    path = save_arch(tmp_path, config_cls, **kwargs)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer).eval()
    policy = PolicyWithValue(model)
    prompts = encode_prompts(tokenizer, ["Tom has 5 apples. He buys 3 more.", "Tom"])
    batch = left_pad(prompts, tokenizer.pad_token_id)
    logits, values = policy(batch.ids, batch.mask)
    alone = left_pad(prompts[1:], tokenizer.pad_token_id)
    logits_alone, _ = policy(alone.ids, alone.mask)
    torch.testing.assert_close(logits[1, -1], logits_alone[0, -1], atol=1e-4, rtol=1e-4)
    assert values.shape == batch.ids.shape
    greedy = GenerationConfig(6, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature=0)
    together = generate(model, batch, greedy)
    single = generate(model, alone, greedy)
    n = int(single.mask[0].sum())
    assert together.ids[1, :n].tolist() == single.ids[0, :n].tolist()


def test_missing_or_shared_pad_token_gets_a_dedicated_one(tmp_path):
    tokenizer = train_tokenizer(TEXTS, 300)
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>", pad_token="</s>")
    path = save_arch(
        tmp_path, LlamaConfig, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    no_pad.save_pretrained(path)
    loaded = load_tokenizer(path)
    assert loaded.pad_token_id not in (loaded.eos_token_id, loaded.bos_token_id)
    model = load_causal_lm(path, loaded)
    assert model.get_input_embeddings().num_embeddings >= len(loaded)
    assert model.config.pad_token_id == loaded.pad_token_id


def test_tiny_preset_is_a_plain_hf_directory(tmp_path):
    path = build_tiny(TEXTS, SMALL, tmp_path / "tiny", seed=0)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer(TEXTS[0])["input_ids"]) == TEXTS[0]  # byte-level BPE is lossless


def test_policy_checkpoint_round_trip(tmp_path):
    path = build_tiny(TEXTS, SMALL, tmp_path / "tiny", seed=0)
    tokenizer = load_tokenizer(path)
    policy = PolicyWithValue(load_causal_lm(path, tokenizer))
    torch.nn.init.normal_(policy.value_head.weight)
    policy.save(tmp_path / "ckpt", tokenizer)
    restored = PolicyWithValue(AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt"))
    assert restored.load_value_head(tmp_path / "ckpt")
    torch.testing.assert_close(restored.value_head.weight, policy.value_head.weight)
    for a, b in zip(restored.lm.parameters(), policy.lm.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not PolicyWithValue(policy.lm).load_value_head(path)


def test_separate_value_model_uses_its_own_trunk(tmp_path):
    path = build_tiny(TEXTS, SMALL, tmp_path / "tiny", seed=0)
    tokenizer = load_tokenizer(path)
    policy = PolicyWithValue(load_causal_lm(path, tokenizer), value_lm=load_causal_lm(path, tokenizer))
    torch.nn.init.normal_(policy.value_head.weight)
    batch = left_pad(encode_prompts(tokenizer, ["Tom has 5"]), tokenizer.pad_token_id)
    _, values = policy(batch.ids, batch.mask)
    values.sum().backward()
    assert all(p.grad is None for p in policy.lm.parameters())
    assert any(p.grad is not None for p in policy.value_lm.parameters())
    policy.save(tmp_path / "ckpt", tokenizer)
    assert (tmp_path / "ckpt" / "value_model" / "config.json").is_file()


def test_weight_dtype_reaches_the_policy_and_its_reference(tmp_path):
    from reftkit.config.schema import ModelConfig, ReFTConfig
    from reftkit.models.policy import reference_model
    from reftkit.models.trainable import load_trainable_lm

    path = build_tiny(TEXTS, SMALL, tmp_path / "tiny", seed=0)
    tokenizer = load_tokenizer(path)
    assert {p.dtype for p in load_causal_lm(path, tokenizer).parameters()} == {torch.float32}  # the default
    policy = load_trainable_lm(path, tokenizer, ModelConfig(dtype="bfloat16"), seed=0)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    same = reference_model(path, tokenizer, ReFTConfig(), policy, torch.device("cpu"))
    assert {p.dtype for p in same.parameters()} == {torch.bfloat16}
    on_cpu = reference_model(path, tokenizer, ReFTConfig(ref_device="cpu"), policy, torch.device("cpu"))
    assert {p.dtype for p in on_cpu.parameters()} == {torch.float32}  # as documented for reft.ref_device=cpu
    policy.save_pretrained(tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").dtype == torch.bfloat16  # saved as trained


def test_policy_logits_from_a_position_equal_the_full_forwards_slice(tmp_path):
    """The LM head runs only from ``logits_from`` on (``logits_to_keep``); those logits are the full forward's."""
    path = build_tiny(TEXTS, SMALL, tmp_path / "tiny", seed=0)
    tokenizer = load_tokenizer(path)
    policy = PolicyWithValue(load_causal_lm(path, tokenizer), critic=False).eval()
    batch = left_pad(encode_prompts(tokenizer, ["Tom has 5 apples.", "He buys"]), tokenizer.pad_token_id)
    with torch.no_grad():
        full, _ = policy(batch.ids, batch.mask)
        kept, _ = policy(batch.ids, batch.mask, logits_from=3)
    assert kept.shape == (2, batch.ids.size(1) - 3, full.size(-1))
    torch.testing.assert_close(kept, full[:, 3:], atol=1e-5, rtol=1e-5)


def _rows_sharing_prompts(tokenizer, vocab):
    """Five rows on two left-padded prompts (rows 0, 2, 3 on the first, 1 and 4 on the second), each with a
    right-padded response of its own length: the layout of k samples per question."""
    prompts = left_pad(encode_prompts(tokenizer, ["Tom has 5 apples. He buys 3 more.", "Tom"]), tokenizer.pad_token_id)
    rows = torch.tensor([0, 1, 0, 0, 1])
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(3, vocab, (5, 6), generator=generator)
    response_mask = (torch.arange(6)[None] < torch.tensor([6, 3, 1, 6, 4])[:, None]).long()
    ids = torch.cat([prompts.ids[rows], responses], dim=1)
    mask = torch.cat([prompts.mask[rows], response_mask], dim=1)
    return ids, mask, prompts.ids.size(1)


@pytest.mark.parametrize("last", [True, False])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_rows_sharing_a_prompt_run_it_once_with_the_same_logits_hidden_states_and_gradients(tmp_path, arch, last):
    """``forward_from`` runs a prompt its rows share once and the rest of each row on its gathered cache: logits,
    hidden states and every parameter's gradient equal one forward over every row (float32; the gradients to
    1e-5 of each one's largest entry), with or without the last position."""
    config_cls, kwargs = ARCHS[arch]
    path = save_arch(tmp_path, config_cls, **kwargs)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer).eval()
    ids, mask, width = _rows_sharing_prompts(tokenizer, model.config.vocab_size)
    shapes = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    positions = ids.size(1) - width + (1 if last else 0)
    weights = torch.randn(ids.size(0), positions, generator=torch.Generator().manual_seed(1))

    def run(share):
        model.zero_grad()
        shapes.clear()
        logits, hidden = forward_from(model, ids, mask, width - 1, hidden=True, share_prefix=share, last=last)
        loss = (logits.log_softmax(-1)[..., 5] * weights).sum() + (hidden.sum(-1) * weights).sum()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), hidden.detach(), grads, list(shapes)

    logits, hidden, grads, shared_shapes = run(True)
    plain_logits, plain_hidden, plain_grads, plain_shapes = run(False)
    # under autograd one embedding lookup: the two distinct prompts once, then the five responses
    assert shared_shapes == [(2 * width + 5 * (ids.size(1) - width),)]
    assert plain_shapes == [tuple(ids.shape)]
    assert logits.shape == plain_logits.shape == (5, positions, model.config.vocab_size)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, plain_hidden, atol=1e-5, rtol=1e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for name, grad in grads.items():
        scale = float(plain_grads[name].abs().max())  # float32 rounding relative to the gradient's size; a key
        tolerance = max(1e-5 * scale, 1e-6)  # bias's gradient is 0 in exact arithmetic, its rounding ~1e-9
        torch.testing.assert_close(grad, plain_grads[name], atol=tolerance, rtol=0, msg=name)


def test_a_checkpointed_policy_shares_prompts_under_autograd_bit_for_bit(tmp_path):
    """Checkpointed layers write the prompt's cache once and attend to it again when recomputed: logits, values and
    every gradient of a checkpointed policy on rows sharing prompts are the unchecked policy's, bit for bit."""
    path = build_tiny(TEXTS, SMALL, tmp_path / "tiny", seed=0)
    tokenizer = load_tokenizer(path)
    results = []
    for checkpointed in (False, True):
        lm = load_causal_lm(path, tokenizer)
        if checkpointed:
            enable_gradient_checkpointing(lm)
        policy = PolicyWithValue(lm).eval()
        torch.nn.init.normal_(policy.value_head.weight, generator=torch.Generator().manual_seed(0))
        ids, mask, width = _rows_sharing_prompts(tokenizer, lm.config.vocab_size)
        calls = []
        embedding = lm.get_input_embeddings()
        embedding.register_forward_hook(lambda module, args, out, calls=calls: calls.append(args[0].shape))
        logits, values = policy(ids, mask, logits_from=width - 1)
        (logits.float().logsumexp(-1).sum() + values.sum()).backward()
        assert calls == [(2 * width + 5 * (ids.size(1) - width),)]  # the shared path: one lookup, prompts once
        grads = {name: p.grad for name, p in policy.named_parameters() if p.grad is not None}
        results.append((logits.detach(), values.detach(), grads))
    (plain_logits, plain_values, plain_grads), (logits, values, grads) = results
    assert torch.equal(logits, plain_logits) and torch.equal(values, plain_values)
    assert grads.keys() == plain_grads.keys() and all(torch.equal(grads[n], plain_grads[n]) for n in grads)
