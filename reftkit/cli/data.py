"""``reftkit data list | stats | show | validate``: look at a task's data before spending compute on it."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from reftkit.config.schema import ConfigError, TaskConfig
from reftkit.data.base import Problem, TaskData, prompt_text, target_text
from reftkit.data.records import RELEASE_FIELDS, DataError, Located, problems_from, read_located
from reftkit.data.registry import TASKS, load_task, split_task, task_info
from reftkit.reward.answers import grade_batch, outcome_counts


def list_tasks(cfg: TaskConfig) -> str:
    """Every registered task with its split sizes where its files can be read."""
    lines = ["| task | answers | CoT | train | val | test | about |", "|---|---|---|---|---|---|---|"]
    for info in TASKS.values():
        if info.name == "jsonl" and not (cfg.train_file or cfg.test_file):
            sizes = "– | – | –"
        else:
            try:
                data = load_task(replace(cfg, name=info.name, cot="nl"))
                sizes = f"{len(data.train):,} | {len(data.val):,} | {len(data.test):,}"
            except ConfigError as err:
                sizes = f"not readable: {err} | | "
        lines.append(f"| {info.name} | {info.answer_type} | {'/'.join(info.cots)} | {sizes} | {info.description} |")
    return "\n".join(lines)


def task_stats(cfg: TaskConfig, cots: Sequence[str], tokenizer_path: str | None) -> str:
    """Counts, dropped annotations, token lengths and how the gold annotations grade, per CoT style."""
    out = []
    for cot in cots:
        task_cfg = replace(cfg, cot=cot)
        loaded = task_info(cfg.name).load(task_cfg)
        data = split_task(task_cfg, loaded)
        out.append(f"## {data.name} / {cot}")
        sizes = f"train {len(data.train):,} · val {len(data.val):,} · test {len(data.test):,}"
        out.append(f"{sizes} (answers: {data.answer_type})")
        out.append(_annotation_line(cfg.name, cot, loaded.counts))
        if data.train:
            out.append(_length_lines(data, cot, tokenizer_path))
            out.append(_gold_line(data, cot))
        out.append("")
    return "\n".join(out)


def _annotation_line(name: str, cot: str, counts: Counter[str]) -> str:
    total = sum(counts.values())
    ok = counts.get("ok", 0)
    what = "derived P-CoT programs that execute to the gold answer" if (name, cot) == ("gsm8k", "python") else (
        "training items kept"
    )  # fmt: skip
    failures = ", ".join(f"{k}: {v:,}" for k, v in counts.most_common() if k != "ok") or "none dropped"
    return f"{what}: {ok:,} of {total:,} ({100 * ok / max(total, 1):.2f}%); {failures}"


def _length_lines(data: TaskData, cot: str, tokenizer_path: str | None) -> str:
    from reftkit.models.loading import load_tokenizer, train_tokenizer

    texts = [(prompt_text(p, cot), target_text(p, cot)) for p in data.train]  # type: ignore[arg-type]
    if tokenizer_path:
        tokenizer, name = load_tokenizer(tokenizer_path), tokenizer_path
    else:  # what the tiny preset would train on this split
        tokenizer, name = train_tokenizer((a + b for a, b in texts), 1024), "tiny-preset BPE (1,024)"
    rows = []
    for label, column in (("prompt", 0), ("target", 1)):
        lengths = sorted(len(tokenizer(t[column], add_special_tokens=False)["input_ids"]) for t in texts)
        rows.append(f"{label} tokens ({name}): {_percentiles(lengths)}")
    return "\n".join(rows)


def _percentiles(values: list[int]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return f"p50 {q[49]:.0f} · p90 {q[89]:.0f} · p99 {q[98]:.0f} · max {values[-1]}"


def _gold_line(data: TaskData, cot: str) -> str:
    """Grade the gold SFT targets through the answer module: anything short of all-correct is a data bug."""
    problems = data.train + data.val
    completions = [target_text(p, cot) for p in problems]  # type: ignore[arg-type]
    graded = grade_batch(problems, completions, cot, answer_type=data.answer_type)
    counts = outcome_counts(graded)
    bad = [p.id for p, g in zip(problems, graded, strict=True) if g.outcome != "correct"]
    share = 100 * counts["correct"] / len(graded)
    tail = f"; first failures: {', '.join(bad[:5])}" if bad else ""
    return f"gold targets graded correct: {counts['correct']:,} of {len(graded):,} ({share:.2f}%) {dict(counts)}{tail}"


def show_examples(cfg: TaskConfig, split: str, n: int) -> str:
    data = load_task(cfg)
    problems = {"train": data.train, "val": data.val, "test": data.test}[split][:n]
    blocks = []
    for p in problems:
        target = target_text(p, cfg.cot) if p.cot else f"(no chain of thought; gold answer {p.answer})"
        blocks.append(f"=== {p.id} (gold {p.answer})\n{prompt_text(p, cfg.cot)}{target}")
    return "\n\n".join(blocks) if blocks else f"{data.name} has no {split} problems"


def validate_file(path: str, cfg: TaskConfig, require_cot: bool, detect_cot: bool = False) -> tuple[str, list[str]]:
    """A file checked record by record, read as ``task.name`` reads its files: ``jsonl`` through the field mapping
    (``task.*_field``), the built-in tasks in their own formats (GSM8K's ``#### 72`` JSONL, the ReFT release's
    JSON). Returns (summary, one ``file:line: field: problem`` line per problem, in file order); with problems the
    summary counts them by kind. ``detect_cot``: ``task.cot`` was not given, so the chains say which style they
    are (any ``def solution`` program: P-CoT, else N-CoT)."""
    if task_info(cfg.name).load is TASKS["synthetic"].load:  # the default task reads no file: yours, then
        cfg = replace(cfg, name="jsonl")
    if not Path(path).exists():
        return "", [f"{path}: no such file"]
    try:
        located, problems = read_located(path)
    except DataError as err:
        return "", err.problems
    if not located and not problems:
        return "", [f"{path}: holds no records (it is empty); give one JSON object per line"]
    checked = _check_records(path, located, cfg, require_cot, detect_cot)
    problems = _in_file_order(path, [*checked.file_problems, *problems, *checked.problems])
    if problems:
        return problem_summary(path, problems, checked.hints), problems
    with_cot = sum(p.cot is not None for p in checked.found)
    chains = checked.chains or f"{with_cot:,} with a {checked.cot} chain of thought"
    summary = f"{path}: {len(checked.found):,} valid problems ({chains})"
    return "\n".join([summary, f"format: {checked.format}", *checked.notes]), []


@dataclass
class _Checked:
    found: list[Problem]
    problems: list[str]
    cot: str
    format: str
    file_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    chains: str | None = None
    """What the summary says of the chains, where it is not "N with a <cot> chain of thought"."""


def _check_records(path: str, located: list[Located], cfg: TaskConfig, require_cot: bool, detect_cot: bool) -> _Checked:
    """The records as the task's loader reads them."""
    from reftkit.data.registry import missing_fields, user_fields

    json_array = bool(located) and located[0].where.startswith(f"{Path(path)}: item ")  # read_located's naming
    if cfg.name == "gsm8k" and not json_array:  # OpenAI's JSONL; the release's test_set.json is read below
        from reftkit.data.gsm8k import rationale_problems

        found, problems = rationale_problems(located, "gsm8k_")
        form = "OpenAI's GSM8K JSONL (question, answer: a rationale ending in '#### <number>')"
        if cfg.cot == "nl":
            chains = f"{len(found):,} with a rationale, the nl chain of thought"
            return _Checked(found, problems, "nl", form, chains=chains)
        note = (
            "P-CoT programs are derived from the calculator annotations when the task loads; only those that "
            "reproduce the gold answer are kept (`reftkit data stats gsm8k --cot python` counts them)"
        )
        chains = f"{len(found):,} with a rationale to derive a python program from"
        return _Checked(found, problems, "python", form, notes=[note], chains=chains)
    if cfg.name == "jsonl":
        fields, answer_type = user_fields(cfg), cfg.answer_type
        file_problems = missing_fields(located, fields, path)
        form = f"your records, fields {fields.question} / {fields.answer} / {fields.cot} / {fields.id} (task.*_field)"
    else:
        fields, answer_type, file_problems = RELEASE_FIELDS, task_info(cfg.name).answer_type, []
        form = f"the ReFT release JSON ({fields.id}, {fields.question}, {fields.answer}, {fields.cot}) of {cfg.name}"
    cot = _chain_style(located, fields.cot) if detect_cot else None
    notes = [f"CoT style {cot} detected from the chains; give task.cot to check them as another"] if cot else []
    cot = cot or cfg.cot
    found, problems = problems_from(located, fields, cot=cot, answer_type=answer_type, require_cot=require_cot)
    if cfg.name == "svamp" and cot == "nl" and found:
        from reftkit.data.release import DISAGREES, strip_stated_answer

        dropped = strip_stated_answer(found)[1][DISAGREES]
        if dropped:
            notes.append(f"{dropped:,} chain(s) state an answer that differs from the gold; the task drops them")
    hints = []
    if cot == "python" and any("must start with 'def solution():'" in line for line in problems):
        hints.append("hint: if these chains are N-CoT (reasoning in words), give task.cot=nl")
    records = [item.record for item in located if isinstance(item.record, Mapping)]
    if cfg.name == "jsonl" and records and all("####" in str(r.get("answer", "")) for r in records):
        hints.append("hint: this looks like OpenAI's GSM8K file; give task.name=gsm8k")
    elif cfg.name == "jsonl" and records and all(RELEASE_FIELDS.answer in r for r in records):
        hints.append("hint: this looks like a ReFT release file; give task.name=svamp, gsm8k, mathqa_mcq, ...")
    return _Checked(found, problems, cot, form, file_problems, notes, hints)


