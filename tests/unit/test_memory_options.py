"""Memory options for bigger models, on a tiny Llama: LoRA (policy, value, SFT), gradient checkpointing in
train and eval mode, and a reference model on the CPU or as the policy with its adapters switched off."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from reftkit.config.loading import dump_yaml, load_config
from reftkit.config.schema import ConfigError, LoraConfig, ModelConfig, ReFTConfig, TinyModelConfig
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer
from reftkit.models.policy import PolicyWithValue, position_ids_from_mask, reference_model
from reftkit.models.trainable import (
    decoder_layers,
    enable_gradient_checkpointing,
    load_trainable_lm,
    trainable_parameters,
)
from reftkit.rollout.base import GenerationConfig
from reftkit.rollout.generate import encode_prompts, generate, left_pad
from reftkit.trainers.common import make_accelerator

SMALL = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
TEXTS = ["Question:\nTom has 5 apples. He buys 3 more.\nAnswer reasoning:\n    a = 5\n    return a + 3"] * 20
LORA = ModelConfig(lora=LoraConfig(enabled=True, r=4, alpha=8.0))
GC = ModelConfig(gradient_checkpointing=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny(TEXTS, SMALL, tmp_path_factory.mktemp("tiny"), seed=0)
    return path, load_tokenizer(path)


def batch(tokenizer):
    prompts = encode_prompts(tokenizer, ["Tom has 5 apples. He buys 3 more.", "Tom has 5"])
    return left_pad(prompts, tokenizer.pad_token_id)


def _logits(model, b):
    return model(input_ids=b.ids, attention_mask=b.mask, position_ids=position_ids_from_mask(b.mask)).logits


def ppo_like_step(policy, b, lr=1e-2):
    """One optimizer step on a loss that moves both the policy and the value head."""
    optimizer = torch.optim.AdamW(policy.param_groups(lr, lr))
    out, values = policy(b.ids, b.mask)
    loss = out.float().logsumexp(-1).mean() + (values - 1).pow(2).mean()
    loss.backward()
    optimizer.step()
    return optimizer


# ---- config ----


def test_config_fields_parse_from_overrides_and_yaml(tmp_path):
    config = load_config(
        "micro",
        None,
        [
            "model.lora.enabled=true",
            "model.lora.r=4",
            "model.lora.alpha=32",
            "model.lora.target_modules=q_proj,v_proj",
            "model.gradient_checkpointing=true",
            "reft.ref_model=lora_off",
        ],
    )
    lora = config.model.lora
    assert (lora.enabled, lora.r, lora.alpha, lora.dropout) == (True, 4, 32.0, 0.0)
    assert lora.target_modules == "q_proj,v_proj"
    assert isinstance(lora.alpha, float)
    assert config.model.gradient_checkpointing and config.reft.ref_model == "lora_off"
    assert config.reft.ref_device == "same"
    path = tmp_path / "c.yaml"
    path.write_text(
        "model:\n  lora: {enabled: true, dropout: 0.05}\n  gradient_checkpointing: true\nreft:\n  ref_device: cpu\n"
    )
    from_yaml = load_config("micro", path)
    assert from_yaml.model.lora.enabled and from_yaml.model.lora.dropout == 0.05 and from_yaml.reft.ref_device == "cpu"
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(dump_yaml(config))
    assert load_config(None, resolved) == config


def test_defaults_leave_every_option_off():
    config = load_config("default")
    assert not config.model.lora.enabled and not config.model.gradient_checkpointing
    assert (config.reft.ref_model, config.reft.ref_device) == ("copy", "same")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lora.r=0"], "model.lora.r: must be > 0"),
        (["model.lora.alpha=-1"], "model.lora.alpha: must be > 0"),
        (["model.lora.dropout=1"], r"model.lora.dropout: must be in \[0, 1\)"),
        (["model.lora.target_modules=' , '"], "model.lora.target_modules: give module names"),
        (["model.lora.alpah=3"], "did you mean model.lora.alpha"),
        (["model.gradient_checkpointing=maybe"], "model.gradient_checkpointing: expected true or false"),
        (["reft.ref_model=lora_off"], "reft.ref_model: lora_off needs model.lora.enabled=true"),
        (["reft.ref_device=gpu"], "reft.ref_device: 'gpu' is not one of same, cpu"),
        (["model.lora.enabled=true", "reft.ref_model=lora_off", "reft.ref_device=cpu"], "reft.ref_device: a lora_off"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("micro", None, overrides)


# ---- LoRA ----


def test_default_options_return_the_model_untouched(tiny):
    path, tokenizer = tiny
    model = load_trainable_lm(path, tokenizer, ModelConfig(), seed=0)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all("forward" not in vars(layer) for layer in decoder_layers(model))
    assert trainable_parameters(model) == list(model.parameters())


def test_lora_trains_only_adapters_and_the_value_head(tiny):
    path, tokenizer = tiny
    policy = PolicyWithValue(load_trainable_lm(path, tokenizer, LORA, seed=0))
    names = {id(p): n for n, p in policy.named_parameters()}
    groups = policy.param_groups(1e-3, 1e-3)
    policy_names = [names[id(p)] for p in groups[0]["params"]]
    assert policy_names and all(".lora_A." in n or ".lora_B." in n for n in policy_names)
    assert [names[id(p)] for p in groups[1]["params"]] == ["value_head.weight", "value_head.bias"]
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert any("embed_tokens" in n for n in frozen) and any("base_layer" in n for n in frozen)
    optimizer = ppo_like_step(policy, batch(tokenizer))
    stateful = {names[id(p)] for p in optimizer.state}
    assert stateful == set(policy_names) | {"value_head.weight", "value_head.bias"}
    after = dict(policy.named_parameters())
    assert all(torch.equal(after[n], w) for n, w in frozen.items())  # the base never moves
    assert all(after[n].grad is None for n in frozen)
    assert any(bool(after[n].abs().sum()) for n in policy_names if ".lora_B." in n)  # adapters start at B = 0
    assert bool(policy.value_head.weight.abs().sum())


def test_lora_init_is_seeded_and_leaves_the_global_rng_alone(tiny):
    path, tokenizer = tiny
    state = torch.get_rng_state()
    a = load_trainable_lm(path, tokenizer, LORA, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = load_trainable_lm(path, tokenizer, LORA, seed=3)
    c = load_trainable_lm(path, tokenizer, LORA, seed=4)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    key = next(k for k in sa if ".lora_A." in k)
    assert torch.equal(sa[key], sb[key]) and not torch.equal(sa[key], sc[key])


def test_merged_save_is_a_plain_hf_model_with_the_adapted_logits(tiny, tmp_path):
    path, tokenizer = tiny
    policy = PolicyWithValue(load_trainable_lm(path, tokenizer, LORA, seed=0)).eval()
    ppo_like_step(policy, batch(tokenizer))
    b = batch(tokenizer)
    with torch.no_grad():
        adapted, values = policy(b.ids, b.mask)
        base = _logits(load_causal_lm(path, tokenizer).eval(), b)
    policy.save(tmp_path / "ckpt", tokenizer)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k or "base_layer" in k for k in loaded.state_dict())
    with torch.no_grad():
        merged = _logits(loaded, b)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert (merged - base).abs().max() > 1e-3  # the adapters changed the model, and the save kept that
    reloaded = PolicyWithValue(loaded)
    assert reloaded.load_value_head(tmp_path / "ckpt")
    torch.testing.assert_close(reloaded(b.ids, b.mask)[1], values, atol=1e-5, rtol=1e-5)


def test_separate_value_model_is_saved_merged_too(tiny, tmp_path):
    path, tokenizer = tiny
    policy = PolicyWithValue(
        load_trainable_lm(path, tokenizer, LORA, seed=0), load_trainable_lm(path, tokenizer, LORA, seed=0)
    )
    groups = policy.param_groups(1e-3, 1e-3)
    names = {id(p): n for n, p in policy.named_parameters()}
    value_names = [names[id(p)] for p in groups[1]["params"]]
    assert value_names[-2:] == ["value_head.weight", "value_head.bias"]
    assert value_names[:-2] and all(n.startswith("value_lm.") and ".lora_" in n for n in value_names[:-2])
    ppo_like_step(policy, batch(tokenizer))
    policy.save(tmp_path / "ckpt", tokenizer)
    AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "value_model")


def test_resume_state_dict_restores_a_lora_model_exactly(tiny):
    """What a resume does with ``model.state_dict()``: rebuilt with other adapters, loaded, identical."""
    path, tokenizer = tiny
    policy = PolicyWithValue(load_trainable_lm(path, tokenizer, LORA, seed=0)).eval()
    ppo_like_step(policy, batch(tokenizer))
    rebuilt = PolicyWithValue(load_trainable_lm(path, tokenizer, LORA, seed=1)).eval()
    rebuilt.load_state_dict(policy.state_dict())  # strict: every key, adapters and frozen base alike
    b = batch(tokenizer)
    with torch.no_grad():
        for x, y in zip(policy(b.ids, b.mask), rebuilt(b.ids, b.mask), strict=True):
            assert torch.equal(x, y)


# ---- reference model ----


def test_lora_off_reference_is_the_base_model_without_a_copy(tiny):
    path, tokenizer = tiny
    device = make_accelerator("auto").device
    policy = PolicyWithValue(load_trainable_lm(path, tokenizer, LORA, seed=0)).eval()
    ppo_like_step(policy, batch(tokenizer))
    ref = reference_model(path, tokenizer, ReFTConfig(ref_model="lora_off"), policy.lm, device)
    assert list(ref.parameters()) == [] and ref.state_dict() == {}  # no weights of its own
    b = batch(tokenizer)
    with torch.no_grad():
        adapted = _logits(policy.lm, b)
        ref_logits = _logits(ref, b)
        base = _logits(load_causal_lm(path, tokenizer).eval(), b)
        adapted_again = _logits(policy.lm, b)
    torch.testing.assert_close(ref_logits, base, atol=1e-6, rtol=1e-6)
    assert (adapted - base).abs().max() > 1e-3
    assert torch.equal(adapted, adapted_again)  # adapters are back on after the reference pass


def test_lora_off_reference_needs_lora(tiny):
    path, tokenizer = tiny
    plain = load_causal_lm(path, tokenizer)
    with pytest.raises(ConfigError, match=r"lora_off needs model\.lora\.enabled"):
        reference_model(path, tokenizer, ReFTConfig(ref_model="lora_off"), plain, torch.device("cpu"))


def test_reference_on_cpu_gives_the_same_log_probs(tiny):
    path, tokenizer = tiny
    device = make_accelerator("auto").device
    policy_lm = load_causal_lm(path, tokenizer)
    same = reference_model(path, tokenizer, ReFTConfig(), policy_lm, device)
    on_cpu = reference_model(path, tokenizer, ReFTConfig(ref_device="cpu"), policy_lm, device)
    assert type(same).__name__ == "LlamaForCausalLM"  # the default is the plain model, as before
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    assert all(not p.requires_grad for p in on_cpu.parameters()) and not on_cpu.training
    b = batch(tokenizer)
    b.ids, b.mask = b.ids.to(device), b.mask.to(device)
    with torch.no_grad():
        out = _logits(on_cpu, b)
        assert out.device == b.ids.device
        torch.testing.assert_close(out, _logits(same, b), atol=1e-5, rtol=1e-5)


# ---- gradient checkpointing ----


class Counter:
    """Counts calls of a module inside a decoder layer; a checkpointed layer runs it again in backward. A pre-hook,
    since the non-reentrant recompute stops as soon as it has the saved tensors it needs (no post-hooks run)."""

    def __init__(self, module):
        self.n = 0
        module.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.n += 1


def forward_backward(policy, b):
    out, values = policy(b.ids, b.mask)
    (out.float().logsumexp(-1).mean() + (values - 1).pow(2).mean()).backward()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_checkpointing_recomputes_layers_in_backward_in_eval_and_train_mode(tiny, mode):
    path, tokenizer = tiny
    b = batch(tokenizer)
    runs = {}
    for name, cfg in (("plain", ModelConfig()), ("checkpointed", GC)):
        torch.manual_seed(0)
        policy = PolicyWithValue(load_trainable_lm(path, tokenizer, cfg, seed=0)).train(mode == "train")
        counters = [Counter(layer.mlp) for layer in decoder_layers(policy.lm)]
        forward_backward(policy, b)
        runs[name] = ([c.n for c in counters], {n: p.grad for n, p in policy.named_parameters()})
    assert runs["plain"][0] == [1, 1]
    assert runs["checkpointed"][0] == [2, 2]  # one forward, one recompute in backward, for every layer
    for name, grad in runs["plain"][1].items():  # the same gradients: the recompute is exact
        torch.testing.assert_close(runs["checkpointed"][1][name], grad, atol=1e-6, rtol=1e-5)


def test_checkpointing_is_off_without_grad_and_generation_keeps_its_kv_cache(tiny):
    path, tokenizer = tiny
    plain = load_causal_lm(path, tokenizer).eval()
    checkpointed = load_trainable_lm(path, tokenizer, GC, seed=0).eval()
    counter = Counter(decoder_layers(checkpointed)[0].mlp)
    b = batch(tokenizer)
    with torch.no_grad():
        out = checkpointed(input_ids=b.ids, attention_mask=b.mask, use_cache=True)
    assert counter.n == 1 and out.past_key_values.get_seq_length() == b.ids.size(1)
    args = (24, tokenizer.eos_token_id, tokenizer.pad_token_id)
    sampled = [
        generate(m, b, GenerationConfig(*args, temperature=1.0), generator=torch.Generator().manual_seed(0))
        for m in (plain, checkpointed)
    ]
    assert torch.equal(sampled[0].ids, sampled[1].ids) and torch.equal(sampled[0].mask, sampled[1].mask)


def test_checkpointing_with_lora_gives_the_adapters_their_gradients(tiny):
    path, tokenizer = tiny
    b = batch(tokenizer)
    grads = []
    for cfg in (LORA, ModelConfig(lora=LORA.lora, gradient_checkpointing=True)):
        policy = PolicyWithValue(load_trainable_lm(path, tokenizer, cfg, seed=0)).eval()
        with torch.no_grad():  # B = 0 at init: give B some weight so that A gets a gradient too
            for name, p in policy.named_parameters():
                if ".lora_B." in name:
                    p.fill_(0.01)
        counter = Counter(decoder_layers(policy.lm)[0].mlp)
        forward_backward(policy, b)
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.requires_grad})
    assert counter.n == 2
    assert all(g is not None and bool(g.abs().sum()) for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_checkpointing_never_turns_on_dropout_written_inside_a_layer(tmp_path, tiny):
    """OPT's decoder layer applies dropout with its own ``training`` flag: checkpointing must leave it off."""
    _, tokenizer = tiny
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
        word_embed_proj_dim=32, max_position_embeddings=128, dropout=0.5, attention_dropout=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "opt")
    tokenizer.save_pretrained(tmp_path / "opt")
    plain = load_causal_lm(tmp_path / "opt", tokenizer).eval()
    checkpointed = load_causal_lm(tmp_path / "opt", tokenizer).eval()
    enable_gradient_checkpointing(checkpointed)
    b = batch(tokenizer)
    first, second = _logits(checkpointed, b), _logits(checkpointed, b)
    assert first.requires_grad and torch.equal(first, second)  # no dropout, in eval mode
    torch.testing.assert_close(first, _logits(plain, b), atol=1e-6, rtol=1e-6)


def test_checkpointing_a_model_without_decoder_layers_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"model\.gradient_checkpointing: found no decoder layers"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
