"""The outcome reward model: its training data, its inputs, and that it learns a separable toy set."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from reftkit.config.schema import ConfigError, RewardModelConfig, TinyModelConfig
from reftkit.data.base import Problem, prompt_text
from reftkit.evaluation.sampling import Sample
from reftkit.models.loading import build_tiny, load_tokenizer
from reftkit.trainers.common import MetricsLog, make_accelerator
from reftkit.trainers.reward_model import (
    encode_texts,
    load_reward_model,
    rm_examples,
    score_samples,
    train_reward_model,
)

PROBLEMS = {f"q{i}": Problem(f"q{i}", f"Tom has {i} apples. He buys {i + 2} more.", str(2 * i + 2)) for i in range(4)}
SMALL = TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)


def sample(qid: str, n: int, completion: str, correct: bool, answer: float | None = 1.0) -> Sample:
    outcome = "correct" if correct else "wrong"
    return Sample(qid, n, completion, answer, outcome, -1.0, 5, PROBLEMS[qid].answer)


def toy_samples(qids: list[str], good_first: bool = True) -> list[Sample]:
    """Per question two 'good' (correct) and two 'bad' (wrong) completions, interleaved."""
    good = [(n % 2 == 0) == good_first for n in range(4)]
    return [
        sample(qid, n, f"    x = {n}\n    return x  # {'good' if good[n] else 'bad'}", good[n], float(n))
        for qid in qids
        for n in range(4)
    ]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    texts = [prompt_text(PROBLEMS[s.id], "python") + s.completion for s in toy_samples(list(PROBLEMS))]
    return build_tiny(texts * 5, SMALL, tmp_path_factory.mktemp("tiny") / "lm", seed=0)


def test_examples_are_deduplicated_per_question_and_labelled_by_correctness():
    samples = [
        sample("q0", 0, "A", correct=True),
        sample("q0", 1, "A", correct=False),  # same text as sample 0 of q0: dropped, the first one is kept
        sample("q0", 2, "B", correct=False),
        sample("q1", 0, "A", correct=False),  # same text, other question: kept
    ]
    examples = rm_examples(PROBLEMS, samples, "nl")
    assert examples == [
        ("Question:\nTom has 0 apples. He buys 2 more.\nAnswer reasoning:\nA", 1),
        ("Question:\nTom has 0 apples. He buys 2 more.\nAnswer reasoning:\nB", 0),
        ("Question:\nTom has 1 apples. He buys 3 more.\nAnswer reasoning:\nA", 0),
    ]
    python = rm_examples(PROBLEMS, samples[:1], "python")
    assert python == [(prompt_text(PROBLEMS["q0"], "python") + "A", 1)]
    assert python[0][0].endswith('def solution():\n    """Tom has 0 apples. He buys 2 more."""\nA')


def test_unknown_question_id_is_a_config_error():
    stray = Sample("q9", 0, "A", 1.0, "correct", -1.0, 1, "1")
    with pytest.raises(ConfigError, match="q9"):
        rm_examples(PROBLEMS, [stray], "nl")


def test_one_label_class_is_refused_before_loading_anything(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(ConfigError, match="both correct and wrong"):
        train_reward_model(
            tmp_path / "nowhere", [("a", 1), ("b", 1)], RewardModelConfig(), tmp_path / "rm", log,
            make_accelerator("auto"), seed=0,
        )  # fmt: skip


def test_missing_reward_model_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        load_reward_model(tmp_path / "nowhere")


def test_inputs_are_cut_from_the_left(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    text = prompt_text(PROBLEMS["q1"], "python") + "    return 4  # good"
    full = tokenizer(text)["input_ids"]
    assert len(full) > 6
    assert encode_texts(tokenizer, [text, "x"], 6) == [full[-6:], tokenizer("x")["input_ids"]]


def test_reward_model_learns_a_separable_set_and_reranks(tiny_dir, tmp_path):
    torch.manual_seed(0)
    train = toy_samples(["q0", "q1", "q2"])
    examples = rm_examples(PROBLEMS, train, "python")
    assert len(examples) == 12 and sum(label for _, label in examples) == 6
    val_problems = {"q3": PROBLEMS["q3"]}
    val_samples = toy_samples(["q3"], good_first=False)  # a tie would pick a bad one
    cfg = RewardModelConfig(epochs=3, lr=1e-2, batch_size=4, max_length=128)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    out = tmp_path / "rm"
    result = train_reward_model(
        tiny_dir, examples, cfg, out, log, make_accelerator("auto"), seed=0, val=(val_problems, val_samples)
    )
    assert result["dir"] == str(out) and result["examples"] == 12 and result["positives"] == 6
    assert result["best_epoch"] in (1, 2, 3) and 0.0 <= result["val_rerank_acc"] <= 1.0

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["stage"] == "rm"]
    evals = [r for r in records if r["stage"] == "rm_eval"]
    assert len(steps) == 3 * 3 and [r["step"] for r in steps] == list(range(1, 10))
    assert all(r["loss"] >= 0 and 0 <= r["acc"] <= 1 for r in steps)
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert all(0.0 <= r["val_rerank_acc"] <= 1.0 and 0.0 <= r["val_vote_acc"] <= 1.0 for r in evals)
    assert result["val_rerank_acc"] == max(r["val_rerank_acc"] for r in evals)

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 2
    model, tokenizer = load_reward_model(out)
    model.train()
    scores = score_samples(model, tokenizer, PROBLEMS, train + val_samples, "python", batch_size=5)
    assert model.training  # the mode is restored
    assert all(0.0 <= p <= 1.0 for p in scores)
    good = [p for s, p in zip(train + val_samples, scores, strict=True) if s.correct]
    bad = [p for s, p in zip(train + val_samples, scores, strict=True) if not s.correct]
    assert min(good) > 0.5 > max(bad)
    assert sum(good) / len(good) > sum(bad) / len(bad) + 0.5
    assert result["val_rerank_acc"] == 1.0  # q3's top-scored sample is a 'good' one

    # input order and padding do not change a score: one at a time, reversed, gives the same numbers
    one_by_one = score_samples(model, tokenizer, PROBLEMS, (train + val_samples)[::-1], "python", batch_size=1)
    torch.testing.assert_close(one_by_one[::-1], scores, atol=1e-5, rtol=1e-5)


def test_without_val_the_last_epoch_is_saved(tiny_dir, tmp_path):
    examples = rm_examples(PROBLEMS, toy_samples(["q0"]), "nl")
    log = MetricsLog(tmp_path / "metrics.jsonl")
    cfg = RewardModelConfig(epochs=1, lr=1e-3, batch_size=8, max_length=64)
    result = train_reward_model(
        tiny_dir, examples, cfg, tmp_path / "rm", log, make_accelerator("auto"), seed=0, cot="nl"
    )
    assert result["best_epoch"] == 1 and result["val_rerank_acc"] is None
    assert (tmp_path / "rm" / "config.json").is_file()
    assert not any(r.startswith('{"stage": "rm_eval"') for r in (tmp_path / "metrics.jsonl").read_text().splitlines())
