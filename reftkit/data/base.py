"""What every task hands to the pipeline: problems, and how a problem becomes a prompt and a target.

The format follows the ReFT reference (REFERENCE.md A.1) so checkpoints and numbers are comparable:
prompt ``Question:\\n{q}\\nAnswer reasoning:\\n``; N-CoT targets end with the answer trigger; P-CoT
prompts are extended with the ``def solution():`` header and docstring in SFT, RL and evaluation alike,
so the model only ever writes the program body.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from reftkit.reward.kinds import AnswerType
from reftkit.reward.programs import CoT, program_header

COT_STYLES: tuple[str, ...] = ("nl", "python")

ANSWER_TRIGGER = "\nTherefore, the answer is: "


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer and (for SFT) one gold chain of thought.

    ``cot`` is an N-CoT text (without the final trigger sentence) or a full P-CoT program
    ``def solution(): ... return result``; ``None`` where the task has no annotation (RL-only data).
    """

    id: str
    question: str
    answer: str
    cot: str | None = None


def base_prompt(question: str) -> str:
    return "Question:\n" + question.strip() + "\nAnswer reasoning:\n"


def prompt_text(problem: Problem, cot: CoT) -> str:
    if cot == "python":
        return base_prompt(problem.question) + program_header(problem.question)
    return base_prompt(problem.question)


def split_program(program: str) -> tuple[str, str]:
    """Split a P-CoT program into (header with docstring, body).

    Real annotations sometimes have a docstring that differs from the question (REFERENCE.md D.1),
    so the header is found by structure, not by text. Without a docstring the header is the ``def`` line.
    """
    lines = program.strip("\n").split("\n")
    if not lines or not lines[0].startswith("def solution"):
        raise ValueError("a P-CoT program must start with 'def solution():'")
    end = 1
    if len(lines) > 1 and lines[1].strip().startswith(('"""', "'''")):
        quote = lines[1].strip()[:3]
        rest = lines[1].strip()[3:]
        end = 2
        if quote not in rest:
            while end < len(lines) and quote not in lines[end]:
                end += 1
            end += 1
    header = "\n".join(lines[:end]) + "\n"
    body = "\n".join(lines[end:])
    return header, body


def target_text(problem: Problem, cot: CoT) -> str:
    """The SFT target: what the model must write after the prompt (EOS is appended by the trainer)."""
    if problem.cot is None:
        raise ValueError(f"problem {problem.id} has no gold chain of thought")
    if cot == "python":
        return split_program(problem.cot)[1]
    return problem.cot.strip() + ANSWER_TRIGGER + problem.answer


def full_program(problem: Problem, completion: str) -> str:
    """The program to execute for a P-CoT completion: the prompt's header plus what the model wrote."""
    return program_header(problem.question) + completion


@dataclass(frozen=True)
class TaskData:
    """A task's splits. ``test`` questions never occur in ``train`` or ``val``.

    ``answer_type`` names how answers are read and compared (:data:`reftkit.reward.kinds.ANSWER_KINDS`):
    ``numeric`` (within tolerance), ``mcq`` (an option letter; the options are written in the question as
    ``a ) ... , b ) ...``) or ``math`` (LaTeX, ``\\boxed{...}``).
    """

    name: str
    train: list[Problem]
    val: list[Problem]
    test: list[Problem]
    answer_type: AnswerType = "numeric"
    test_name: str = "test"
    """What ``test`` is: the task's own test split, or ``heldout`` (carved from the training file)."""
    extra_tests: dict[str, list[Problem]] = field(default_factory=dict)
    """Further test sets reported beside ``test``: the task's own test split when ``test`` is held out."""


@dataclass(frozen=True)
class Loaded:
    train: list[Problem]
    test: list[Problem]
    counts: Counter[str]
    """What happened to the training annotations: ``ok`` and one count per reason an item was dropped."""
    val: list[Problem] | None = None
    """Only where the task brings its own validation split; otherwise it is carved from train."""
