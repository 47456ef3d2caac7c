"""The one place answers are extracted and graded: SFT evaluation, RL reward, voting and reranking all use it.

The reference applied ``float()`` to the raw text after the trigger, so "1,000" or "$5" scored as no
answer, and ran programs unsandboxed, cut at the first blank line (REFERENCE.md A.1, C, F.6). Here
numbers are parsed leniently but never guessed: an N-CoT answer must follow the answer trigger, and a
P-CoT answer is what ``solution()`` returns, run as written in :mod:`reftkit.sandbox`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from reftkit.sandbox import ProgramResult, run_programs
from reftkit.tasks.base import Problem, full_program

# Optional sign and "$", then a fraction (optionally mixed, "-1 1/2") or a decimal with optional thousands
# separators and exponent. Commas must group exactly three digits, so "1,2" is not one number.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+]?)\$?"
    r"(?:(?:(?P<whole>\d+)\s+)?(?P<num>\d+)/(?P<den>\d+)"
    r"|(?P<decimal>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))"
)
# ANSWER_TRIGGER ("\nTherefore, the answer is: ") and the gold SVAMP form "Therefore, the answer is <203>."
_TRIGGER = re.compile(r"therefore\s*,?\s*the\s+answer\s+is\b\s*:?", re.IGNORECASE)


class Outcome(StrEnum):
    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    PROGRAM_ERROR = "program_error"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Graded:
    outcome: Outcome
    prediction: float | None  # the normalised extracted answer (for voting), None when there is none


@dataclass(frozen=True)
class RewardTable:
    """Reward per outcome class (REFERENCE.md A.3: 1 / 0.1 / 0). partial_reward=False turns 'wrong' into 0."""

    correct: float = 1.0
    wrong: float = 0.1
    no_answer: float = 0.0
    program_error: float = 0.0
    timeout: float = 0.0
    partial_reward: bool = True

    def reward(self, outcome: Outcome) -> float:
        if outcome == Outcome.WRONG and not self.partial_reward:
            return 0.0
        return getattr(self, Outcome(outcome).value)  # the field names are the outcome values


def parse_number(text: str) -> float | None:
    """The number a whole string states ("$1,250.", "<203>", "25%", "3/4", "-1e3"), or None.

    A percent is read as the number shown ("25%" -> 25.0), as in the reference. Words, "nan" and "inf"
    are not numbers, and neither is a bool.
    """
    if not isinstance(text, str):
        return None
    text = text.strip().rstrip(".").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    match = _NUMBER.fullmatch(text.removesuffix("%").strip())
    return _match_value(match) if match else None


def extract_nl_answer(completion: str) -> float | None:
    """The first number on the first non-blank line after the LAST answer trigger, or None.

    There is deliberately no fallback to the last number in the text: that would reward chains that never
    commit to an answer.
    """
    triggers = list(_TRIGGER.finditer(completion))
    if not triggers:
        return None
    tail = completion[triggers[-1].end() :].lstrip()
    match = _NUMBER.search(tail.split("\n", 1)[0])
    return _match_value(match) if match else None


def answers_match(prediction: float, gold: str | float, tolerance: float = 1e-2) -> bool:
    """|prediction - gold| <= tolerance (the reference's 1e-2); NaN and infinities never match.

    Raises ValueError for a gold answer that is not a number: that is a data error, not a wrong answer.
    """
    reference = parse_number(gold) if isinstance(gold, str) else _finite(gold)
    if isinstance(gold, str) and reference is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    value = _finite(prediction)
    return value is not None and reference is not None and abs(value - reference) <= tolerance


def grade_nl(completion: str, gold: str) -> Graded:
    prediction = extract_nl_answer(completion)
    return _graded_number(prediction, gold)


def grade_python(problems: Sequence[Problem], completions: Sequence[str], timeout: float = 2.0) -> list[Graded]:
    """Grade P-CoT completions (program bodies) by running them all in one sandbox call."""
    programs = [full_program(p, c) for p, c in zip(problems, completions, strict=True)]
    results = run_programs(programs, timeout=timeout)
    return [_graded_result(r, p.answer) for r, p in zip(results, problems, strict=True)]


def grade(problems: Sequence[Problem], completions: Sequence[str], cot: str, timeout: float = 2.0) -> list[Graded]:
    if cot == "python":
        return grade_python(problems, completions, timeout=timeout)
    if cot == "nl":
        return [grade_nl(c, p.answer) for p, c in zip(problems, completions, strict=True)]
    raise ValueError(f"unknown CoT style {cot!r}; expected 'nl' or 'python'")


def outcome_counts(graded: Iterable[Graded]) -> dict[str, int]:
    """How many of each outcome, every outcome present (zeros included) so logs have a fixed schema."""
    counts = dict.fromkeys((o.value for o in Outcome), 0)
    for g in graded:
        counts[g.outcome.value] += 1
    return counts


def _match_value(match: re.Match[str]) -> float | None:
    sign = -1.0 if match["sign"] == "-" else 1.0
    try:
        if match["den"] is None:
            value = float(match["decimal"].replace(",", ""))
        elif int(match["den"]) == 0:
            return None
        else:
            value = int(match["whole"] or 0) + int(match["num"]) / int(match["den"])
    except (ValueError, OverflowError):  # absurdly long digit strings
        return None
    return _finite(sign * value)


def _finite(value: object) -> float | None:
    """``value`` as a finite float; None for bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _graded_number(prediction: float | None, gold: str) -> Graded:
    if prediction is None:
        return Graded(Outcome.NO_ANSWER, None)
    outcome = Outcome.CORRECT if answers_match(prediction, gold) else Outcome.WRONG
    # Rounded so that 0.1 + 0.2 and 0.3 vote together.
    return Graded(outcome, round(prediction, 6))


def _graded_result(result: ProgramResult, gold: str) -> Graded:
    if result.status == "timeout":
        return Graded(Outcome.TIMEOUT, None)
    if result.status != "ok":
        return Graded(Outcome.PROGRAM_ERROR, None)
    return _graded_number(_finite(result.value), gold)
