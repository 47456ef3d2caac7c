"""Greedy evaluation: the accuracy a checkpoint is selected by (validation) and reported with (test)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.answers import Graded, frac_correct_chain_disagrees, grade_batch, outcome_counts
from reftkit.config import EvalConfig
from reftkit.rollout import decode_responses, encode_prompts, generate, left_pad
from reftkit.tasks.base import AnswerType, CoT, Problem, prompt_text


@dataclass
class EvalResult:
    accuracy: float
    counts: dict[str, int]
    mean_length: float
    completions: list[str]
    graded: list[Graded]
    frac_correct_chain_disagrees: float | None = None  # MCQ only: right letter after a chain that disagrees


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cot: CoT,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    desc: str | None = None,
) -> tuple[list[str], list[int]]:
    """Completions (and their token lengths) in input order; batches are sorted by prompt length."""
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in problems])
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    lengths: list[int] = [0] * len(prompts)
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=desc is None):
        rows = order[start : start + batch_size]
        responses = generate(
            model,
            left_pad([prompts[i] for i in rows], tokenizer.pad_token_id),
            max_new_tokens=max_new_tokens,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            temperature=temperature,
            generator=generator,
        )
        for row, text, length in zip(
            rows, decode_responses(tokenizer, responses), responses.mask.sum(1).tolist(), strict=True
        ):
            texts[row] = text
            lengths[row] = int(length)
    model.train(was_training)
    return texts, lengths


def evaluate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cot: CoT,
    settings: EvalConfig,
    desc: str | None = None,
    answer_type: AnswerType = "numeric",
) -> EvalResult:
    texts, lengths = sample_completions(
        model, tokenizer, problems, cot, settings.max_new_tokens, settings.batch_size, desc=desc
    )
    graded = grade_batch(problems, texts, cot, answer_type, timeout=settings.program_timeout)
    counts = outcome_counts(graded)
    hacking = None
    if answer_type == "mcq":
        hacking = frac_correct_chain_disagrees(graded, texts, [p.question for p in problems])
    return EvalResult(
        accuracy=counts["correct"] / max(len(problems), 1),
        counts=counts,
        mean_length=sum(lengths) / max(len(lengths), 1),
        completions=texts,
        graded=graded,
        frac_correct_chain_disagrees=hacking,
    )
