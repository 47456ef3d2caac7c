"""The synthetic task: deterministic, disjoint splits, small numbers and vocabulary, and every gold or
variant chain of thought computes the gold answer."""

from __future__ import annotations

import random
import re

import pytest

from reftkit.data.base import program_header, split_program, target_text
from reftkit.data.synthetic import (
    STORIES,
    cot_variants,
    generate,
    generate_specs,
    load_synthetic,
    make_problem,
)

SMALL = {"n_train": 300, "n_val": 60, "n_test": 90}


def run_program(program: str) -> float:
    namespace: dict = {}
    exec(program, namespace)  # our own generated programs, so plain exec is fine
    return float(namespace["solution"]())


def line_shape(program: str) -> tuple[tuple[bool, float], ...]:
    """Each body line as (states a number?, value assigned): equal when programs differ only in names."""
    namespace: dict = {}
    shape = []
    for line in split_program(program)[1].splitlines()[:-1]:
        name, expr = line.strip().split(" = ")
        exec(line.strip(), namespace)
        shape.append((expr.isdigit(), namespace[name]))
    return tuple(shape)


def last_nl_value(nl: str) -> str:
    return re.findall(r"= (\d+)", nl)[-1]


def test_load_is_deterministic_and_seeded():
    first, again = load_synthetic(seed=3, **SMALL), load_synthetic(seed=3, **SMALL)
    assert first == again
    other = load_synthetic(seed=4, **SMALL)
    assert [p.question for p in first.train] != [p.question for p in other.train]


def test_splits_unique_disjoint_and_shared_by_both_cot_styles():
    python, nl = load_synthetic("python", seed=1, **SMALL), load_synthetic("nl", seed=1, **SMALL)
    assert (len(python.train), len(python.val), len(python.test)) == (300, 60, 90)
    questions = [p.question for split in (python.train, python.val, python.test) for p in split]
    assert len(set(questions)) == len(questions)
    assert questions == [p.question for split in (nl.train, nl.val, nl.test) for p in split]
    assert [p.answer for p in python.test] == [p.answer for p in nl.test]
    assert python.train[0].id == "synth-1-0"


def test_every_split_spreads_over_the_operation_counts():
    data = load_synthetic(seed=2, **SMALL)
    specs = generate_specs(450, seed=2)
    assert [s.question for s in specs] == [p.question for p in data.train + data.val + data.test]
    ops = [s.n_ops for s in specs]
    assert set(ops) == {2, 3, 4}
    for lo, hi in ((0, 300), (300, 360), (360, 450)):
        assert set(ops[lo:hi]) == {2, 3, 4}
    assert {s.n_ops for s in generate_specs(30, seed=0, min_ops=1, max_ops=2)} == {1, 2}
    assert {s.kind for s in specs} == set(STORIES)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        generate(5, seed=0, cot="latex")
    with pytest.raises(ValueError):
        generate_specs(5, seed=0, min_ops=3, max_ops=5)
    with pytest.raises(ValueError):
        make_problem(random.Random(0), n_ops=0)


def test_gold_programs_run_to_the_answer_and_keep_the_header():
    for problem in generate(300, seed=5, cot="python"):
        assert run_program(problem.cot) == float(problem.answer)
        header, body = split_program(problem.cot)
        assert header == program_header(problem.question)
        assert problem.cot.splitlines()[1] == f'    """{problem.question}"""'
        assert body.startswith("    ") and not body.startswith("     ")
        assert "\n\n" not in problem.cot
        assert body.splitlines()[-2].startswith("    result = ")
        assert body.splitlines()[-1] == "    return result"
        assert target_text(problem, "python") == body


def test_variants_are_correct_and_often_differ_in_order():
    rng = random.Random(7)
    reordered = restructured = 0
    for _ in range(50):
        spec = make_problem(rng)
        programs = cot_variants(spec, "python", 8)
        assert len(programs) >= 2
        for program in programs:
            assert run_program(program) == float(spec.answer)
            assert split_program(program)[0] == program_header(spec.question)
        shapes = {line_shape(p) for p in programs}
        reordered += len(shapes) >= 2
        # beyond where the numbers are stated: independent steps swapped, or another computation
        restructured += len({tuple(line for line in shape if not line[0]) for shape in shapes}) >= 2
        for nl in cot_variants(spec, "nl", 4):
            assert last_nl_value(nl) == spec.answer
    assert reordered >= 15
    assert restructured >= 10


def test_nl_chains_end_with_the_answer():
    for problem in generate(200, seed=6, cot="nl"):
        assert last_nl_value(problem.cot) == problem.answer
        assert "Therefore" not in problem.cot
        assert target_text(problem, "nl").endswith(f"Therefore, the answer is: {problem.answer}")


def test_numbers_are_small_and_answers_are_integers():
    for spec in generate_specs(500, seed=8):
        assert all(int(n) <= 200 for n in re.findall(r"\d+", spec.question))
        assert spec.answer.isdigit() and 2 <= int(spec.answer) <= 200


def test_vocabulary_is_small():
    words = {w for spec in generate_specs(2000, seed=0) for w in spec.question.split()}
    print(f"distinct words over 2000 questions: {len(words)}")
    assert len(words) < 250
