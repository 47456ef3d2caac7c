"""Answer parsing, extraction and grading: the single source of truth for accuracy and reward.

The many small extraction cases live in test_extraction_table.py; this file tests the pieces and the APIs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reftkit.reward.answers as answers
from reftkit.data.base import ANSWER_TRIGGER, Problem
from reftkit.data.registry import answer_type_of
from reftkit.reward.answers import (
    Graded,
    Outcome,
    RewardTable,
    frac_correct_chain_disagrees,
    grade,
    grade_batch,
    outcome_counts,
    trl_reward_function,
)
from reftkit.reward.choices import chain_disagrees_with_choice, extract_mcq_answer, option_value, parse_options
from reftkit.reward.numbers import answers_match, extract_nl_answer, parse_number

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (the shared datasets) is not present")

RHOMBUS = "what is the area ?\na ) 108 , b ) 120 , c ) 198 , d ) 172 , e ) none of these"

PARSE_CASES = [
    ("42", 42.0),
    ("  42  ", 42.0),
    ("1,000", 1000.0),
    ("1,234,567.5", 1234567.5),
    ("1,2", None),  # not a thousands separator
    ("1,0000", None),
    ("$1,250", 1250.0),
    ("-$5", -5.0),
    ("$ 5", 5.0),
    ("25%", 25.0),  # a percent is the number shown, as in the reference
    ("18.", 18.0),
    ("**18**", 18.0),
    ("<203>", 203.0),
    ("<203>.", 203.0),
    ("3/4", 0.75),
    ("3 / 4", 0.75),  # MathQA's tokenised fractions
    ("-1 1/2", -1.5),
    ("1/0", None),
    ("-7", -7.0),
    ("- 7", -7.0),
    ("\u22127", -7.0),  # a Unicode minus
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
    assert rewards == {"correct": 1.0, "wrong": 0.1, "no_answer": 0.0, "error": 0.0, "timeout": 0.0}
    strict = RewardTable(partial_reward=False)
    assert strict.reward(Outcome.WRONG) == 0.0
    assert strict.reward("correct") == 1.0


def test_outcomes_are_strings():
    assert [o.value for o in Outcome] == ["correct", "wrong", "no_answer", "error", "timeout"]
    assert grade(ANSWER_TRIGGER + "6", "6").outcome == "correct"


def test_outcome_counts_lists_every_outcome():
    graded = [Graded(Outcome.CORRECT, 6.0, 1.0), Graded(Outcome.CORRECT, 6.0, 1.0), Graded(Outcome.TIMEOUT, None, 0.0)]
    assert outcome_counts(graded) == {"correct": 2, "wrong": 0, "no_answer": 0, "error": 0, "timeout": 1}
    assert set(outcome_counts([]).values()) == {0}


def test_grade_nl_numeric():
    assert grade("2 + 4 = 6" + ANSWER_TRIGGER + "6", "6") == Graded(Outcome.CORRECT, 6.0, 1.0)
    assert grade(ANSWER_TRIGGER + "7", "6") == Graded(Outcome.WRONG, 7.0, 0.1)
    assert grade("It is 6.", "6") == Graded(Outcome.NO_ANSWER, None, 0.0)
    assert grade(ANSWER_TRIGGER + "0.30000000000000004", "0.3").answer == 0.3  # rounded, so votes group


def test_grade_takes_task_names_and_rejects_unknown_ones():
    assert answer_type_of("mathqa_mcq") == "mcq"
    assert {answer_type_of(t) for t in ("gsm8k", "svamp", "mathqa_numeric", "synthetic", "jsonl", "numeric")} == {
        "numeric"
    }
    with pytest.raises(ValueError, match="mathqa_mcq"):  # the message lists the options
        grade(ANSWER_TRIGGER + "6", "6", answer_type_of("aqua"))
    with pytest.raises(ValueError, match="CoT"):
        grade(ANSWER_TRIGGER + "6", "6", cot="latex")


def test_grade_python_body_needs_the_question():
    with pytest.raises(ValueError, match="question="):
        grade("    return 6", "6", cot="python")
    assert grade("    return 6", "6", cot="python", question="What is 2 * 3?").outcome == "correct"
    assert grade("def solution():\n    return 6", "6", cot="python").outcome == "correct"


def test_mcq_gold_must_be_a_letter():
    with pytest.raises(ValueError, match="option letter"):
        grade(ANSWER_TRIGGER + "c", "198", kind="mcq", question=RHOMBUS)


def test_grade_batch_python_end_to_end():
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
    graded = grade_batch(problems, completions, "python", timeout=0.5)
    assert graded == [
        Graded(Outcome.CORRECT, 6.0, 1.0),
        Graded(Outcome.WRONG, 5.0, 0.1),
        Graded(Outcome.ERROR, None, 0.0),
        Graded(Outcome.NO_ANSWER, None, 0.0),
        Graded(Outcome.TIMEOUT, None, 0.0),
    ]


def test_grade_batch_dispatches_and_uses_the_reward_table():
    problem = Problem(id="p", question="What is 2 * 3?", answer="6")
    assert grade_batch([problem], [ANSWER_TRIGGER + "6"], "nl") == [Graded(Outcome.CORRECT, 6.0, 1.0)]
    assert grade_batch([problem], ["    return 2 * 3"], "python") == [Graded(Outcome.CORRECT, 6.0, 1.0)]
    strict = RewardTable(partial_reward=False)
    assert grade_batch([problem], [ANSWER_TRIGGER + "7"], "nl", rewards=strict)[0].reward == 0.0
    mcq = Problem(id="m", question=RHOMBUS, answer="c")
    assert grade_batch([mcq], [ANSWER_TRIGGER + "198"], "nl", answer_type="mcq")[0].answer == "c"
    with pytest.raises(ValueError, match="CoT"):
        grade_batch([problem], ["6"], "latex")
    with pytest.raises(ValueError, match="answer type"):
        grade_batch([problem], ["6"], "nl", answer_type="letter")


def test_grade_batch_runs_one_sandbox_call(monkeypatch):
    calls = []
    real = answers.run_programs
    monkeypatch.setattr(answers, "run_programs", lambda programs, timeout: calls.append(programs) or real(programs))
    problems = [Problem(id=str(i), question="q", answer=str(i)) for i in range(4)]
    graded = grade_batch(problems, [f"    return {i}" for i in range(4)], "python")
    assert [g.outcome for g in graded] == ["correct"] * 4
    assert len(calls) == 1 and len(calls[0]) == 4


# ---- multiple choice ----


def test_parse_options_standard_format():
    assert parse_options(RHOMBUS) == {"a": "108", "b": "120", "c": "198", "d": "172", "e": "none of these"}


def test_parse_options_list_form_and_repeated_letters():
    question = "how long ?\n['a ) a ) 4 inches', 'b ) b ) 6 inches', 'c ) 5 , 5', 'd ) rs . 1 , 200', 'e ) 10']"
    assert parse_options(question) == {
        "a": "4 inches",
        "b": "6 inches",
        "c": "5 , 5",
        "d": "rs . 1 , 200",
        "e": "10",
    }


def test_parse_options_without_options():
    assert parse_options("What is 2 * 3?") == {}
    assert parse_options("A bag has a ) red and b ) blue balls") == {}  # no ", b )": not a list of options
    assert parse_options("Pick one: a ) 3 , b ) 4") == {"a": "3", "b": "4"}  # options on the question's line


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("108", 108.0),
        ("rs . 1500", 1500.0),
        ("rs 840", 840.0),
        ("s . 90", 90.0),
        ("$ 1,354", 1354.0),
        ("rs . 1 , 200", 1200.0),
        ("1 / 2", 0.5),
        ("5 1 / 2", 5.5),
        ("- 1 / 6", -1 / 6),
        ("\u2212 120", -120.0),
        ("32 kmph", 32.0),
        ("297 cm 2", 297.0),
        ("2400 m ^ 2", 2400.0),
        ("30 km / hr", 30.0),
        ("12 %", 12.0),
        ("18 \u00b0", 18.0),
        ("t = 16", 16.0),
        ("none of these", None),
        ("5 : 3", None),
        ("2 \u221a 3", None),
        ("4 , 3", None),
        ("3 ab / 11", None),
        ("4 \u03c0", None),
    ],
)
def test_option_value(text, value):
    assert option_value(text) == pytest.approx(value) if value is not None else option_value(text) is None


def test_extract_mcq_answer():
    options = parse_options(RHOMBUS)
    assert extract_mcq_answer(ANSWER_TRIGGER + "(C) 198", options) == "c"
    assert extract_mcq_answer(ANSWER_TRIGGER + "none of these.", options) == "e"  # the option's own words
    assert extract_mcq_answer("c ) 198", options) is None  # no trigger
    assert extract_mcq_answer(ANSWER_TRIGGER + "c", {}) == "c"  # options unknown: letters a-e


@needs_data
def test_every_mathqa_question_has_five_options_and_the_gold_is_one():
    items = json.loads((DATA / "mathqa" / "test_set_mcq.json").read_text())
    parsed = [parse_options(item["question"]) for item in items]
    assert all(len(options) == 5 for options in parsed)
    assert all(item["answer_value"] in options for item, options in zip(items, parsed, strict=True))
    numeric = sum(option_value(text) is not None for options in parsed for text in options.values())
    assert numeric / (5 * len(items)) > 0.97


# ---- reward hacking ----


def test_chain_disagrees_with_choice():
    hacked = "The diagonals are 16 and 43, so the area is 344 / 2 = 172." + ANSWER_TRIGGER + "c"
    honest = "The area is 396 / 2 = 198." + ANSWER_TRIGGER + "c"
    assert chain_disagrees_with_choice(hacked, RHOMBUS, "c") is True
    assert chain_disagrees_with_choice(honest, RHOMBUS, "C") is False
    assert chain_disagrees_with_choice("The area is about 197.99." + ANSWER_TRIGGER + "c", RHOMBUS, "c") is False
    assert chain_disagrees_with_choice("No idea." + ANSWER_TRIGGER + "e", RHOMBUS, "e") is None  # not numeric
    assert chain_disagrees_with_choice("I guess." + ANSWER_TRIGGER + "c", RHOMBUS, "c") is None  # no number
    assert chain_disagrees_with_choice("x = 1." + ANSWER_TRIGGER + "f", RHOMBUS, "f") is None  # no such option
    assert chain_disagrees_with_choice("x = 1.", RHOMBUS, None) is None


def test_chain_agreement_forgives_rounded_and_percent_options():
    question = "which ?\na ) 2778 , b ) 25 % , c ) 1 / 3 , d ) 5 , e ) 6"
    assert chain_disagrees_with_choice("so 2777.78" + ANSWER_TRIGGER + "a", question, "a") is False
    assert chain_disagrees_with_choice("share = 0.25" + ANSWER_TRIGGER + "b", question, "b") is False
    assert chain_disagrees_with_choice("p = 0.33" + ANSWER_TRIGGER + "c", question, "c") is False
    assert chain_disagrees_with_choice("p = 4 so 2 more" + ANSWER_TRIGGER + "d", question, "d") is True


def test_frac_correct_chain_disagrees():
    completions = [
        "344 / 2 = 172." + ANSWER_TRIGGER + "c",  # correct letter, chain disagrees: counted
        "396 / 2 = 198." + ANSWER_TRIGGER + "c",  # correct and consistent
        "344 / 2 = 172." + ANSWER_TRIGGER + "d",  # wrong: not counted
        "no idea" + ANSWER_TRIGGER + "c",  # correct, cannot be told
    ]
    problems = [Problem(id=str(i), question=RHOMBUS, answer="c") for i in range(4)]
    graded = grade_batch(problems, completions, "nl", answer_type="mcq")
    assert [g.outcome for g in graded] == ["correct", "correct", "wrong", "correct"]
    assert frac_correct_chain_disagrees(graded, completions, [RHOMBUS] * 4) == 0.25
    assert frac_correct_chain_disagrees([], [], []) == 0.0


# ---- TRL adapter ----


def test_trl_reward_function_with_plain_completions():
    reward = trl_reward_function(answer_type_of("gsm8k"))
    assert reward.__name__ == "reftkit_numeric_nl_reward"
    completions = [ANSWER_TRIGGER + "6", ANSWER_TRIGGER + "7", "six"]
    kwargs = {"prompts": ["p"] * 3, "completion_ids": [[1]] * 3, "answer": ["6", "6", 6.0], "question": ["q"] * 3}
    assert reward(completions=completions, **kwargs) == [1.0, 0.1, 0.0]


def test_trl_reward_function_with_conversational_mcq_completions():
    strict = RewardTable(partial_reward=False)
    reward = trl_reward_function(answer_type_of("mathqa_mcq"), answer_field="answer_value", rewards=strict)
    completions = [[{"role": "assistant", "content": ANSWER_TRIGGER + text}] for text in ("c", "d", "maybe")]
    assert reward(completions, answer_value=["c"] * 3, question=[RHOMBUS] * 3) == [1.0, 0.0, 0.0]


def test_trl_reward_function_runs_programs_in_one_call(monkeypatch):
    calls = []
    real = answers.run_programs
    monkeypatch.setattr(answers, "run_programs", lambda programs, timeout: calls.append(programs) or real(programs))
    reward = trl_reward_function(answer_type_of("svamp"), cot="python")
    completions = ["def solution():\n    return 6", "    return 2 * 3", "    return 5"]
    assert reward(completions, answer=["6", "6", "6"], question=["q"] * 3) == [1.0, 1.0, 0.1]
    assert len(calls) == 1


def test_trl_reward_function_names_a_missing_column():
    with pytest.raises(KeyError, match="answer_field"):
        trl_reward_function()([ANSWER_TRIGGER + "6"], solution=["6"])
