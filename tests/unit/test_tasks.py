"""Task registry and loaders on the real files in ../shared/data, and on users' own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reftkit.config.schema import ConfigError, TaskConfig
from reftkit.data.base import ANSWER_TRIGGER, Problem, program_header, target_text
from reftkit.data.records import DataError, Fields, canonical_answer, carve_validation, locate_rows, problems_from
from reftkit.data.registry import load_task, require_training_data

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (the shared datasets) is not present")


def task(**kwargs: object) -> TaskConfig:
    return TaskConfig(**{"data_dir": str(DATA), **kwargs})  # type: ignore[arg-type]


@needs_data
def test_svamp_splits_are_disjoint_stable_and_sized() -> None:
    data = load_task(task(name="svamp", cot="nl"))
    # 3,076 annotations, 2 whose own stated answer is not the gold one are dropped, 200 carved for validation
    assert (len(data.train), len(data.val), len(data.test)) == (2874, 200, 1000)
    ids = [{p.id for p in split} for split in (data.train, data.val, data.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = load_task(task(name="svamp", cot="nl"))
    assert [p.id for p in again.val] == [p.id for p in data.val]
    other_seed = load_task(task(name="svamp", cot="nl", data_seed=1))
    assert {p.id for p in other_seed.val} != ids[1]
    assert data.test[0].answer == "14" and data.answer_type == "numeric"  # "14.0" in the file


@needs_data
def test_svamp_nl_target_states_the_answer_once() -> None:
    p = load_task(task(name="svamp", cot="nl")).train[0]
    target = target_text(p, "nl")
    assert target.lower().count("the answer is") == 1
    assert target.endswith(ANSWER_TRIGGER + p.answer)


@needs_data
def test_svamp_python_programs_start_with_the_header() -> None:
    data = load_task(task(name="svamp", cot="python"))
    assert len(data.train) + len(data.val) == 3043
    assert all(p.cot and p.cot.startswith("def solution():") for p in data.train)
    assert "return result" in target_text(data.train[0], "python")


@needs_data
def test_gsm8k_nl_from_the_human_rationale() -> None:
    data = load_task(task(name="gsm8k", cot="nl"))
    assert (len(data.train) + len(data.val), len(data.test)) == (7473, 1319)
    first = next(p for p in data.train + data.val if p.id == "gsm8k_0")  # line 0 of train.jsonl
    assert first.question.startswith("Natalia sold clips") and first.answer == "72"
    assert "<<" not in first.cot and "####" not in first.cot  # type: ignore[operator]
    assert all("," not in p.answer for p in data.train)
    assert data.test[0].answer == "18" and data.test[0].id == "test_gsm8k_0"


@needs_data
def test_mathqa_is_evaluation_only_with_letter_answers() -> None:
    mcq = load_task(task(name="mathqa_mcq", cot="nl"))
    assert (len(mcq.train), len(mcq.test), mcq.answer_type) == (0, 1605, "mcq")
    assert {p.answer for p in mcq.test} == set("abcde")
    numeric = load_task(task(name="mathqa_numeric", cot="python"))
    assert numeric.answer_type == "numeric" and numeric.test[0].answer == "38"
    with pytest.raises(ConfigError, match="mathqa_mcq has no training questions"):
        require_training_data(mcq, "ReFT")


@needs_data
def test_limit_cuts_every_split() -> None:
    data = load_task(task(name="svamp", cot="python", limit=7))
    assert (len(data.train), len(data.val), len(data.test)) == (7, 7, 7)


def test_real_task_without_data_dir_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFTKIT_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="--data-dir"):
        load_task(TaskConfig(name="svamp", cot="nl"))
    with pytest.raises(ConfigError, match="unknown task 'svamp2'"):
        load_task(TaskConfig(name="svamp2"))


def test_validation_carve_depends_on_ids_not_order() -> None:
    problems = [Problem(f"q{i}", f"question {i}", str(i)) for i in range(50)]
    train, val, heldout = carve_validation(problems, 5, seed=3)
    _, val_reversed, _ = carve_validation(problems[::-1], 5, seed=3)
    assert len(train) == 45 and heldout == [] and {p.id for p in val} == {p.id for p in val_reversed}
    with pytest.raises(ConfigError, match=r"task\.n_val"):
        carve_validation(problems, 50, seed=0)


def test_heldout_test_is_disjoint_and_leaves_validation_unchanged() -> None:
    problems = [Problem(f"q{i}", f"question {i}", str(i)) for i in range(50)]
    _, val_alone, _ = carve_validation(problems, 5, seed=3)
    train, val, heldout = carve_validation(problems, 5, seed=3, n_heldout=10)
    assert val == val_alone and len(heldout) == 10 and len(train) == 35
    assert not {p.id for p in heldout} & ({p.id for p in val} | {p.id for p in train})
    with pytest.raises(ConfigError, match=r"task\.n_heldout_test"):
        carve_validation(problems, 5, seed=0, n_heldout=45)


def test_svamp_heldout_split_reports_the_official_test_beside_it() -> None:
    plain = load_task(TaskConfig(name="svamp", cot="python", data_dir=str(DATA)))
    data = load_task(TaskConfig(name="svamp", cot="python", data_dir=str(DATA), n_heldout_test=400))
    assert (len(data.train), len(data.val), len(data.test)) == (len(plain.train) - 400, 200, 400)
    assert data.val == plain.val and data.test_name == "heldout"
    assert data.extra_tests == {"svamp_test": plain.test}
    assert not {p.id for p in data.test} & {p.id for p in data.train + data.val}
    with pytest.raises(ConfigError, match=r"task\.n_heldout_test.*no training file"):
        load_task(TaskConfig(name="mathqa_mcq", data_dir=str(DATA), n_heldout_test=10))


@pytest.mark.parametrize(
    ("raw", "answer_type", "expected"),
    [
        ("203.0", "numeric", "203"),
        ("1,000", "numeric", "1000"),
        (2.5, "numeric", "2.5"),
        ("-3", "numeric", "-3"),
        ("1/3", "numeric", "0.3333333333"),
        (True, "numeric", None),
        ("seven", "numeric", None),
        (None, "numeric", None),
        ("C", "mcq", "c"),
        ("(b)", "mcq", "b"),
        ("f", "mcq", None),
        (3, "mcq", None),
    ],
)
def test_canonical_answer(raw: object, answer_type: str, expected: str | None) -> None:
    assert canonical_answer(raw, answer_type) == expected


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_user_jsonl_task_with_a_field_mapping(tmp_path: Path) -> None:
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1), "why": f"{i} + 1 = {i + 1}"} for i in range(30)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [{"q": "What is 9 + 9?", "a": 18}])
    cfg = TaskConfig(name="jsonl", cot="nl", train_file=str(train), test_file=str(test), n_val=5,
                     question_field="q", answer_field="a", cot_field="why")  # fmt: skip
    data = load_task(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (25, 5, 1)
    assert data.test[0] == Problem("test_0", "What is 9 + 9?", "18", None)
    assert data.train[0].cot == "0 + 1 = 1"


def test_malformed_user_file_names_file_line_and_field(tmp_path: Path) -> None:
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"question": "ok?", "answer": "1"},
            "{not json",
            {"answer": "2"},
            {"question": "How many?", "answer": "many"},
            ["a", "list"],
        ],
    )
    cfg = TaskConfig(name="jsonl", cot="nl", test_file=str(bad))
    with pytest.raises(DataError) as err:
        load_task(cfg)
    assert err.value.problems == [
        f"{bad}:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{bad}:3: question: missing",
        f"{bad}:4: answer: expected a number, got 'many'",
        f"{bad}:5: record: expected a JSON object, got list",
    ]


def test_python_chains_are_parsed_not_run(tmp_path: Path) -> None:
    rows = [
        {"question": "q1", "answer": 1, "cot": "def solution():\n    return 1"},
        {"question": "q2", "answer": 2, "cot": "print('hi')"},
        {"question": "q3", "answer": 3, "cot": "def solution(:\n    return 3"},
    ]
    path = write_jsonl(tmp_path / "programs.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_task(TaskConfig(name="jsonl", cot="python", test_file=str(path)))
    assert [line.split(": ", 2)[1] for line in err.value.problems] == ["cot", "cot"]
    assert "must start with 'def solution():'" in err.value.problems[0]
    assert "does not parse" in err.value.problems[1]


@pytest.mark.parametrize("question", ['How long for her "full face?"', "a \\ b", 'say """hi""" now', "plain"])
def test_program_header_is_valid_python_for_any_question(question: str) -> None:
    namespace: dict[str, object] = {}
    exec(program_header(question) + "    return 1\n", namespace)  # a fixed body: nothing model-written runs here
    assert namespace["solution"].__doc__ == question  # type: ignore[attr-defined]


def test_records_from_memory_and_from_a_saved_hf_dataset(tmp_path: Path) -> None:
    rows = [{"problem": f"What is {i} * 2?", "solution": 2 * i} for i in range(12)]
    fields = Fields(id="id", question="problem", answer="solution", cot=None)
    problems, issues = problems_from(locate_rows(rows, "rows"), fields, cot="nl")
    assert not issues and problems[3] == Problem("3", "What is 3 * 2?", "6", None)
    datasets = pytest.importorskip("datasets")  # optional: only users who have it need this path
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    cfg = TaskConfig(name="jsonl", cot="nl", train_file=str(tmp_path / "ds"), n_val=2,
                     question_field="problem", answer_field="solution")  # fmt: skip
    data = load_task(cfg)
    assert (len(data.train), len(data.val)) == (10, 2) and data.train[0].answer == "0"
