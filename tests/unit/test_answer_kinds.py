"""The registry of answer kinds, and the MATH-style kind: boxed LaTeX answers, normalised, judged as
strings or as numbers. Every expected value below is worked out by hand."""

from __future__ import annotations

import typing

import pytest

from reftkit.data.records import Fields, canonical_answer, locate_rows, problems_from
from reftkit.reward.answers import Graded, Outcome, frac_correct_chain_disagrees, grade
from reftkit.reward.kinds import ANSWER_KINDS, AnswerType, answer_kind
from reftkit.reward.latex import boxed_content, extract_math_answer, latex_value, normalise_latex

T = "\nTherefore, the answer is: "  # ANSWER_TRIGGER


# ---- the registry ----


def test_every_answer_type_name_has_exactly_one_kind():
    assert set(typing.get_args(AnswerType)) == set(ANSWER_KINDS) == {"numeric", "mcq", "math"}
    assert all(kind.name == name for name, kind in ANSWER_KINDS.items())


def test_an_unknown_answer_type_names_the_known_ones():
    assert answer_kind("math") is ANSWER_KINDS["math"]
    with pytest.raises(ValueError, match="numeric, mcq, math"):
        answer_kind("latex")


def test_only_multiple_choice_has_a_chain_check():
    assert [name for name, kind in ANSWER_KINDS.items() if kind.chain_disagrees] == ["mcq"]
    graded = [Graded(Outcome.CORRECT, 6.0, 1.0)]
    assert frac_correct_chain_disagrees(graded, ["x = 7" + T + "6"], ["q"], "numeric") is None
    assert frac_correct_chain_disagrees(graded, ["x = 7" + T + "6"], ["q"], "math") is None


# ---- MATH-style answers: the pieces ----


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{\\sqrt{3}}{2}} cm", "\\frac{\\sqrt{3}}{2}"),  # two levels
        ("first \\boxed{3}, then \\boxed{4}", "4"),  # the last one
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces balance too
        ("\\boxed{\\frac{1}{2}", None),  # never closed
        ("the answer is 5", None),
    ],
)
def test_boxed_content(text, content):
    assert boxed_content(text) == content


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("$5$", "5"),
        ("\\$5", "5"),  # an escaped dollar sign
        (" 2 x + 1 ", "2x+1"),  # spaces
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("1\\!000", "1000"),
        ("3\\,\\text{cm}", "3"),  # a thin space and a unit
        ("5\\text{ inches}^2", "5"),  # a unit with an exponent
        ("\\text{Monday}", "Monday"),  # a word answer keeps its word
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("\\frac12", "\\frac{1}{2}"),  # MATH's shorthand for one half
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("50\\%", "50"),
        ("18.", "18"),  # a trailing period
        ("\\sqrt{2}", "\\sqrt{2}"),  # what it does not know stays as written
    ],
)
def test_normalise_latex(text, normalised):
    assert normalise_latex(text) == normalised


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5.0),
        ("-7", -7.0),
        ("2.5", 2.5),
        (".5", 0.5),
        ("1,000", 1000.0),  # commas group thousands
        ("1,234,567.5", 1234567.5),
        ("\\frac{3}{4}", 0.75),
        ("-\\frac{1}{2}", -0.5),
        ("\\frac{-1}{4}", -0.25),
        ("3/4", 0.75),
        ("-6/4", -1.5),
        ("\\frac{1}{0}", None),  # no number
        ("1/0", None),
        ("1,2", None),  # a list, not a number
        ("\\sqrt{2}", None),
        ("x+1", None),
        ("", None),
    ],
)
def test_latex_value(text, value):
    assert latex_value(text) == value


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("The area is $\\frac{1}{2}bh = 6$, so \\boxed{6}.", "6"),
        ("We get \\boxed{\\dfrac{\\sqrt{3}}{2}}.", "\\frac{\\sqrt{3}}{2}"),
        ("Try \\boxed{4}. No: \\boxed{5}", "5"),  # the last box
        ("x = 3." + T + "$\\frac{1}{2}$.", "\\frac{1}{2}"),  # no box: the line after the trigger
        ("x = 3." + T + "\\boxed{7}\nmore", "7"),
        ("It is 5.", None),  # neither a box nor a trigger
        ("\\boxed{}", None),  # an empty box
        ("\\boxed{5", None),  # an unclosed box, and no trigger
    ],
)
def test_extract_math_answer(completion, answer):
    assert extract_math_answer(completion) == answer


