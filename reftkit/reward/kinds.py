"""The registry of answer kinds: everything that differs between numeric, multiple-choice and LaTeX answers.

Grading, data checks, configuration and the MCQ reward-hacking figure ask the kind instead of testing an
answer type's name, so a new kind of answer is one entry in :data:`ANSWER_KINDS` (and its name in
:data:`AnswerType`); nothing else branches on it. Tasks name their kind (``TaskInfo.answer_type``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from reftkit.reward.choices import (
    canonical_letter,
    chain_disagrees_with_choice,
    extract_mcq_answer,
    gold_letter,
    letter_from_program,
    parse_options,
)
from reftkit.reward.latex import (
    canonical_math,
    extract_math_answer,
    math_answers_equal,
    math_from_program,
    math_vote_key,
)
from reftkit.reward.numbers import answers_match, canonical_number, extract_nl_answer, number_from_program

AnswerType = Literal["numeric", "mcq", "math"]
Answer = float | str
"""An extracted answer: a number, an option letter, or a normalised LaTeX string."""


@dataclass(frozen=True)
class AnswerKind:
    """How answers of one type are read from completions and programs, judged, and checked in data."""

    name: AnswerType
    gold_description: str
    """What a dataset's gold answer must be, for the message naming a bad record."""
    extract: Callable[[str, str | None], Answer | None]
    """The answer a natural-language completion commits to, given its question (None: unknown), or None."""
    from_program: Callable[[object, str | None], Answer | None]
    """The answer a P-CoT ``solution()`` returned (str, int, float, bool or None), given the question, or None."""
    judge: Callable[[Any, str | float], bool]
    """Whether an extracted answer is the gold one; ValueError for a gold answer this kind cannot have."""
    normalise: Callable[[Any], Answer]
    """The answer as ``Graded`` keeps it: what majority voting groups on."""
    canonical_gold: Callable[[Any], str | None]
    """A dataset's gold answer as the string targets and grading use, or None when it is none of this kind."""
    chain_disagrees: Callable[[str, str, Any], bool | None] | None = None
    """Whether a chain computed something other than the answer it chose (reward hacking), per completion;
    None for kinds where the answer is what the chain computed."""


def _options(question: str | None) -> dict[str, str]:
    return parse_options(question) if question else {}


ANSWER_KINDS: dict[AnswerType, AnswerKind] = {
    "numeric": AnswerKind(
        "numeric",
        "a number",
        extract=lambda completion, question: extract_nl_answer(completion),
        from_program=lambda value, question: number_from_program(value),
        judge=answers_match,
        normalise=lambda answer: round(answer, 6),  # so that 0.1 + 0.2 and 0.3 vote together
        canonical_gold=canonical_number,
    ),
    "mcq": AnswerKind(
        "mcq",
        "an option letter a-e",
        extract=lambda completion, question: extract_mcq_answer(completion, _options(question)),
        from_program=lambda value, question: letter_from_program(value, _options(question)),
        judge=lambda answer, gold: answer == gold_letter(gold),
        normalise=lambda answer: answer,
        canonical_gold=canonical_letter,
        chain_disagrees=chain_disagrees_with_choice,
    ),
    "math": AnswerKind(
        "math",
        "a LaTeX answer or a number",
        extract=lambda completion, question: extract_math_answer(completion),
        from_program=lambda value, question: math_from_program(value),
        judge=math_answers_equal,
        normalise=math_vote_key,
        canonical_gold=canonical_math,
    ),
}


def answer_kind(answer_type: str) -> AnswerKind:
    """The kind of an answer type's name; ValueError listing the names for an unknown one."""
    if answer_type not in ANSWER_KINDS:
        raise ValueError(f"unknown answer type {answer_type!r}; expected one of {', '.join(ANSWER_KINDS)}")
    return ANSWER_KINDS[answer_type]  # type: ignore[index]
