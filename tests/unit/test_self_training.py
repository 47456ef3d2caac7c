"""Offline self-training data (gold once + random distinct correct samples) and the samples file format."""

import json
import random

import pytest

from reftkit.config.schema import ConfigError
from reftkit.data.base import ANSWER_TRIGGER, Problem, program_header, target_text
from reftkit.evaluation.sampling import Sample, read_samples, write_samples
from reftkit.trainers.self_training import chain_from_completion, offline_st_problems

GOLD_PROGRAM = (
    'def solution():\n    """Tom has 2 apples and buys 3. How many?"""\n    result = 2 + 3\n    return result'
)
PROBLEM = Problem("q1", "Tom has 2 apples and buys 3. How many?", "5", GOLD_PROGRAM)


def sample(i: int, completion: str, outcome: str, qid: str = "q1") -> Sample:
    return Sample(qid, i, completion, 5.0 if outcome == "correct" else 4.0, outcome, -3.0, 10, "5")


def test_python_chain_is_the_whole_program_whose_target_is_the_completion():
    body = "    a = 2\n    result = a + 3\n    return result"
    chain = chain_from_completion(PROBLEM, body, "python")
    assert chain == program_header(PROBLEM.question) + body
    assert target_text(Problem("x", PROBLEM.question, "5", chain), "python") == body


def test_nl_chain_drops_the_answer_sentence_which_the_target_adds_back():
    problem = Problem("q2", "What is 2 + 3?", "5", "2 + 3 = 5.")
    completion = "Two plus three is five." + ANSWER_TRIGGER + "5"
    chain = chain_from_completion(problem, completion, "nl")
    assert chain == "Two plus three is five."
    assert target_text(Problem("x", problem.question, "5", chain), "nl") == completion
    assert chain_from_completion(problem, "Five, I think.", "nl") is None  # no answer sentence: unusable


def test_offline_data_keeps_gold_once_and_distinct_correct_samples_only():
    gold_body = target_text(PROBLEM, "python")
    samples = [
        sample(0, "    result = 5\n    return result", "correct"),
        sample(1, "    result = 5\n    return result", "correct"),  # duplicate text
        sample(2, gold_body, "correct"),  # the gold chain itself: not added a second time
        sample(3, "    result = 4\n    return result", "wrong"),
        sample(4, "    result = 3 + 2\n    return result", "correct"),
        sample(5, "    x =", "error"),
    ]
    data = offline_st_problems([PROBLEM], samples, "python", 10, random.Random(0))
    assert data[0] == PROBLEM
    targets = [target_text(p, "python") for p in data]
    assert targets.count(gold_body) == 1
    assert sorted(targets[1:]) == sorted(["    result = 5\n    return result", "    result = 3 + 2\n    return result"])
    assert [p.id for p in data[1:]] == ["q1#st0", "q1#st1"]
    assert all(p.question == PROBLEM.question and p.answer == "5" for p in data)


def test_offline_data_chooses_at_random_up_to_the_cap():
    correct = [sample(i, f"    result = 5 + 0 * {i}\n    return result", "correct") for i in range(12)]
    picks = set()
    for seed in range(6):
        data = offline_st_problems([PROBLEM], correct, "python", 3, random.Random(seed))
        assert len(data) == 1 + 3
        chosen = tuple(sorted(target_text(p, "python") for p in data[1:]))
        assert len(set(chosen)) == 3
        picks.add(chosen)
    assert len(picks) > 1  # not always the first three
    first = offline_st_problems([PROBLEM], correct, "python", 3, random.Random(4))
    again = offline_st_problems([PROBLEM], correct, "python", 3, random.Random(4))
    assert first == again  # seeded


def test_offline_data_for_a_question_without_correct_samples_is_its_gold_chain():
    other = Problem("q2", "What is 1 + 1?", "2", 'def solution():\n    """What is 1 + 1?"""\n    return 2')
    data = offline_st_problems([PROBLEM, other], [sample(0, "    return 4", "wrong")], "python", 10, random.Random(0))
    assert data == [PROBLEM, other]


def test_samples_file_round_trip_and_meta(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [sample(0, "a", "correct"), Sample("q1", 1, "b", None, "no_answer", -1.5, 3, "5", score=0.25)]
    write_samples(path, rows, {"model": "m", "n": 2})
    back, meta = read_samples(path)
    assert back == rows
    assert meta == {"model": "m", "n": 2}
    assert "score" not in json.loads(path.read_text().splitlines()[0])  # unscored rows carry no score


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "s.jsonl:2: not valid JSON"),
        ('{"id": "q", "sample": 0}', "s.jsonl:2: field 'completion' is missing"),
        ('{"id": "q", "sample": "0", "completion": "", "answer": null, "outcome": "wrong", "logprob": 0, '
         '"length": 1, "gold": "1"}', "s.jsonl:2: field 'sample' has the wrong type"),
        ('{"id": "q", "sample": 0, "completion": "", "answer": null, "outcome": "great", "logprob": 0, '
         '"length": 1, "gold": "1"}', "s.jsonl:2: field 'outcome'"),
    ],
)  # fmt: skip
def test_bad_samples_files_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    write_samples(path, [sample(0, "a", "correct")], {})
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ConfigError, match=message):
        read_samples(path)
