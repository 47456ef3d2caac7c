"""P-CoT programs derived from GSM8K calculator annotations: exact text, linking by name, failure classes."""

from __future__ import annotations

import ast
import builtins
import json
import keyword
from collections import Counter
from pathlib import Path

import pytest

from reftkit.data import gsm8k_programs
from reftkit.data.gsm8k_expressions import normalise_expression
from reftkit.data.gsm8k_programs import (
    CLASSES,
    EXEC_ERROR,
    NO_ANNOTATION,
    OK,
    TIMEOUT,
    UNPARSEABLE,
    WRONG_VALUE,
    Derived,
    derive_gsm8k,
    derive_program,
    nl_cot_from_rationale,
    verify,
)
from reftkit.reward.sandbox import ProgramResult

TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")

NATALIA_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
NATALIA_R = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
BAKER_Q = (
    "A baker makes 3 cakes an hour for 10 hours. He sells each cake for $1,200 and splits the money among "
    "4 partners. How much does each partner get?"
)
BAKER_R = (
    "The baker makes 3 x 10 = <<3x10=30>>30 cakes.\n"
    "He earns 30 × $1,200 = $<<30×$1,200=36,000>>36,000 in sales.\n"
    "Each partner gets 36,000 ÷ 4 = $<<36,000÷4=9,000>>9,000.\n"
    "#### 9,000"
)
APPLES_Q = (
    "Tom has 10 apples and shares them equally among 3 friends. Each friend eats 2 of their apples. "
    "How many apples do the friends have left altogether?"
)
APPLES_R = (
    "Each friend gets 10/3 = <<10/3=3.33>>3.33 apples.\n"
    "Each friend has 3.33 - 2 = <<3.33-2=1.33>>1.33 apples left.\n"
    "Altogether they have 1.33 * 3 = <<1.33*3=4>>4 apples left.\n"
    "#### 4"
)


def program_of(question: str, rationale: str) -> str:
    derived = derive_program(question, rationale)
    assert derived.failure is None and derived.program is not None
    return derived.program


def body_of(program: str) -> str:
    """The program without its docstring line (which repeats the question and so its numbers)."""
    return "\n".join(line for line in program.split("\n") if not line.lstrip().startswith('"""'))


def test_the_first_training_item_becomes_the_expected_program():
    assert program_of(NATALIA_Q, NATALIA_R) == (
        "def solution():\n"
        f'    """{NATALIA_Q}"""\n'
        "    friends_april = 48\n"
        "    clips_may = friends_april / 2\n"
        "    clips_total = friends_april + clips_may\n"
        "    result = clips_total\n"
        "    return result\n"
    )


def test_calculator_quirks_are_normalised_and_question_numbers_named_at_the_top():
    assert program_of(BAKER_Q, BAKER_R) == (
        "def solution():\n"
        f'    """{BAKER_Q}"""\n'
        "    cakes_hour = 3\n"
        "    hours = 10\n"
        "    sells_cake = 1200\n"
        "    partners = 4\n"
        "    cakes = cakes_hour * hours\n"
        "    sales = cakes * sells_cake\n"
        "    partner_gets = sales / partners\n"
        "    result = partner_gets\n"
        "    return result\n"
    )


def test_a_rounded_intermediate_is_reused_by_name_and_computed_exactly():
    assert program_of(APPLES_Q, APPLES_R) == (
        "def solution():\n"
        f'    """{APPLES_Q}"""\n'
        "    apples = 10\n"
        "    friends = 3\n"
        "    apples_2 = 2\n"
        "    apples_3 = apples / friends\n"
        "    apples_left = apples_3 - apples_2\n"
        "    apples_left_2 = apples_left * friends\n"
        "    result = apples_left_2\n"
        "    return result\n"
    )


def test_intermediates_are_referred_to_by_name_not_by_value():
    program = program_of(
        "A shop sells 7 pens.",
        "It makes 7*13 = <<7*13=91>>91 dollars.\nThen 91+9 = <<91+9=100>>100 dollars in all.\n#### 100",
    )
    assert "91" not in program and "100" not in program
    assert "    pens = 7\n    dollars = pens * 13\n    dollars_2 = dollars + 9\n    result = dollars_2\n" in program


