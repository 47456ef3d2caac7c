"""Task registry: a name in the config becomes a ``TaskData`` with train / validation / test splits.

Real datasets are read from ``task.data_dir`` (or ``$REFTKIT_DATA_DIR``) in the layout of
``shared/data/README.md``. Validation is always carved from train by a seeded hash of the ids, so
checkpoints are selected without touching the test set and the split is the same on every run.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reftkit.config.schema import ConfigError, TaskConfig
from reftkit.data.base import Loaded, Problem, TaskData
from reftkit.data.gsm8k import load_gsm8k
from reftkit.data.records import (
    DataError,
    Fields,
    Located,
    carve_validation,
    is_saved_dataset,
    not_a_dataset,
    problems_from,
    read_located,
)
from reftkit.data.release import load_mathqa, load_svamp
from reftkit.data.synthetic import load_synthetic
from reftkit.reward.kinds import ANSWER_KINDS, AnswerType


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    answer_type: AnswerType
    cots: tuple[str, ...]
    load: Callable[[TaskConfig], Loaded]
    folder: str | None = None
    """Its sub-folder of ``task.data_dir``; None: it reads no data folder."""


def _synthetic(cfg: TaskConfig) -> Loaded:
    data = load_synthetic(cot=cfg.cot, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                          seed=cfg.data_seed, max_ops=cfg.max_ops)  # fmt: skip
    return Loaded(data.train, data.test, Counter({"ok": len(data.train)}), val=data.val)


def _gsm8k(cfg: TaskConfig) -> Loaded:
    return load_gsm8k(data_dir(cfg), cfg.cot)


def _svamp(cfg: TaskConfig) -> Loaded:
    return load_svamp(data_dir(cfg), cfg.cot)


def _mathqa(answer_type: Literal["mcq", "numeric"]) -> Callable[[TaskConfig], Loaded]:
    def load(cfg: TaskConfig) -> Loaded:
        return load_mathqa(data_dir(cfg), cfg.cot, answer_type)

    return load


def _user_files(cfg: TaskConfig) -> Loaded:
    _check_user_files(cfg)
    train = read_user_file(cfg.train_file, cfg, "train_") if cfg.train_file else []
    test = read_user_file(cfg.test_file, cfg, "test_") if cfg.test_file else []
    val = read_user_file(cfg.val_file, cfg, "val_") if cfg.val_file else None
    return Loaded(train, test, Counter({"ok": len(train)}), val)


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in [
        TaskInfo("synthetic", "embedded multi-step arithmetic stories (generated, offline)", "numeric",
                 ("nl", "python"), _synthetic),
        TaskInfo("gsm8k", "GSM8K grade-school math; P-CoT derived from calculator annotations", "numeric",
                 ("nl", "python"), _gsm8k, "gsm8k"),
        TaskInfo("svamp", "SVAMP (MAWPS + ASDiv-A train, SVAMP challenge test)", "numeric", ("nl", "python"),
                 _svamp, "svamp"),
        TaskInfo("mathqa_mcq", "MathQA multiple choice (test only here)", "mcq", ("nl", "python"), _mathqa("mcq"),
                 "mathqa"),
        TaskInfo("mathqa_numeric", "MathQA with options removed (test only here)", "numeric", ("nl", "python"),
                 _mathqa("numeric"), "mathqa"),
        TaskInfo("jsonl", "your own JSONL / JSON / saved datasets files (task.train_file, task.test_file)",
                 "numeric", ("nl", "python"), _user_files),
    ]
}  # fmt: skip


def load_task(cfg: TaskConfig) -> TaskData:
    """Load a task's splits: validation carved from train (or ``task.val_file``), each split cut to ``limit``."""
    return split_task(cfg, task_info(cfg.name).load(cfg))


def split_task(cfg: TaskConfig, loaded: Loaded) -> TaskData:
    """The splits of what a task's loader returned (``reftkit data stats`` also needs the loader's counts)."""
    info = task_info(cfg.name)
    train, val, test = loaded.train, loaded.val, loaded.test
    heldout: list[Problem] = []
    if train:
        n_val = cfg.n_val if val is None else 0
        train, carved, heldout = carve_validation(train, n_val, cfg.data_seed, cfg.n_heldout_test)
        val = carved if val is None else val
    answer_type = cfg.answer_type if cfg.name == "jsonl" else info.answer_type
    limit = cfg.limit
    extra = {}
    if cfg.n_heldout_test:
        if not heldout:
            raise ConfigError(f"task.n_heldout_test: task {cfg.name!r} has no training file to hold questions out of")
        extra = {f"{cfg.name}_test": test[:limit]} if test else {}
        test = heldout
    return TaskData(
        cfg.name,
        train[:limit],
        (val or [])[:limit],
        test[:limit],
        answer_type,
        test_name="heldout" if cfg.n_heldout_test else "test",
        extra_tests=extra,
    )


