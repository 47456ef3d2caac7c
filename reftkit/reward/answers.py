"""The one place completions are graded: SFT evaluation, RL reward, voting and reranking all use it.

An N-CoT answer must follow the answer trigger; a P-CoT answer is what ``solution()`` returns, run as
written in :mod:`reftkit.reward.sandbox` (the reference ran programs unsandboxed, cut at the first blank
line: REFERENCE.md C). How an answer is read and judged is its kind's business (:mod:`reftkit.reward.kinds`:
numbers, option letters, LaTeX); here the outcome classes, the reward table and one grading loop for all.

Entry points: :func:`grade` (one completion), :func:`grade_batch` (training and evaluation, one sandbox
call per batch) and :func:`trl_reward_function` (a reward function for TRL's ``GRPOTrainer``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from reftkit.reward.kinds import AnswerKind, AnswerType, answer_kind
from reftkit.reward.programs import program_to_run
from reftkit.reward.sandbox import ProgramResult, run_programs
from reftkit.runtime.distributed import map_rows


class GradedProblem(Protocol):
    """What grading reads of a problem (``reftkit.data.base.Problem`` is one)."""

    @property
    def question(self) -> str: ...

    @property
    def answer(self) -> str: ...


class Outcome(StrEnum):
    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    ERROR = "error"  # the program raised, or the sandbox worker died
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class RewardTable:
    """Reward per outcome class (REFERENCE.md A.3: 1 / 0.1 / 0). partial_reward=False turns 'wrong' into 0.

    For MCQ a wrong *letter* is 'wrong' and text that names no option is 'no_answer' (REFERENCE.md G); the
    reference's constant 0.1 for every wrong MCQ output (F.4) paid for unparseable text.
    """

    correct: float = 1.0
    wrong: float = 0.1
    no_answer: float = 0.0
    error: float = 0.0
    timeout: float = 0.0
    partial_reward: bool = True

    def reward(self, outcome: Outcome | str) -> float:
        if outcome == Outcome.WRONG and not self.partial_reward:
            return 0.0
        return getattr(self, Outcome(outcome).value)  # the field names are the outcome values


@dataclass(frozen=True)
class Graded:
    """One completion's verdict.

    ``answer`` is the normalised extracted answer that majority voting groups on: a float (rounded to 6
    decimals) for numeric tasks, a lower-case option letter for MCQ, a number or a normalised LaTeX string
    for math, None when there is none.
    """

    outcome: Outcome
    answer: float | str | None
    reward: float


def frac_correct_chain_disagrees(
    graded: Sequence[Graded], completions: Sequence[str], questions: Sequence[str], answer_type: AnswerType = "mcq"
) -> float | None:
    """Share of completions graded correct although their chain computed something the chosen answer is not.

    The MCQ reward-hacking rate: a rising value means the policy is paid for right letters after wrong
    chains. 0.0 for an empty batch; None for answer types without such a check (the answer is the chain's).
    """
    disagrees = answer_kind(answer_type).chain_disagrees
    if disagrees is None:
        return None
    hits = sum(
        g.outcome == Outcome.CORRECT and disagrees(c, q, g.answer) is True
        for g, c, q in zip(graded, completions, questions, strict=True)
    )
    return hits / max(len(graded), 1)


# ---- grading ----


def grade(
    completion: str,
    gold: str,
    kind: AnswerType = "numeric",
    cot: str = "nl",
    *,
    question: str | None = None,
    rewards: RewardTable | None = None,
    timeout: float = 2.0,
) -> Graded:
    """Grade one completion against its gold answer.

    ``kind`` is an answer type (``numeric``, ``mcq``, ``math``); a task's is
    ``reftkit.data.registry.answer_type_of(task)``. For ``cot="python"`` the completion is a whole program
    (``def solution(): ...``) or the body written after the prompt's header, which ``question`` rebuilds.
    MCQ needs ``question`` to read the options; without it only the letters a-e are accepted and numbers
    cannot be mapped.
    """
    return _grade_many([completion], [gold], [question], kind, cot, rewards, timeout)[0]


def grade_batch(
    problems: Sequence[GradedProblem],
    completions: Sequence[str],
    cot: str,
    answer_type: AnswerType = "numeric",
    rewards: RewardTable | None = None,
    timeout: float = 2.0,
) -> list[Graded]:
    """Grade completions of ``problems`` (training and evaluation); P-CoT programs run in one sandbox call.

    Under several processes each grades its share and all get every grade back, so a program near its time
    limit is judged once (``reftkit.runtime.distributed``)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")

    def grade(rows: list[int]) -> list[Graded]:
        questions = [problems[i].question for i in rows]
        golds = [problems[i].answer for i in rows]
        return _grade_many([completions[i] for i in rows], golds, questions, answer_type, cot, rewards, timeout)

    return map_rows(grade, len(problems))


def outcome_counts(graded: Iterable[Graded]) -> dict[str, int]:
    """How many of each outcome, every outcome present (zeros included) so logs have a fixed schema."""
    counts = dict.fromkeys((o.value for o in Outcome), 0)
    for g in graded:
        counts[g.outcome.value] += 1
    return counts


def trl_reward_function(
    kind: AnswerType = "numeric",
    cot: str = "nl",
    answer_field: str = "answer",
    question_field: str = "question",
    rewards: RewardTable | None = None,
    timeout: float = 2.0,
) -> Callable[..., list[float]]:
    """A reward function for TRL's ``GRPOTrainer(reward_funcs=...)``; ``kind`` is the answer type.

    TRL calls it as ``fn(completions=..., prompts=..., completion_ids=..., **dataset_columns)`` with one
    list entry per completion; completions are strings or conversational message lists. The gold answer
    comes from the ``answer_field`` column, the question (MCQ options, P-CoT headers) from ``question_field``.
    """
    name = answer_kind(kind).name

    def reward_fn(completions: Sequence[str | list[dict[str, str]]], **kwargs: object) -> list[float]:
        if answer_field not in kwargs:
            columns = ", ".join(sorted(kwargs)) or "none"
            raise KeyError(f"the dataset has no {answer_field!r} column (answer_field); columns: {columns}")
        golds = list(kwargs[answer_field])  # type: ignore[call-overload]
        questions = list(kwargs.get(question_field) or [None] * len(completions))  # type: ignore[call-overload]
        texts = [_completion_text(c) for c in completions]
        graded = _grade_many(texts, golds, questions, name, cot, rewards, timeout)
        return [g.reward for g in graded]

    reward_fn.__name__ = reward_fn.__qualname__ = f"reftkit_{name}_{cot}_reward"
    return reward_fn


# ---- internals ----


def _grade_many(
    completions: Sequence[str],
    golds: Sequence[str | float],
    questions: Sequence[str | None],
    answer_type: str,
    cot: str,
    rewards: RewardTable | None,
    timeout: float,
) -> list[Graded]:
    kind = answer_kind(answer_type)
    table = rewards or RewardTable()
    if cot == "nl":
        answers = [kind.extract(c, q) for c, q in zip(completions, questions, strict=True)]
        return [_judge(a, g, kind, table) for a, g in zip(answers, golds, strict=True)]
    if cot == "python":
        programs = [program_to_run(c, q) for c, q in zip(completions, questions, strict=True)]
        results = run_programs(programs, timeout=timeout)
        return [_judge_result(r, g, q, kind, table) for r, g, q in zip(results, golds, questions, strict=True)]
    raise ValueError(f"unknown CoT style {cot!r}; expected 'nl' or 'python'")


def _judge(answer: float | str | None, gold: str | float, kind: AnswerKind, table: RewardTable) -> Graded:
    if answer is None:
        outcome = Outcome.NO_ANSWER
    else:
        outcome = Outcome.CORRECT if kind.judge(answer, gold) else Outcome.WRONG
        answer = kind.normalise(answer)
    return Graded(outcome, answer, table.reward(outcome))


def _judge_result(
    result: ProgramResult, gold: str | float, question: str | None, kind: AnswerKind, table: RewardTable
) -> Graded:
    if result.status == "timeout":
        return Graded(Outcome.TIMEOUT, None, table.reward(Outcome.TIMEOUT))
    if result.status != "ok":
        return Graded(Outcome.ERROR, None, table.reward(Outcome.ERROR))
    return _judge(kind.from_program(result.value, question), gold, kind, table)


def _completion_text(completion: str | list[dict[str, str]] | dict[str, str]) -> str:
    """The text of a TRL completion: a string, or a conversational list whose last message is the reply."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion[-1].get("content", "")) if completion else ""
