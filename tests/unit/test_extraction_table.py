"""The grading table: one row per case that extraction must get right, through the public ``grade``.

A row is (completion, gold, task, cot, expected outcome, expected answer). Numeric tasks grade against
``NUMERIC_QUESTION`` and MCQ against ``MCQ_QUESTION`` (the rhombus of REFERENCE.md A.4, options
a ) 108 , b ) 120 , c ) 198 , d ) 172 , e ) none of these). The comment on a row says what it pins down,
including the deliberate decisions ("5 - 3" answers 5; "1,2" is no answer).
"""

from __future__ import annotations

import pytest

from reftkit.data.registry import answer_type_of
from reftkit.reward.answers import RewardTable, grade

T = "\nTherefore, the answer is: "  # ANSWER_TRIGGER
NUMERIC_QUESTION = "Tom has 3 apples and doubles them. How many apples does he have?"
MCQ_QUESTION = "what is the area ?\na ) 108 , b ) 120 , c ) 198 , d ) 172 , e ) none of these"
PROGRAM_TIMEOUT = 0.5


def program(body: str) -> str:
    return "def solution():\n" + "".join(f"    {line}\n" for line in body.split("\n"))


ROWS = [
    # ---- N-CoT numeric: the trigger ----
    ("3 + 3 = 6." + T + "6", "6", "gsm8k", "nl", "correct", 6.0),
    ("3 + 3 = 6.\nTherefore, the answer is 6", "6", "gsm8k", "nl", "correct", 6.0),  # no colon
    ("THEREFORE, THE ANSWER IS: 6", "6", "gsm8k", "nl", "correct", 6.0),  # any case
    ("So 203.\nTherefore, the answer is <203>.", "203.0", "svamp", "nl", "correct", 203.0),  # gold SVAMP form
    ("Therefore, the answer is 5.\nNo, 6 more." + T + "6", "6", "gsm8k", "nl", "correct", 6.0),  # last wins
    ("Therefore, the answer is 6.\nWait." + T + "unknown", "6", "gsm8k", "nl", "no_answer", None),  # last has none
    ("So she has 6 apples.", "6", "gsm8k", "nl", "no_answer", None),  # no trigger: no last-number fallback
    ("", "6", "gsm8k", "nl", "no_answer", None),
    (T + "\n\n  6\n7", "6", "gsm8k", "nl", "correct", 6.0),  # the first non-blank line after the trigger
    (T + "see below\n6", "6", "gsm8k", "nl", "no_answer", None),  # ... and only that line
    # ---- N-CoT numeric: number formats ----
    (T + "1,000,000", "1000000", "gsm8k", "nl", "correct", 1000000.0),
    (T + "$1,250.50", "1250.5", "gsm8k", "nl", "correct", 1250.5),
    (T + "$ 5", "5", "gsm8k", "nl", "correct", 5.0),  # a space after the dollar sign
    (T + "10%", "10", "gsm8k", "nl", "correct", 10.0),  # a percent is the number shown
    (T + "18.", "18", "gsm8k", "nl", "correct", 18.0),  # trailing period
    (T + "3.", "3", "gsm8k", "nl", "correct", 3.0),
    (T + "18.0", "18", "gsm8k", "nl", "correct", 18.0),  # trailing ".0"
    (T + "**18**", "18", "gsm8k", "nl", "correct", 18.0),  # markdown bold
    (T + "18 dollars", "18", "gsm8k", "nl", "correct", 18.0),  # units after the number
    (T + "Rs.500", "500", "mathqa_numeric", "nl", "correct", 500.0),  # a currency before the number
    (T + "x = 12", "12", "gsm8k", "nl", "correct", 12.0),  # the first number on the line
    (T + "3/4", "0.75", "gsm8k", "nl", "correct", 0.75),
    (T + "2 1/2 cups", "2.5", "gsm8k", "nl", "correct", 2.5),  # mixed fraction
    (T + "1 / 3", "0.333", "mathqa_numeric", "nl", "correct", 0.333333),  # MathQA-tokenised fraction
    (T + "2/0", "2", "gsm8k", "nl", "no_answer", None),  # division by zero states no number
    (T + "-7", "-7", "gsm8k", "nl", "correct", -7.0),
    (T + "-.5", "-0.5", "gsm8k", "nl", "correct", -0.5),
    (T + "\u22123", "-3", "mathqa_numeric", "nl", "correct", -3.0),  # Unicode minus
    (T + "1e-3", "0.001", "gsm8k", "nl", "correct", 0.001),
    (T + "2.5E3", "2500", "gsm8k", "nl", "correct", 2500.0),
    (T + "1,2", "1.2", "gsm8k", "nl", "no_answer", None),  # decimal comma or a list: ambiguous, not a number
    (T + "1,0000", "10000", "gsm8k", "nl", "no_answer", None),  # a malformed separator is not 1,000
    (T + "5 - 3", "2", "gsm8k", "nl", "wrong", 5.0),  # no arithmetic: the first number stated
    (T + "twelve", "12", "gsm8k", "nl", "no_answer", None),  # number words are not read
    (T + "nan", "6", "gsm8k", "nl", "no_answer", None),
    (T + "6.009", "6", "gsm8k", "nl", "correct", 6.009),  # within the 1e-2 tolerance
    (T + "6.02", "6", "gsm8k", "nl", "wrong", 6.02),  # outside it
    (T + "0.30000000000000004", "0.3", "synthetic", "nl", "correct", 0.3),  # rounded so votes group
    (T + "7", "6", "numeric", "nl", "wrong", 7.0),  # an answer type instead of a task name
    # ---- N-CoT multiple choice: letter forms ----
    ("344 / 2 = 172." + T + "c", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "C", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "(c)", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "c )", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "c ) 198", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "option c", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "Option (B)", "c", "mathqa_mcq", "nl", "wrong", "b"),
    (T + "c.", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "**C**", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "[d]", "c", "mathqa_mcq", "nl", "wrong", "d"),
    (T + "d ) 198", "c", "mcq", "nl", "wrong", "d"),  # a letter wins over the number after it
    ("Therefore, the answer is a.\nNo." + T + "c", "c", "mathqa_mcq", "nl", "correct", "c"),  # last trigger
    (T + "e", "e", "mathqa_mcq", "nl", "correct", "e"),  # a valid letter whose option is not a number
    # ---- N-CoT multiple choice: numbers and non-letters ----
    (T + "198", "c", "mathqa_mcq", "nl", "correct", "c"),  # a number maps to the option with that value
    (T + "172.0", "c", "mathqa_mcq", "nl", "wrong", "d"),
    (T + "$198", "c", "mathqa_mcq", "nl", "correct", "c"),
    (T + "a total of 198", "c", "mathqa_mcq", "nl", "correct", "c"),  # the article "a" is no letter
    (T + "none of these.", "e", "mathqa_mcq", "nl", "correct", "e"),  # an option's own words
    (T + "200", "c", "mathqa_mcq", "nl", "no_answer", None),  # a number that no option states
    (T + "f", "c", "mathqa_mcq", "nl", "no_answer", None),  # not one of the question's letters
    (T + "I don't know", "c", "mathqa_mcq", "nl", "no_answer", None),
    ("The area is 198, so c ) 198", "c", "mathqa_mcq", "nl", "no_answer", None),  # no trigger
    # ---- P-CoT numeric ----
    (program("a = 3\nresult = a * 2\nreturn result"), "6", "svamp", "python", "correct", 6.0),  # whole program
    ("    a = 3\n    return a * 2\n", "6", "svamp", "python", "correct", 6.0),  # body after the header
    ("import math\n" + program("return math.sqrt(36)"), "6", "gsm8k", "python", "correct", 6.0),  # imports first
    (program("return 3 + 2"), "6", "svamp", "python", "wrong", 5.0),
    (program("return 'six'"), "6", "svamp", "python", "no_answer", None),  # a string that is no number
    (program("return '6'"), "6", "svamp", "python", "correct", 6.0),  # a numeric string is read
    (program("return None"), "6", "svamp", "python", "no_answer", None),
    (program("return True"), "1", "svamp", "python", "no_answer", None),  # a bool is not a number
    (program("return float('nan')"), "6", "svamp", "python", "no_answer", None),
    (program("from fractions import Fraction\nreturn Fraction(3, 4)"), "0.75", "svamp", "python", "correct", 0.75),
    (program("return 6 / 0"), "6", "svamp", "python", "error", None),  # raises
    (program("return 6 +"), "6", "svamp", "python", "error", None),  # does not compile
    (program("raise SystemExit(6)"), "6", "svamp", "python", "error", None),  # exits: still an error
    (program("while True:\n    pass"), "6", "svamp", "python", "timeout", None),
    # ---- P-CoT multiple choice ----
    (program("return 'c'"), "c", "mathqa_mcq", "python", "correct", "c"),
    (program("return 'C'"), "c", "mathqa_mcq", "python", "correct", "c"),
    (program("return '(d)'"), "c", "mathqa_mcq", "python", "wrong", "d"),
    (program("return 396 / 2"), "c", "mathqa_mcq", "python", "correct", "c"),  # a number maps to its option
    (program("return 172"), "c", "mathqa_mcq", "python", "wrong", "d"),
    (program("return 150"), "c", "mathqa_mcq", "python", "no_answer", None),  # no option states 150
    (program("return 'maybe'"), "c", "mathqa_mcq", "python", "no_answer", None),
    (program("return None"), "c", "mathqa_mcq", "python", "no_answer", None),  # the reference's "none"
]