def _chain_style(located: list[Located], cot_field: str | None) -> str | None:
    """P-CoT if any record's chain is a ``def solution`` program, N-CoT if there are chains and none is; None
    without chains."""
    chains = [
        item.record.get(cot_field)
        for item in located
        if cot_field and isinstance(item.record, Mapping) and isinstance(item.record.get(cot_field), str)
    ]
    chains = [c for c in chains if c.strip()]
    if not chains:
        return None
    return "python" if any(c.lstrip().startswith("def solution") for c in chains) else "nl"


_WHERE = re.compile(r":(?P<line>\d+): |: (?P<unit>item|row) (?P<index>\d+): ")


def _where(path: str, problem: str) -> tuple[int, str | None, str]:
    """(position in the file, "line 12" / "item 3" / "row 3" or None for the whole file, what is wrong)."""
    for prefix in dict.fromkeys([path, str(Path(path))]):
        if problem.startswith(prefix):
            match = _WHERE.match(problem, len(prefix))
            if match is None:
                return -1, None, problem[len(prefix) :].lstrip(": ")
            if match["line"]:
                return int(match["line"]), f"line {match['line']}", problem[match.end() :]
            return int(match["index"]), f"{match['unit']} {match['index']}", problem[match.end() :]
    return -1, None, problem