def answer_type_of(name: str) -> AnswerType:
    """The answer type of a task (``gsm8k`` -> ``numeric``), or of an answer type's own name; ValueError
    listing both. For grading by task name: ``grade(..., answer_type_of("mathqa_mcq"))``."""
    known: dict[str, AnswerType] = {t: t for t in ANSWER_KINDS} | {t: info.answer_type for t, info in TASKS.items()}
    if name not in known:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(known)}")
    return known[name]


def task_info(name: str) -> TaskInfo:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"task.name: unknown task {name!r}; {hint}available: {', '.join(TASKS)}")
    return TASKS[name]


def check_task(cfg: TaskConfig) -> None:
    """The ConfigErrors loading would raise for a missing folder or file, found without reading any data,
    so a command can fail before it starts work."""
    info = task_info(cfg.name)
    if info.folder:
        root = data_dir(cfg)
        if not (root / info.folder).is_dir():
            raise ConfigError(
                f"task.data_dir: {root} has no {info.folder}/ folder; point it at the folder that holds "
                "gsm8k/, svamp/, mathqa/"
            )
    elif cfg.name == "jsonl":
        _check_user_files(cfg)


def _check_user_files(cfg: TaskConfig) -> None:
    if not cfg.train_file and not cfg.test_file:
        raise ConfigError("task.train_file: the jsonl task needs task.train_file and/or task.test_file")
    for key in ("train_file", "val_file", "test_file"):
        path = getattr(cfg, key)
        if path and not Path(path).exists():
            raise ConfigError(f"task.{key}: {path}: no such file or folder")
        if path and Path(path).is_dir() and not is_saved_dataset(Path(path)):
            raise ConfigError(f"task.{key}: {not_a_dataset(Path(path))}")


def data_dir(cfg: TaskConfig) -> Path:
    """``task.data_dir``, else ``$REFTKIT_DATA_DIR``; the folder that holds ``gsm8k/``, ``svamp/``, ``mathqa/``."""
    raw = cfg.data_dir or os.environ.get("REFTKIT_DATA_DIR")
    if not raw:
        raise ConfigError(
            f"task.data_dir: task {cfg.name!r} reads files; pass --data-dir DIR (e.g. ../shared/data) "
            "or set REFTKIT_DATA_DIR"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        source = "" if cfg.data_dir else " (from $REFTKIT_DATA_DIR)"
        raise ConfigError(
            f"task.data_dir: {path}{source} is not a directory; pass --data-dir DIR, the folder that holds "
            "gsm8k/, svamp/, mathqa/"
        )
    return path


def user_fields(cfg: TaskConfig) -> Fields:
    return Fields(id=cfg.id_field, question=cfg.question_field, answer=cfg.answer_field, cot=cfg.cot_field)


def read_user_file(path: str, cfg: TaskConfig, id_prefix: str) -> list[Problem]:
    """A user's file through the field mapping; every bad record is reported (file, line, field)."""
    key = f"task.{id_prefix}file"
    try:
        located, issues = read_located(path)
    except DataError as err:
        raise DataError([f"{key}: {line}" for line in err.problems]) from None
    if not located and not issues:
        raise ConfigError(f"{key}: {path} holds no records (it is empty); give one JSON object per line")
    fields = user_fields(cfg)
    problems, more = problems_from(located, fields, cot=cfg.cot, answer_type=cfg.answer_type, id_prefix=id_prefix)
    if issues or more:
        raise DataError(missing_fields(located, fields, path) + issues + more)
    return problems


def missing_fields(located: list[Located], fields: Fields, path: str | Path) -> list[str]:
    """One line with the fix when no record has the question or the answer field (a file with other column
    names, e.g. ``problem`` / ``solution``), else nothing."""
    records = [item.record for item in located if isinstance(item.record, Mapping)]
    wanted = {"question": fields.question, "answer": fields.answer}
    absent = {key: name for key, name in wanted.items() if records and all(name not in r for r in records)}
    if not absent:
        return []
    has = ", ".join(map(str, list(records[0])[:8])) or "none"
    names = " and ".join(repr(name) for name in absent.values())
    keys = " and ".join(f"task.{key}_field" for key in absent)
    verb = "is" if len(absent) == 1 else "are"
    return [f"{path}: {names} {verb} in no record (the first has: {has}); set {keys} to your file's field names"]


def require_training_data(data: TaskData, what: str) -> None:
    """SFT needs gold chains and ReFT needs questions; say which task cannot give them and what to do."""
    if not data.train:
        raise ConfigError(
            f"task.name: {data.name} has no training questions here ({what} needs them); "
            "evaluate on it, or give your own with task.name=jsonl task.train_file=FILE"
        )
    if what == "SFT" and any(p.cot is None for p in data.train):
        missing = next(p.id for p in data.train if p.cot is None)
        raise ConfigError(f"task: problem {missing} of {data.name} has no chain of thought; SFT needs one per problem")


__all__ = [
    "TASKS", "DataError", "Loaded", "TaskData", "answer_type_of", "check_task", "load_task", "split_task", "task_info"
]  # fmt: skip