def _question(task: str) -> str:
    return MCQ_QUESTION if "mcq" in task else NUMERIC_QUESTION


@pytest.mark.parametrize(("completion", "gold", "task", "cot", "outcome", "answer"), ROWS)
def test_grading_table(completion, gold, task, cot, outcome, answer):
    graded = grade(completion, gold, answer_type_of(task), cot, question=_question(task), timeout=PROGRAM_TIMEOUT)
    assert graded.outcome == outcome
    assert graded.answer == (pytest.approx(answer, abs=1e-6) if isinstance(answer, float) else answer)
    assert graded.reward == RewardTable().reward(outcome)


def test_rows_are_distinct_and_cover_every_outcome():
    assert len({row[:4] for row in ROWS}) == len(ROWS) >= 60
    assert {row[4] for row in ROWS} == {"correct", "wrong", "no_answer", "error", "timeout"}


REWARD_ROWS = [
    # (completion, gold, task, cot, partial_reward, reward)
    (T + "6", "6", "gsm8k", "nl", True, 1.0),
    (T + "6", "6", "gsm8k", "nl", False, 1.0),
    (T + "7", "6", "gsm8k", "nl", True, 0.1),  # partial reward for a wrong number
    (T + "7", "6", "gsm8k", "nl", False, 0.0),
    (T + "d", "c", "mathqa_mcq", "nl", True, 0.1),  # a wrong letter is a wrong answer
    (T + "d", "c", "mathqa_mcq", "nl", False, 0.0),
    (T + "maybe", "c", "mathqa_mcq", "nl", True, 0.0),  # text that names no option earns nothing (not 0.1)
    (T + "200", "c", "mathqa_mcq", "nl", True, 0.0),
    ("no trigger 6", "6", "gsm8k", "nl", True, 0.0),
    (program("return 1 / 0"), "6", "svamp", "python", True, 0.0),
]


@pytest.mark.parametrize(("completion", "gold", "task", "cot", "partial", "reward"), REWARD_ROWS)
def test_reward_per_outcome(completion, gold, task, cot, partial, reward):
    table = RewardTable(partial_reward=partial)
    assert grade(completion, gold, answer_type_of(task), cot, question=_question(task), rewards=table).reward == reward
