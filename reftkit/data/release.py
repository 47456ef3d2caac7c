"""SVAMP and MathQA in the ReFT release's JSON format (``item_id``, ``question``, ``answer_cot``, ``answer_value``).

SVAMP has N-CoT and P-CoT training annotations; MathQA has only its test sets here (the release lost its
training files, REFERENCE.md D.2), so it is evaluation-only unless ``mathqa/train_{nl,python}.json`` exist.
The gold N-CoTs already end with "Therefore, the answer is <203>."; the reference appended its own trigger
sentence after it, so every target stated the answer twice (REFERENCE.md A.1). We cut the gold sentence,
check that the answer it stated is the gold answer, and drop (and count) the chains where it is not.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal

from reftkit.data.base import Loaded, Problem
from reftkit.data.records import RELEASE_FIELDS, DataError, Fields, problems_from, read_located
from reftkit.reward.kinds import AnswerType
from reftkit.reward.numbers import answers_match, parse_number

# "Therefore, the answer is <203>." and the few chains that end "The answer is <4>."
_STATED_ANSWER = re.compile(r"\s*(?:therefore,?\s*)?the answer is:?\s*<([^>]*)>\.?\s*$", re.IGNORECASE)

DISAGREES = "stated answer differs from gold"


def read_release_file(
    path: Path, *, cot: str, answer_type: AnswerType, id_prefix: str = "", fields: Fields = RELEASE_FIELDS
) -> list[Problem]:
    """All problems of one release file; any bad record stops with every problem listed."""
    located, issues = read_located(path)
    problems, more = problems_from(located, fields, cot=cot, answer_type=answer_type, id_prefix=id_prefix)
    if issues or more:
        raise DataError(issues + more)
    return problems


def strip_stated_answer(problems: list[Problem]) -> tuple[list[Problem], Counter[str]]:
    """Cut the gold N-CoT's own final answer sentence; drop chains whose stated answer is not the gold one."""
    kept, counts = [], Counter[str]()
    for p in problems:
        match = _STATED_ANSWER.search(p.cot or "")
        if match is None:
            kept.append(p)
            counts["no stated answer (kept)"] += 1
            continue
        stated = parse_number(match.group(1))
        if stated is None or not answers_match(stated, p.answer):
            counts[DISAGREES] += 1
            continue
        kept.append(Problem(p.id, p.question, p.answer, p.cot[: match.start()].rstrip()))  # type: ignore[index]
        counts["ok"] += 1
    return kept, counts


def load_svamp(data_dir: Path, cot: str) -> Loaded:
    """Train and test; the gold N-CoTs lose their own final answer sentence (see the module docstring)."""
    train = read_release_file(data_dir / "svamp" / f"train_{cot}.json", cot=cot, answer_type="numeric")
    counts = Counter({"ok": len(train)})
    if cot == "nl":
        train, counts = strip_stated_answer(train)
    test = read_release_file(data_dir / "svamp" / "test_set.json", cot=cot, answer_type="numeric")
    return Loaded(train, test, counts)


def load_mathqa(data_dir: Path, cot: str, answer_type: Literal["mcq", "numeric"]) -> Loaded:
    """MathQA multiple choice (``mcq``) or numeric, from the files named after it; training data only if the
    user supplies it."""
    test = read_release_file(data_dir / "mathqa" / f"test_set_{answer_type}.json", cot=cot, answer_type=answer_type)
    train_file = data_dir / "mathqa" / f"train_{cot}_{answer_type}.json"
    train = read_release_file(train_file, cot=cot, answer_type=answer_type) if train_file.is_file() else []
    return Loaded(train, test, Counter({"ok": len(train)}))