def test_a_whole_number_rounded_on_purpose_stays_a_literal():
    program = program_of(
        "100 students go on a trip. A bus holds 30 students and costs $50. What do the buses cost?",
        "They need 100/30 = <<100/30=3.33>>3.33 buses, so 4 buses.\nThe buses cost 4*50 = $<<4*50=200>>200.\n#### 200",
    )
    assert "    buses = students_go / students\n    buses_cost = 4 * costs\n" in program
    # 4 is not the 3.33 step: the human rounded up on purpose, and the program keeps that.


def test_equal_question_numbers_are_told_apart_by_the_rationale_words_and_by_turns():
    weights = program_of(
        "The average weight of five girls is 45 kg while the average weight of five boys is 55 kg.",
        "The girls weigh 45*5 = <<45*5=225>>225 kg.\nThe boys weigh 55*5 = <<55*5=275>>275 kg.\n#### 275",
    )
    assert "    girls = 5\n    kg = 45\n    boys = 5\n    kg_2 = 55\n" in weights
    assert "    kg_3 = kg * girls\n    kg_4 = kg_2 * boys\n" in weights
    face = program_of(
        "Wendy has 5 facial products and she waits 5 minutes between each product.",
        "It takes her 5*5 = <<5*5=25>>25 minutes.\n#### 25",
    )
    assert "    minutes = minutes_between * facial_products\n" in face  # "minutes" is on the line: first


def test_the_program_never_contains_the_gold_answer_unless_an_expression_does():
    question = "Sam has 12 red and 5 blue marbles. He loses 3. How many are left?"
    rationale = "He has 12+5 = <<12+5=17>>17 marbles.\nSo 17 - 3 = 14 are left.\n#### 14"
    program = program_of(question, rationale)
    assert "14" not in program
    assert program.endswith("    marbles = red + blue_marbles\n    result = marbles\n    return result\n")
    # Not even an annotated value is copied: "17" is only ever computed.
    assert "17" not in program


def test_the_last_computation_is_returned_and_every_line_is_indented_and_non_blank():
    program = program_of(NATALIA_Q, NATALIA_R)
    lines = program.rstrip("\n").split("\n")
    assert lines[0] == "def solution():"
    assert all(line.startswith("    ") and line.strip() for line in lines[1:])
    assert lines[-2:] == ["    result = clips_total", "    return result"]
    ast.parse(program)


def test_names_are_valid_unique_and_never_keywords_or_builtins():
    program = program_of(
        "Count up.",
        "<<2+3=5>>5 sum.\n<<5*2=10>>10 sum.\n<<10+1=11>>11 class.\n<<11-1=10>>10.\n#### 10",
    )
    assigned = [n.targets[0].id for n in ast.walk(ast.parse(program)) if isinstance(n, ast.Assign)]
    assert assigned[:4] == ["sum_value", "sum_value_2", "class_value", "step_4"]
    assert len(set(assigned)) == len(assigned)
    for name in assigned:
        assert name.isidentifier() and not keyword.iskeyword(name)
        assert name == "result" or name not in dir(builtins)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2 x 3", "2 * 3"),
        ("12×4", "12 * 4"),
        ("10÷2", "10 / 2"),
        ("−5+3", "-5 + 3"),
        ("10 – 4", "10 - 4"),
        ("25%*80", "25 / 100 * 80"),
        ("(1+2)%*10", "(1 + 2) / 100 * 10"),
        ("$1,000/4", "1000 / 4"),
        (".5*4", "0.5 * 4"),
        ("2^3", "2 ** 3"),
        ("2(3+4)", "2 * (3 + 4)"),
        ("(1+2)(3+4)", "(1 + 2) * (3 + 4)"),
        ("05+1", "5 + 1"),
        ("7//2", "7 // 2"),
    ],
)
def test_expression_quirks_are_normalised(text, expected):
    tree = normalise_expression(text)
    assert tree is not None and ast.unparse(tree) == expected


