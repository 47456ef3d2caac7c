"""The rollout engine interface: config sections become one ``GenerationConfig``, ``make_engine`` picks the engine
of ``rollout_backend``, and evaluation, sample files and training rollouts sample through whatever engine they
are handed (here a scripted one, no model at all)."""

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from reftkit.config.schema import EvalConfig, ReFTConfig, SampleConfig
from reftkit.data.base import ANSWER_TRIGGER, Problem, prompt_text
from reftkit.evaluation.accuracy import evaluate_greedy
from reftkit.evaluation.sampling import sample_problems
from reftkit.rollout.base import Batch, GenerationConfig, Responses, generation_config
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import DecoderEngine, generate, left_pad
from reftkit.rollout.vllm_engine import VLLMEngine
from reftkit.trainers.common import sample_policy

PAD, EOS = 0, 1


class CharTokenizer:
    """One token per character (its code point); EOS and pad below every printable character."""

    eos_token_id, pad_token_id = EOS, PAD

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


class ScriptedEngine:
    """Answers each prompt with a fixed text (then EOS) and records what it was asked."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.calls = answers, []

    def generate(self, model, prompts: Batch, gen: GenerationConfig, k=1, generator=None) -> Responses:
        self.calls.append((prompts.unpadded(), gen, k, generator, model.training))
        rows = [[ord(c) for c in self.answers["".join(map(chr, p))]] + [gen.eos_id] for p in prompts.unpadded()]
        rows = [row for row in rows for _ in range(k)]
        width = max(map(len, rows))
        ids = torch.tensor([row + [gen.pad_id] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1.0] * len(row) + [0.0] * (width - len(row)) for row in rows])
        logprobs = -mask if gen.return_logprobs else None
        return Responses(ids, mask, torch.zeros(len(rows), dtype=torch.bool), logprobs)


PROBLEMS = [
    Problem("a", "What is 1 + 2 in all?", "3", None),
    Problem("b", "2 + 2?", "4", None),
    Problem("c", "And 5 - 1, finally?", "4", None),
]
ANSWERS = {prompt_text(p, "nl"): f"x{ANSWER_TRIGGER}{a}" for p, a in zip(PROBLEMS, ["3", "5", "4"], strict=True)}


def test_each_config_section_gives_its_generation_config():
    tokenizer = CharTokenizer()
    reft = ReFTConfig(temperature=0.7, top_k=5, top_p=0.9, max_new_tokens=33)
    assert GenerationConfig(33, EOS, PAD, 0.7, 5, 0.9) == generation_config(reft, tokenizer)
    sample = SampleConfig(temperature=1.2, top_k=0, top_p=0.5, max_new_tokens=None)
    assert generation_config(sample, tokenizer, 50) == GenerationConfig(50, EOS, PAD, 1.2, 0, 0.5)  # eval's limit
    assert generation_config(SampleConfig(max_new_tokens=12), tokenizer, 50).max_new_tokens == 12
    assert generation_config(EvalConfig(max_new_tokens=9), tokenizer) == GenerationConfig(9, EOS, PAD, temperature=0.0)


def test_make_engine_picks_by_rollout_backend():
    for backend in ("auto", "hf", "lean"):
        engine = make_engine(backend)
        assert isinstance(engine, DecoderEngine) and engine.decoder == backend
    with pytest.raises(ValueError, match="model directory"):
        make_engine("vllm")


def test_the_decoder_engine_samples_what_generate_samples():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    batch, gen = left_pad([[5, 6, 7], [8]], PAD), GenerationConfig(6, EOS, PAD, 0.9, top_k=7, return_logprobs=True)
    for decoder in ("hf", "lean"):
        ours = DecoderEngine(decoder).generate(model, batch, gen, 2, torch.Generator().manual_seed(4))
        plain = generate(model, batch, gen, 2, torch.Generator().manual_seed(4), decoder)
        assert torch.equal(ours.ids, plain.ids) and torch.equal(ours.logprobs, plain.logprobs)


def test_unpadded_prompts_are_what_was_padded():
    prompts = [[5, 6, 7], [8], []]
    assert left_pad(prompts, PAD).unpadded() == prompts


def test_greedy_evaluation_samples_through_the_engine_it_is_handed():
    model = torch.nn.Linear(1, 1).train()
    engine = ScriptedEngine(ANSWERS)
    result = evaluate_greedy(model, CharTokenizer(), PROBLEMS, "nl", EvalConfig(batch_size=2, max_new_tokens=7),
                             engine=engine)  # fmt: skip
    assert result.accuracy == pytest.approx(2 / 3) and result.counts["correct"] == 2
    assert result.completions == [ANSWERS[prompt_text(p, "nl")] for p in PROBLEMS]  # input order
    assert result.mean_length == pytest.approx(sum(len(a) + 1 for a in ANSWERS.values()) / 3)  # EOS counted
    asked = [[len(p) for p in prompts] for prompts, *_ in engine.calls]
    assert asked == [[len(prompt_text(PROBLEMS[1], "nl")), len(prompt_text(PROBLEMS[2], "nl"))],
                     [len(prompt_text(PROBLEMS[0], "nl"))]]  # batches of 2, shortest prompts first  # fmt: skip
    for _, gen, k, generator, training in engine.calls:
        assert gen == GenerationConfig(7, EOS, PAD, temperature=0.0) and k == 1 and generator is None
        assert not training  # in eval mode while sampling ...
    assert model.training  # ... and back in training mode after


def test_sample_files_ask_the_engine_for_n_samples_with_log_probs():
    engine = ScriptedEngine(ANSWERS)
    settings = SampleConfig(temperature=0.8, top_k=3, questions_per_batch=8)
    samples, _ = sample_problems(torch.nn.Linear(1, 1), CharTokenizer(), PROBLEMS, "nl", settings,
                                 EvalConfig(max_new_tokens=11), n=2, seed=0, engine=engine)  # fmt: skip
    ((_, gen, k, generator, _),) = engine.calls
    assert gen == GenerationConfig(11, EOS, PAD, 0.8, 3, 1.0, return_logprobs=True) and k == 2
    assert generator.initial_seed() == 0
    assert [(s.id, s.sample, s.correct) for s in samples] == [
        ("a", 0, True), ("a", 1, True), ("b", 0, False), ("b", 1, False), ("c", 0, True), ("c", 1, True)
    ]  # fmt: skip
    assert samples[0].logprob == -(len(ANSWERS[prompt_text(PROBLEMS[0], "nl")]) + 1)  # -1 per token, EOS too


def test_training_rollouts_repeat_each_prompt_for_its_samples():
    prompts = {"p": "ab", "q": "c"}
    tokenized = [[ord(c) for c in text] for text in prompts.values()]
    engine = ScriptedEngine({"ab": "x", "c": "yz"})
    gen, generator = GenerationConfig(5, EOS, PAD), torch.Generator()
    batch, responses = sample_policy(engine, torch.nn.Linear(1, 1), tokenized, [1, 0], gen, 3, generator,
                                     Accelerator(cpu=True))  # fmt: skip
    assert batch.unpadded() == [tokenized[1]] * 3 + [tokenized[0]] * 3
    assert responses.ids.size(0) == 6
    ((asked, seen_gen, k, seen_generator, _),) = engine.calls
    assert asked == [tokenized[1], tokenized[0]] and seen_gen == gen and k == 3 and seen_generator is generator


class FakeLLM:
    """What ``VLLMEngine`` uses of ``vllm.LLM``, recording each call: weight loading, cache reset, generation."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        model = SimpleNamespace(load_weights=lambda items: calls.append(("load", [name for name, _ in items])))
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset",))

    def generate(self, requests, params, use_tqdm=True):
        self.calls.append(("generate", [r["prompt_token_ids"] for r in requests], params))
        done = SimpleNamespace(token_ids=[7, EOS], finish_reason="stop")
        return [SimpleNamespace(outputs=[done] * params["n"]) for _ in requests]