def _in_file_order(path: str, problems: list[str]) -> list[str]:
    """File-wide problems first, then by line (or item) number, as numbers (line 2 before line 10); a record's
    own problems keep their order."""
    return sorted(problems, key=lambda problem: _where(path, problem)[0])


def problem_kind(what: str) -> str:
    """A problem without the value it is about: ``answer: expected a number, got 'ten'`` -> ``answer: expected a
    number``; ``cot: program does not parse: ... (program line 3)`` -> ``cot: program does not parse``."""
    name, sep, message = what.partition(": ")
    message = re.split(r", got | \(|: |; ", message if sep else name, maxsplit=1)[0]
    message = re.sub(r"^duplicate id .*", "duplicate id", message)
    return f"{name}: {message}" if sep else message


def problem_summary(path: str, problems: list[str], hints: Sequence[str] = (), first: int = 3) -> str:
    """How many problems of each kind, each with where its first ``first`` are, kinds in file order."""
    kinds: dict[str, list[str]] = {}
    for problem in problems:
        _, where, what = _where(path, problem)
        kinds.setdefault(problem_kind(what) if where else what, []).append(where or "the whole file")
    lines = [f"{path}: {len(problems):,} problem(s) of {len(kinds)} kind(s)"]
    width = len(f"{max(len(w) for w in kinds.values()):,}")
    for kind, wheres in kinds.items():
        more = f", ... ({len(wheres) - first:,} more)" if len(wheres) > first else ""
        lines.append(f"  {len(wheres):>{width},}  {kind}  [{', '.join(wheres[:first])}{more}]")
    return "\n".join([*lines, *hints])