@pytest.mark.parametrize("text", ["x+2", "2x", "2 3", "1,2345", "abs(3)", "1+", "__import__('os')", "3 apples", ""])
def test_what_is_not_plain_arithmetic_is_rejected(text):
    assert normalise_expression(text) is None


def test_derivation_failure_classes():
    assert derive_program("Q 3?", "He has 3 apples.\n#### 3") == Derived(None, NO_ANNOTATION)
    assert derive_program("Q 3?", "x = <<x+3=5>>5\n#### 5") == Derived(None, UNPARSEABLE)
    assert derive_program("Q 3?", "<<3*2=6>>6 then <<6 apples=6>>\n#### 6") == Derived(None, UNPARSEABLE)


def test_execution_failure_classes_from_the_sandbox():
    good = program_of(NATALIA_Q, NATALIA_R)
    wrong = program_of("Sam has 12 red and 5 blue marbles.", "<<12+5=17>>17 marbles.\nSo 17 - 3 = 14.\n#### 14")
    broken = program_of("Split 5 ways.", "<<5/0=0>>0 each.\n#### 0")
    assert verify([good, wrong, broken], ["72", "14", "0"]) == [OK, WRONG_VALUE, EXEC_ERROR]


def test_timeouts_and_non_numeric_values_are_classified(monkeypatch):
    results = [ProgramResult("timeout", None, "TimeoutError"), ProgramResult("ok", "72", None)]
    monkeypatch.setattr(gsm8k_programs, "run_programs", lambda programs, timeout: results)
    assert verify(["a", "b"], ["72", "72"]) == [TIMEOUT, WRONG_VALUE]


def test_derive_gsm8k_keeps_only_verified_programs_and_counts_every_item():
    items = [
        (NATALIA_Q, NATALIA_R, "72"),
        (BAKER_Q, BAKER_R, "9000"),
        ("Q 3?", "He has 3 apples.\n#### 3", "3"),
        ("Sam has 12 red and 5 blue marbles.", "<<12+5=17>>17 marbles.\nSo 17 - 3 = 14.\n#### 14", "14"),
    ]
    programs, counts = derive_gsm8k(items)
    assert [p is not None for p in programs] == [True, True, False, False]
    assert counts == Counter({OK: 2, NO_ANNOTATION: 1, WRONG_VALUE: 1})
    assert set(counts) == set(CLASSES) and sum(counts.values()) == len(items)


def test_nl_cot_drops_annotations_and_the_answer_line():
    chain, gold = nl_cot_from_rationale(NATALIA_R)
    assert chain == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    assert gold == "72"
    assert nl_cot_from_rationale(BAKER_R)[1] == "9000"
    with pytest.raises(ValueError):
        nl_cot_from_rationale("no answer line")


def test_a_question_ending_in_a_quote_still_gives_a_valid_program():
    program = program_of('He said "hi 3 times"', "<<3*2=6>>6 words.\n#### 6")
    ast.parse(program)


@pytest.mark.integration
def test_most_gsm8k_training_items_yield_a_verified_program():
    if not TRAIN.is_file():
        pytest.skip(f"GSM8K training file not found at {TRAIN}")
    records = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    items = [(r["question"], r["answer"], nl_cot_from_rationale(r["answer"])[1]) for r in records]
    programs, counts = derive_gsm8k(items)
    assert len(items) == 7473 and sum(counts.values()) == len(items)
    assert counts[OK] == sum(p is not None for p in programs)
    assert counts[OK] / len(items) >= 0.93, counts
    # Every literal in a kept program is a question number or a number from an annotation's expression.
    for (question, rationale, _), program in zip(items, programs, strict=True):
        if program is None:
            continue
        literals = {n.value for n in ast.walk(ast.parse(program)) if isinstance(n, ast.Constant)}
        numbers = {float(v) for v in literals if isinstance(v, int | float)}
        expression_numbers = {
            float(n.value)
            for match in gsm8k_programs._ANNOTATION.finditer(rationale)
            for n in ast.walk(normalise_expression(match[1].partition("=")[0]))
            if isinstance(n, ast.Constant)
        }
        question_numbers = {float(q.value) for q in gsm8k_programs._question_inputs(question)}
        assert numbers <= expression_numbers | question_numbers, program