def test_the_vllm_engine_syncs_the_policy_before_every_rollout(monkeypatch):
    """Without vLLM: the engine pushes the current weights and resets its prefix cache before sampling, passes the
    unpadded prompts, and maps the settings (top_k 0 is vLLM's -1) with a seed drawn from the generator."""
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams, vllm.TokensPrompt = dict, dict
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    calls: list = []
    engine = object.__new__(VLLMEngine)  # no vLLM to start: only its LLM object is faked
    engine.llm = FakeLLM(calls)
    model, gen = torch.nn.Linear(2, 2), GenerationConfig(9, EOS, PAD, 0.7, 0, 0.9)
    for _ in range(2):
        out = engine.generate(model, left_pad([[5, 6], [7]], PAD), gen, 2, torch.Generator().manual_seed(0))
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(0)))
    params = dict(n=2, temperature=0.7, top_k=-1, top_p=0.9, max_tokens=9, stop_token_ids=[EOS], seed=seed)
    rollout = [("load", ["weight", "bias"]), ("reset",), ("generate", [[5, 6], [7]], params)]
    assert calls == rollout * 2
    assert out.ids.tolist() == [[7, EOS]] * 4 and not out.truncated.any()
    with pytest.raises(ValueError, match="log-probs"):
        engine.generate(model, left_pad([[5]], PAD), GenerationConfig(9, EOS, PAD, return_logprobs=True), 1,
                        torch.Generator())  # fmt: skip
