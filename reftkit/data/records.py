"""Problem files in, ``Problem`` lists out, with every bad record named by file, line and field.

A malformed record must stop a run before any training starts, with a message the user can act on, and
``reftkit data validate`` must list every problem of a file at once. So readers never raise on the first
bad record: they collect one ``file:line: field: what is wrong`` line per problem and the caller decides.
JSONL records are located by line, JSON arrays by item index, ``datasets`` directories by row.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reftkit.config.schema import ConfigError
from reftkit.data.base import Problem
from reftkit.reward.kinds import ANSWER_KINDS, AnswerType


class DataError(ConfigError):
    """Bad input data. ``problems`` holds one ``file:line: field: what is wrong`` line per bad record."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more; `reftkit data validate FILE` lists them all)"
        super().__init__(self.problems[0] + (more if len(self.problems) > 1 else ""))


@dataclass(frozen=True)
class Fields:
    """Which record fields hold what; ``cot=None`` reads no chain of thought (RL / evaluation data)."""

    id: str = "id"
    question: str = "question"
    answer: str = "answer"
    cot: str | None = "cot"


RELEASE_FIELDS = Fields(id="item_id", question="question", answer="answer_value", cot="answer_cot")
"""The ReFT release's JSON files (REFERENCE.md D.1)."""


@dataclass(frozen=True)
class Located:
    where: str  # "file:line" (JSONL), "file: item N" (JSON array), "dir: row N" (datasets)
    record: Any


def read_located(path: str | Path) -> tuple[list[Located], list[str]]:
    """The records of a JSONL file, a JSON array file or a ``datasets.save_to_disk`` directory."""
    path = Path(path)
    if path.is_dir():
        return _read_hf_dataset(path), []
    if not path.is_file():
        raise DataError([f"{path}: no such file"])
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError([f"{path}:{err.lineno}: not valid JSON: {err.msg}"]) from None
        return [Located(f"{path}: item {i}", item) for i, item in enumerate(items)], []
    located, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            located.append(Located(f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})")
    return located, problems


def read_utf8(path: Path) -> str:
    """A text file's contents; bytes that are not UTF-8 raise a DataError naming each such line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    problems = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(
                f"{path}:{number}: not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); "
                "save the file as UTF-8"
            )
    raise DataError(problems)


def is_saved_dataset(path: Path) -> bool:
    """Whether a folder looks like ``datasets``' ``save_to_disk`` output (one dataset or a DatasetDict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def not_a_dataset(path: Path) -> str:
    return (
        f"{path} is a folder but not a dataset saved with datasets' save_to_disk (no state.json or "
        "dataset_dict.json); give a JSONL or JSON file, or such a folder"
    )


def _read_hf_dataset(path: Path) -> list[Located]:
    if not is_saved_dataset(path):
        raise DataError([not_a_dataset(path)])
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(
            [f"{path}: is a directory; reading a saved Hugging Face dataset needs `pip install datasets`"]
        ) from None
    try:
        dataset = load_from_disk(str(path))
    except (OSError, ValueError) as err:  # a damaged folder: missing arrow files, bad JSON
        reason = " ".join(str(err).split())
        raise DataError([f"{path}: could not be read as a saved dataset ({type(err).__name__}: {reason})"]) from None
    if hasattr(dataset, "keys"):  # a DatasetDict: the caller must name one split's directory
        raise DataError([f"{path}: holds splits {sorted(dataset.keys())}; point at one split's directory"])
    return [Located(f"{path}: row {i}", row) for i, row in enumerate(dataset)]


def locate_rows(rows: Iterable[Mapping[str, Any]], source: str) -> list[Located]:
    """Records from memory (a list of dicts, a ``datasets.Dataset``), located by row."""
    return [Located(f"{source}: row {i}", row) for i, row in enumerate(rows)]


