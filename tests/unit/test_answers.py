"""Answer parsing, extraction and grading: the single source of truth for accuracy and reward."""

from __future__ import annotations

import pytest

from reftkit.answers import (
    Graded,
    Outcome,
    RewardTable,
    answers_match,
    extract_nl_answer,
    grade,
    grade_nl,
    grade_python,
    outcome_counts,
    parse_number,
)
from reftkit.tasks.base import ANSWER_TRIGGER, Problem

PARSE_CASES = [
    ("42", 42.0),
    ("  42  ", 42.0),
    ("1,000", 1000.0),
    ("1,234,567.5", 1234567.5),
    ("1,2", None),  # not a thousands separator
    ("1,0000", None),
    ("$1,250", 1250.0),
    ("-$5", -5.0),
    ("25%", 25.0),  # a percent is the number shown, as in the reference
    ("18.", 18.0),
    ("<203>", 203.0),
    ("<203>.", 203.0),
    ("3/4", 0.75),
    ("-1 1/2", -1.5),
    ("1/0", None),
    ("-7", -7.0),
    ("+5", 5.0),
    ("-0.25", -0.25),
    (".5", 0.5),
    ("1e3", 1000.0),
    ("2.5E-2", 0.025),
    ("", None),
    ("twelve", None),
    ("nan", None),
    ("inf", None),
    ("1e999", None),
    ("5 apples", None),
]

EXTRACT_CASES = [
    ("So 3 + 3 = 6." + ANSWER_TRIGGER + "6", 6.0),
    ("Therefore, the answer is: $1,250.", 1250.0),
    ("Therefore, the answer is <203>.", 203.0),
    ("Therefore, the answer is 25%.", 25.0),
    ("Therefore the answer is -3/4 of a cup", -0.75),
    ("Therefore, the answer is:   1e3", 1000.0),
    ("Therefore, the answer is 18 dollars, since 3 + 15 = 18.", 18.0),
    ("Therefore, the answer is <203>." + ANSWER_TRIGGER + "204", 204.0),  # the last trigger wins
    ("Therefore, the answer is 5.\nThen 6 more.\nTherefore, the answer is: none", None),
    ("therefore, the answer is:\n  42\nand 7", 42.0),  # the first line after the trigger
    ("Therefore, the answer is: many.\nQuestion: 7 cats", None),
    ("The total is 12 apples.", None),  # no trigger: no fallback to the last number
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(("completion", "expected"), EXTRACT_CASES)
def test_extract_nl_answer(completion, expected):
    assert extract_nl_answer(completion) == expected


def test_parse_number_never_accepts_booleans():
    assert parse_number(True) is None


def test_answers_match_tolerance_edges():
    assert answers_match(6.009, "6")
    assert answers_match(5.991, 6.0)
    assert not answers_match(6.02, "6")
    assert answers_match(1000.0, "1,000")
    assert answers_match(6.5, "6", tolerance=0.5)


def test_answers_match_rejects_non_finite_and_booleans():
    assert not answers_match(float("nan"), "6")
    assert not answers_match(float("inf"), float("inf"))
    assert not answers_match(True, "1")
    with pytest.raises(ValueError, match="not a number"):
        answers_match(6.0, "six")


def test_reward_table():
    table = RewardTable()
    rewards = {o: table.reward(o) for o in Outcome}
    assert rewards == {"correct": 1.0, "wrong": 0.1, "no_answer": 0.0, "program_error": 0.0, "timeout": 0.0}
    strict = RewardTable(partial_reward=False)
    assert strict.reward(Outcome.WRONG) == 0.0
    assert strict.reward(Outcome.CORRECT) == 1.0


def test_outcome_counts_lists_every_outcome():
    graded = [Graded(Outcome.CORRECT, 6.0), Graded(Outcome.CORRECT, 6.0), Graded(Outcome.TIMEOUT, None)]
    assert outcome_counts(graded) == {
        "correct": 2,
        "wrong": 0,
        "no_answer": 0,
        "program_error": 0,
        "timeout": 1,
    }
    assert set(outcome_counts([]).values()) == {0}


def test_grade_nl():
    assert grade_nl("2 + 4 = 6" + ANSWER_TRIGGER + "6", "6") == Graded(Outcome.CORRECT, 6.0)
    assert grade_nl(ANSWER_TRIGGER + "7", "6") == Graded(Outcome.WRONG, 7.0)
    assert grade_nl("It is 6.", "6") == Graded(Outcome.NO_ANSWER, None)
    assert grade_nl(ANSWER_TRIGGER + "0.30000000000000004", "0.3").prediction == 0.3


def test_grade_python_end_to_end():
    problems = [
        Problem(id=str(i), question="Tom has 3 apples and doubles them. How many?", answer="6") for i in range(5)
    ]
    completions = [
        "    a = 3\n    result = a * 2\n    return result",
        "    a = 3\n    result = a + 2\n    return result",
        "    a = 3\n    result = a / 0\n    return result",
        "    return 'six'",
        "    while True:\n        pass",
    ]
    graded = grade_python(problems, completions, timeout=0.5)
    assert graded == [
        Graded(Outcome.CORRECT, 6.0),
        Graded(Outcome.WRONG, 5.0),
        Graded(Outcome.PROGRAM_ERROR, None),
        Graded(Outcome.NO_ANSWER, None),
        Graded(Outcome.TIMEOUT, None),
    ]


def test_grade_dispatches_on_cot_style():
    problem = Problem(id="p", question="What is 2 * 3?", answer="6")
    assert grade([problem], [ANSWER_TRIGGER + "6"], "nl") == [Graded(Outcome.CORRECT, 6.0)]
    assert grade([problem], ["    return 2 * 3"], "python") == [Graded(Outcome.CORRECT, 6.0)]
    with pytest.raises(ValueError, match="CoT"):
        grade([problem], ["6"], "latex")
