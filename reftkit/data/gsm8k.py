"""GSM8K from OpenAI's original files: N-CoT from the human rationale, P-CoT derived from its calculator notes.

The ReFT release lost its GSM8K training annotations (REFERENCE.md D.2). The questions and gold answers
are exact (item ``gsm8k_N`` is line N of ``train.jsonl``); the N-CoT is the human rationale with the
calculator annotations removed; the P-CoT is a program derived from those annotations
(:mod:`reftkit.data.gsm8k_programs`), kept only if it executes to the gold answer. Deriving and running
7,473 programs takes a while, so the verified programs are cached, keyed by the data file and the code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from reftkit.data import gsm8k_expressions, gsm8k_programs
from reftkit.data.base import Loaded, Problem
from reftkit.data.records import DataError, Located, read_located
from reftkit.data.release import read_release_file
from reftkit.reward.numbers import parse_number


def load_gsm8k(data_dir: Path, cot: str) -> Loaded:
    """Train and test; training items whose P-CoT cannot be derived are dropped and counted, never kept."""
    train_file = data_dir / "gsm8k" / "train.jsonl"
    rationales = read_rationales(train_file, "gsm8k_")
    nl = [_nl_problem(p) for p in rationales]
    if cot == "nl":
        train, counts = nl, Counter({"ok": len(nl)})
    else:
        items = [(r.question, r.answer, n.answer) for r, n in zip(rationales, nl, strict=True)]
        programs, counts = derived_programs(train_file, items)
        train = [Problem(p.id, p.question, p.answer, prog) for p, prog in zip(nl, programs, strict=True) if prog]
    test_set = data_dir / "gsm8k" / "test_set.json"
    if test_set.is_file():  # the ReFT release's test file: same questions and order as test.jsonl
        test = read_release_file(test_set, cot=cot, answer_type="numeric", id_prefix="test_")
    else:
        test = [_nl_problem(p, keep_cot=False) for p in read_rationales(data_dir / "gsm8k" / "test.jsonl", "test_")]
    return Loaded(train, test, counts)


def read_rationales(path: Path, id_prefix: str) -> list[Problem]:
    """OpenAI GSM8K JSONL; ``Problem.answer`` holds the whole rationale until ``_nl_problem`` splits it."""
    located, issues = read_located(path)
    problems, more = rationale_problems(located, id_prefix)
    if issues or more:
        raise DataError(issues + more)
    return problems


def rationale_problems(located: list[Located], id_prefix: str) -> tuple[list[Problem], list[str]]:
    """The records of an OpenAI GSM8K file as problems (the whole rationale as ``answer``), and one line per
    record that is not one (a question, and a rationale that ends in ``#### <number>``)."""
    problems, issues = [], []
    for number, item in enumerate(located):
        record = item.record if isinstance(item.record, dict) else {}
        question, rationale = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not question.strip():
            issues.append(f"{item.where}: question: expected a non-empty string")
        elif not isinstance(rationale, str) or not _ends_in_gold(rationale):
            issues.append(f"{item.where}: answer: expected a rationale ending in a '#### <number>' line")
        else:
            problems.append(Problem(f"{id_prefix}{number}", question.strip(), rationale))
    return problems, issues


def _ends_in_gold(rationale: str) -> bool:
    if parse_number(rationale.rpartition("####")[2]) is None:
        return False
    try:
        gsm8k_programs.nl_cot_from_rationale(rationale)  # what _nl_problem does with it
    except ValueError:
        return False
    return True


def _nl_problem(p: Problem, keep_cot: bool = True) -> Problem:
    chain, gold = gsm8k_programs.nl_cot_from_rationale(p.answer)
    return Problem(p.id, p.question, gold, chain if keep_cot else None)


def derived_programs(train_file: Path, items: list[tuple[str, str, str]]) -> tuple[list[str | None], Counter[str]]:
    """Verified P-CoT programs for (question, rationale, gold) items, None where none was kept; cached."""
    sources = b"".join(Path(module.__file__).read_bytes() for module in (gsm8k_programs, gsm8k_expressions))
    key = hashlib.sha256(train_file.read_bytes() + sources).hexdigest()[:16]
    cache = cache_dir() / f"gsm8k-python-{key}.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        return stored["programs"], Counter(stored["counts"])
    programs, counts = gsm8k_programs.derive_gsm8k(items)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"programs": programs, "counts": dict(counts)}))
    tmp.replace(cache)  # atomic: a killed run never leaves half a cache file
    return programs, Counter(counts)


def cache_dir() -> Path:
    return Path(os.environ.get("REFTKIT_CACHE", Path.home() / ".cache" / "reftkit"))