def problems_from(
    located: Iterable[Located],
    fields: Fields,
    *,
    cot: str,
    answer_type: AnswerType = "numeric",
    id_prefix: str = "",
    require_cot: bool = False,
) -> tuple[list[Problem], list[str]]:
    """Turn records into problems; each record that cannot be used yields a problem line instead."""
    problems: list[Problem] = []
    issues: list[str] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(located):
        found = check_record(item, fields, cot=cot, answer_type=answer_type, require_cot=require_cot)
        if isinstance(found, list):
            issues += found
            continue
        problem_id = id_prefix + (found.id if found.id else str(index))
        if problem_id in seen:
            issues.append(f"{item.where}: {fields.id}: duplicate id {problem_id!r} (first at {seen[problem_id]})")
            continue
        seen[problem_id] = item.where
        problems.append(Problem(problem_id, found.question, found.answer, found.cot))
    return problems, issues


def check_record(
    item: Located, fields: Fields, *, cot: str, answer_type: AnswerType, require_cot: bool
) -> Problem | list[str]:
    """One record as a Problem (``id`` empty when the record has none), or the list of what is wrong with it."""
    where, record = item.where, item.record
    if not isinstance(record, Mapping):
        return [f"{where}: record: expected a JSON object, got {type(record).__name__}"]
    issues = []
    question = record.get(fields.question)
    if not isinstance(question, str) or not question.strip():
        issues.append(f"{where}: {fields.question}: {_missing_or('a non-empty string', record, fields.question)}")
    answer = canonical_answer(record.get(fields.answer), answer_type)
    if answer is None:
        expected = ANSWER_KINDS[answer_type].gold_description
        issues.append(f"{where}: {fields.answer}: {_missing_or(expected, record, fields.answer)}")
    chain = record.get(fields.cot) if fields.cot else None
    if chain is None and require_cot:
        issues.append(f"{where}: {fields.cot}: missing (SFT needs a chain of thought)")
    elif chain is not None:
        issues += [f"{where}: {fields.cot}: {msg}" for msg in _chain_problems(chain, cot)]
    raw_id = record.get(fields.id)
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
        issues.append(f"{where}: {fields.id}: expected a string or integer, got {raw_id!r}")
    if issues:
        return issues
    return Problem(str(raw_id) if raw_id is not None else "", question.strip(), answer, chain)  # type: ignore[arg-type,union-attr]


def canonical_answer(value: Any, answer_type: AnswerType = "numeric") -> str | None:
    """A gold answer as the string targets and grading use ("203.0" -> "203", "1,000" -> "1000", "C" -> "c")."""
    return ANSWER_KINDS[answer_type].canonical_gold(value)


def _missing_or(expected: str, record: Mapping[str, Any], field: str) -> str:
    if field not in record:
        return "missing"
    return f"expected {expected}, got {_short(record[field])}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _chain_problems(chain: Any, cot: str) -> list[str]:
    if not isinstance(chain, str) or not chain.strip():
        return [f"expected a non-empty string, got {_short(chain)}"]
    if cot != "python":
        return []
    if not chain.lstrip().startswith("def solution"):
        return ["a P-CoT program must start with 'def solution():'"]
    try:
        ast.parse(chain)  # parsed, never executed: gold programs run only in the sandbox
    except SyntaxError as err:
        return [f"program does not parse: {err.msg} (program line {err.lineno})"]
    return []


def carve_validation(
    problems: Sequence[Problem], n_val: int, seed: int, n_heldout: int = 0
) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """Split off ``n_val`` validation and then ``n_heldout`` held-out test problems, by a seeded hash of ids.

    Hash order, not a shuffled index: the split depends only on the ids and the seed, so it is the same
    on every machine and Python version, whatever the file order, and adding items does not reshuffle it.
    Validation takes the first ``n_val`` in that order whatever ``n_heldout`` is, so runs with and without
    a held-out test split select checkpoints on the same questions.
    """
    if n_val + n_heldout >= len(problems):
        raise ConfigError(
            f"task.n_val + task.n_heldout_test: {n_val} + {n_heldout} is not smaller than the "
            f"{len(problems)} training problems"
        )
    ranked = sorted(problems, key=lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).digest())
    val_ids = {p.id for p in ranked[:n_val]}
    heldout_ids = {p.id for p in ranked[n_val : n_val + n_heldout]}
    return (
        [p for p in problems if p.id not in val_ids and p.id not in heldout_ids],
        [p for p in problems if p.id in val_ids],
        [p for p in problems if p.id in heldout_ids],
    )
