"""``reftkit data``: list, stats, show and validate from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reftkit.cli import main

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