# ---- MATH-style answers: grading ----

MATH_ROWS = [
    # (completion, gold, outcome, answer as Graded keeps it)
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "correct", 0.5),
    ("so \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", "correct", 0.5),  # dfrac is frac
    ("so \\boxed{0.5}", "\\frac{1}{2}", "correct", 0.5),  # equal as numbers
    ("so \\boxed{1/2}", "\\frac12", "correct", 0.5),
    ("so \\boxed{0.501}", "\\frac{1}{2}", "correct", 0.501),  # within the numeric tolerance 1e-2
    ("so \\boxed{0.52}", "\\frac{1}{2}", "wrong", 0.52),  # outside it
    ("so \\boxed{1,000}", "1000", "correct", 1000.0),
    ("so \\boxed{90^\\circ}", "90", "correct", 90.0),
    ("so \\boxed{12\\text{ cm}}", "12", "correct", 12.0),
    ("so \\boxed{\\left(1, 2\\right)}", "(1,2)", "correct", "(1,2)"),  # an exact string match
    ("so \\boxed{(1,3)}", "(1,2)", "wrong", "(1,3)"),
    ("so \\boxed{\\sqrt{2}}", "\\boxed{\\sqrt 2}", "wrong", "\\sqrt{2}"),  # no algebra: \sqrt 2 is written otherwise
    ("so \\boxed{\\text{Monday}}", "Monday", "correct", "Monday"),
    ("so \\boxed{2x+1}", "1+2x", "wrong", "2x+1"),  # no algebra
    ("so \\boxed{5}", "\\boxed{5}", "correct", 5.0),  # a boxed gold answer is unboxed
    ("the answer is 5", "5", "no_answer", None),  # no box, no trigger
    ("so \\boxed{}", "5", "no_answer", None),
]


@pytest.mark.parametrize(("completion", "gold", "outcome", "answer"), MATH_ROWS)
def test_grade_math(completion, gold, outcome, answer):
    graded = grade(completion, gold, kind="math")
    assert graded.outcome == outcome
    assert graded.answer == answer
    assert graded.reward == {"correct": 1.0, "wrong": 0.1, "no_answer": 0.0}[outcome]


def test_grade_math_programs():
    def run(body: str, gold: str) -> Graded:
        return grade(f"def solution():\n    {body}\n", gold, kind="math", cot="python", timeout=2.0)

    assert run("return 0.5", "\\frac{1}{2}") == Graded(Outcome.CORRECT, 0.5, 1.0)
    assert run("return '\\\\frac{1}{2}'", "0.5") == Graded(Outcome.CORRECT, 0.5, 1.0)
    assert run("return '\\\\boxed{(1,2)}'", "(1, 2)") == Graded(Outcome.CORRECT, "(1,2)", 1.0)
    assert run("return 3", "4") == Graded(Outcome.WRONG, 3.0, 0.1)
    assert run("return None", "4") == Graded(Outcome.NO_ANSWER, None, 0.0)
    assert run("return 1 / 0", "4").outcome == "error"


def test_math_gold_answers_in_data():
    assert canonical_answer("\\boxed{\\frac{1}{2}}", "math") == "\\frac{1}{2}"
    assert canonical_answer(" 5 ", "math") == "5"
    assert canonical_answer(2.50, "math") == "2.5"
    assert canonical_answer("$ $", "math") is None  # nothing left once normalised
    assert canonical_answer(True, "math") is None
    rows = [{"question": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}"}, {"question": "q", "answer": None}]
    problems, issues = problems_from(locate_rows(rows, "rows"), Fields(cot=None), cot="nl", answer_type="math")
    assert [p.answer for p in problems] == ["\\frac{3}{4}"]
    assert issues == ["rows: row 1: answer: expected a LaTeX answer or a number, got None"]
