"""``reftkit data list | stats | show | validate``: look at a task's data before spending compute on it."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from reftkit.answers import grade_batch, outcome_counts
from reftkit.config import ConfigError, TaskConfig
from reftkit.tasks import TASKS, load_task, split_task, task_info
from reftkit.tasks.base import TaskData, prompt_text, target_text
from reftkit.tasks.records import DataError, problems_from, read_located


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
    from reftkit.models import load_tokenizer, train_tokenizer

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
        target = target_text(p, cfg.cot) if p.cot else f"(no chain of thought; gold answer {p.answer})"  # type: ignore[arg-type]
        blocks.append(f"=== {p.id} (gold {p.answer})\n{prompt_text(p, cfg.cot)}{target}")  # type: ignore[arg-type]
    return "\n\n".join(blocks) if blocks else f"{data.name} has no {split} problems"


def validate_file(path: str, cfg: TaskConfig, require_cot: bool) -> tuple[str, list[str]]:
    """A user's file checked record by record: (summary, one ``file:line: field: problem`` line per problem)."""
    from reftkit.tasks import missing_fields, user_fields

    if not Path(path).exists():
        return "", [f"{path}: no such file"]
    try:
        located, problems = read_located(path)
    except DataError as err:
        return "", err.problems
    if not located and not problems:
        return "", [f"{path}: holds no records (it is empty); give one JSON object per line"]
    fields = user_fields(cfg)
    found, more = problems_from(located, fields, cot=cfg.cot, answer_type=cfg.answer_type, require_cot=require_cot)
    problems = missing_fields(located, fields, path) + sorted(problems + more, key=_line_order)
    with_cot = sum(p.cot is not None for p in found)
    summary = f"{path}: {len(found):,} valid problems ({with_cot:,} with a {cfg.cot} chain of thought)"
    return summary, problems


def _line_order(problem: str) -> tuple[int, str]:
    """Report problems in file order: ``file:12: ...`` sorts by its line number."""
    parts = problem.split(":", 2)
    return (int(parts[1]), problem) if len(parts) > 2 and parts[1].isdigit() else (0, problem)
