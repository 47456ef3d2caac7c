"""``reftkit data``: list, stats, show and validate from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reftkit.cli.main import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (the shared datasets) is not present")


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "mine.jsonl"
    rows = [
        json.dumps({"question": "What is 2 + 2?", "answer": "4", "cot": "2 + 2 = 4"}),
        "{'question': 'single quotes are not JSON'}",
        json.dumps({"question": "What is 3 + 3?"}),
        json.dumps({"question": "What is 5 + 5?", "answer": "ten"}),
        "",
        json.dumps({"question": "What is 1 + 1?", "answer": 2, "cot": ""}),
    ]
    bad.write_text("\n".join(rows) + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["data", "validate", str(bad), "task.cot=nl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:-1] == [
        f"{bad}:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{bad}:3: answer: missing",
        f"{bad}:4: answer: expected a number, got 'ten'",
        f"{bad}:6: cot: expected a non-empty string, got ''",
    ]
    assert err[-1] == f"reftkit: error: 4 problem(s) in {bad}; nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_validate_with_field_mapping_and_sft_requirement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"problem": "What is 2 + 2?", "solution": 4}) + "\n")
    mapping = ["task.question_field=problem", "task.answer_field=solution"]
    assert main(["data", "validate", str(good), *mapping]) == 0
    assert "1 valid problems (0 with a python chain of thought)" in capsys.readouterr().out
    assert main(["data", "validate", str(good), "--sft", *mapping]) == 2
    assert f"{good}:1: cot: missing (SFT needs a chain of thought)" in capsys.readouterr().err


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", str(tmp_path / "nope.jsonl")]) == 2
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in capsys.readouterr().err


@needs_data
def test_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--data-dir", str(DATA)]) == 0
    table = capsys.readouterr().out
    assert "| svamp | numeric | nl/python | 2,874 | 200 | 1,000 |" in table
    assert "| mathqa_mcq | mcq | nl/python | 0 | 0 | 1,605 |" in table
    assert main(["data", "show", "svamp", "--data-dir", str(DATA), "-n", "2", "task.cot=python"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("=== svamp_") == 2 and "def solution():" in shown and "return result" in shown


@needs_data
def test_stats_on_svamp_grades_the_gold_annotations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "svamp", "--data-dir", str(DATA), "--cot", "nl"]) == 0
    out = capsys.readouterr().out
    assert "training items kept: 3,074 of 3,076 (99.93%); stated answer differs from gold: 2" in out
    assert "gold targets graded correct: 3,074 of 3,074 (100.00%)" in out
    assert "prompt tokens (tiny-preset BPE (1,024)): p50" in out


def _jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


NL_ROWS = [{"question": f"What is {i} + 1?", "answer": i + 1, "cot": f"{i} + 1 = {i + 1}"} for i in range(40)]


def test_validate_reads_n_cot_chains_as_n_cot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nl = _jsonl(tmp_path / "nl.jsonl", NL_ROWS)
    assert main(["data", "validate", str(nl)]) == 0  # task.cot not given: the chains say which style
    out = capsys.readouterr().out
    assert "40 valid problems (40 with a nl chain of thought)" in out and "CoT style nl detected" in out
    assert main(["data", "validate", str(nl), "task.cot=nl"]) == 0
    assert "detected" not in capsys.readouterr().out
    config = tmp_path / "nl.yaml"
    config.write_text("task: {cot: nl}\n")
    assert main(["data", "validate", str(nl), "--config", str(config)]) == 0
    assert main(["data", "validate", str(nl), "task.cot=python"]) == 2  # asked for P-CoT: checked as P-CoT
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "hint: if these chains are N-CoT (reasoning in words), give task.cot=nl"
    assert captured.err.splitlines()[-1] == f"reftkit: error: 40 problem(s) in {nl}; nothing was written"


def test_validate_summarises_problems_by_kind_in_numeric_line_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[dict | str] = [dict(row) for row in NL_ROWS[:12]]
    for line in (10, 2, 11, 3, 12):  # 1-based line numbers
        rows[line - 1] = {"question": "What?", "answer": f"x{line}"}
    rows[6] = "{not json"
    path = _jsonl(tmp_path / "mixed.jsonl", rows)
    assert main(["data", "validate", str(path), "task.cot=nl"]) == 2
    captured = capsys.readouterr()
    listed = [line.split(":")[1] for line in captured.err.splitlines()[:-1]]
    assert listed == ["2", "3", "7", "10", "11", "12"]  # numbers, not strings: 2 before 10
    assert captured.out.splitlines() == [
        f"{path}: 6 problem(s) of 2 kind(s)",
        "  5  answer: expected a number  [line 2, line 3, line 10, ... (2 more)]",
        "  1  not valid JSON: Expecting property name enclosed in double quotes  [line 7]",
    ]


def test_validate_orders_json_items_by_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = [{"item_id": f"s{i}", "question": "What?", "answer_value": "1" if i % 5 else "one"} for i in range(12)]
    path = tmp_path / "release.json"
    path.write_text(json.dumps(items))
    assert main(["data", "validate", str(path), "task.name=svamp", "task.cot=nl"]) == 2
    captured = capsys.readouterr()
    assert [line.split(": item ")[1].split(":")[0] for line in captured.err.splitlines()[:-1]] == ["0", "5", "10"]
    assert "  3  answer_value: expected a number  [item 0, item 5, item 10]" in captured.out


def test_validate_builtin_gsm8k_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"question": "Natalia sold 48 clips and half as many more. How many?", "answer": "48/2 = 24\n#### 72"}
    path = _jsonl(tmp_path / "train.jsonl", [good, {"question": "Q?", "answer": "no gold line"}, good])
    assert main(["data", "validate", str(path), "task.name=gsm8k", "task.cot=nl"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == f"{path}:2: answer: expected a rationale ending in a '#### <number>' line"
    path = _jsonl(path, [good, good])
    assert main(["data", "validate", str(path), "task.name=gsm8k", "task.cot=nl"]) == 0
    assert "2 valid problems (2 with a rationale, the nl chain of thought)" in capsys.readouterr().out
    assert main(["data", "validate", str(path)]) == 2  # read as your own records, the rationale is no number
    assert "hint: this looks like OpenAI's GSM8K file; give task.name=gsm8k" in capsys.readouterr().out


@needs_data
@pytest.mark.parametrize(
    ("file", "args", "expected"),
    [
        ("gsm8k/train.jsonl", ["task.name=gsm8k", "task.cot=nl"], "7,473 valid problems"),
        ("gsm8k/train.jsonl", ["task.name=gsm8k", "task.cot=python"], "7,473 valid problems"),
        ("gsm8k/test_set.json", ["task.name=gsm8k"], "1,319 valid problems"),
        ("svamp/train_nl.json", ["task.name=svamp"], "3,076 valid problems (3,076 with a nl chain of thought)"),
        ("svamp/train_python.json", ["task.name=svamp", "task.cot=python"], "3,043 valid problems (3,043 with a"),
        ("mathqa/test_set_mcq.json", ["task.name=mathqa_mcq"], "1,605 valid problems"),
    ],
)
def test_validate_the_shipped_files_in_their_own_formats(
    file: str, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "validate", str(DATA / file), *args]) == 0, capsys.readouterr().err[-2000:]
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize("text", ["", "\n  \n", "[]"])
def test_validate_fails_on_a_file_without_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "empty.json"
    path.write_text(text)
    for task in ("task.name=jsonl", "task.name=gsm8k", "task.name=svamp"):
        assert main(["data", "validate", str(path), task]) == 2
        assert f"{path}: holds no records" in capsys.readouterr().err


@pytest.mark.parametrize("n", ["0", "-2", "two"])
def test_show_needs_at_least_one_example(n: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["data", "show", "synthetic", "--preset", "micro", "-n", n])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reftkit: error: argument -n: ")
