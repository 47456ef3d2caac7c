"""The one place answers are extracted and graded: SFT evaluation, RL reward, voting and reranking all use it.

The reference applied ``float()`` to the raw text after the trigger, so "1,000" or "$5" scored as no
answer, gave MathQA-MCQ its partial reward for any text at all, and ran programs unsandboxed, cut at the
first blank line (REFERENCE.md A.1, C, F.4, F.6). Here numbers are parsed leniently but never guessed: an
N-CoT answer must follow the answer trigger, and a P-CoT answer is what ``solution()`` returns, run as
written in :mod:`reftkit.reward.sandbox`. A multiple-choice answer is an option letter of the question, or a
number that equals one option's value; anything else is no answer.

Entry points: :func:`grade` (one completion), :func:`grade_batch` (training and evaluation, one sandbox
call per batch) and :func:`trl_reward_function` (a reward function for TRL's ``GRPOTrainer``).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from reftkit.reward.sandbox import ProgramResult, run_programs
from reftkit.runtime.distributed import map_rows

if TYPE_CHECKING:  # reftkit.data.registry imports this module: import from it only where used
    from reftkit.data.base import Problem

# An optional sign (a space may follow, as in MathQA's tokenised "- 5") and "$", then a fraction (optionally
# mixed: "1 1/2", "5 1 / 2") or a decimal with optional thousands separators and exponent. Commas must group
# exactly three digits and a number may not touch a comma-digit on either side, so "1,2" and "1,0000" are
# no number at all rather than a wrong one. A number may follow a letter's period ("Rs.500"), not a word.
_NUMBER = re.compile(
    r"(?<![\w,])(?<!\d\.)(?P<sign>[-+\u2212]\s?)?(?:\$\s*)?"
    r"(?:(?:(?P<whole>\d+)\s+)?(?P<num>\d+)\s*/\s*(?P<den>\d+)"
    r"|(?P<decimal>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))"
    r"(?!,?\d)"
)
# ANSWER_TRIGGER ("\nTherefore, the answer is: ") and the gold SVAMP form "Therefore, the answer is <203>."
_TRIGGER = re.compile(r"therefore\s*,?\s*the\s+answer\s+is\b\s*:?", re.IGNORECASE)
# How an option letter may be written: "option c" / "choice: (c)", "(c)" / "[c]", "c )" / "c) 198", and a
# bare "c" / "C." / "**c**" only when punctuation or the line's end follows, so "a total of 5" is no letter.
_LETTER = re.compile(
    r"""^[\s*"'`_]*(?:the\s+)?(?:
        (?:option|choice)\s*[:#]?\s*[(\[]?\s*(?P<named>[a-z])\b
      | [(\[]\s*(?P<bracketed>[a-z])\s*[)\]]
      | (?P<paren>[a-z])\s*\)
      | (?P<bare>[a-z])(?=[\s*"'`_]*(?:[.:,;!]|$))
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# What may precede an option's number: a currency ("rs . 1500", "rs 840", "$ 5"; "s . 90" is how some
# MathQA options spell rupees) or a variable ("t = 16").
_OPTION_PREFIX = re.compile(r"^(?:r?s\s*\.|rs\b|inr\b|usd\b|[$\u20ac\u00a3\u20b9](?:\s*\.)?|[a-z]\s*=)\s*", re.I)
# What may not follow an option's number for the option to *be* that number: "5 : 3", "2 √ 3", "4 , 3",
# "10 ^ 5", "3 π", "2 x 10", "3 ab / 11". Units ("kmph", "cm 2", "m ^ 2", "km / hr", "%", "°") may.
_NOT_A_UNIT = re.compile(r"^(?:[\d:/\u221a\u03c0^*\u00d7+\-=]|[.,]\s*\d|x\s*\d)|/\s*\d")
# A whole program rather than a body written after the prompt's header (imports may come first).
_WHOLE_PROGRAM = re.compile(r"^(?:(?:import|from)\s[^\n]*\n|[ \t]*\n)*def\s+solution\s*\(")

_MCQ_LETTERS = "abcde"  # accepted when a question's options cannot be read
_CHAIN_RELATIVE_TOLERANCE = 1e-2


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
    decimals) for numeric tasks, a lower-case option letter for MCQ, None when there is none.
    """

    outcome: Outcome
    answer: float | str | None
    reward: float


# ---- numbers ----


def parse_number(text: str) -> float | None:
    """The number a whole string states ("$1,250.", "<203>", "25%", "3/4", "1 1 / 2", "-1e3"), or None.

    A percent is read as the number shown ("25%" -> 25.0), as in the reference. Words, "nan" and "inf"
    are not numbers, and neither is a bool.
    """
    if not isinstance(text, str):
        return None
    text = _strip_markup(text).rstrip(".").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    match = _NUMBER.fullmatch(text.removesuffix("%").strip())
    return _match_value(match) if match else None


def answers_match(prediction: float, gold: str | float, tolerance: float = 1e-2) -> bool:
    """|prediction - gold| <= tolerance (the reference's 1e-2); NaN and infinities never match.

    Raises ValueError for a gold answer that is not a number: that is a data error, not a wrong answer.
    """
    reference = parse_number(gold) if isinstance(gold, str) else _finite(gold)
    if isinstance(gold, str) and reference is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    value = _finite(prediction)
    return value is not None and reference is not None and abs(value - reference) <= tolerance


def extract_nl_answer(completion: str) -> float | None:
    """The first number on the first non-blank line after the LAST answer trigger, or None.

    There is deliberately no fallback to the last number in the text: that would reward chains that never
    commit to an answer. Nor is arithmetic done: "5 - 3" answers 5, the first number stated.
    """
    line = _answer_line(completion)
    if line is None:
        return None
    match = _NUMBER.search(line)
    return _match_value(match) if match else None


# ---- multiple choice ----


def parse_options(question: str) -> dict[str, str]:
    """The options written in a MathQA question, letter -> text: "a ) 108 , b ) 120 , ... e ) none".

    Options are the last line of the question; 41 MathQA test questions write them as a Python list
    ("['a ) 12', 'b ) 15', ...]") and a few repeat the letter ("a ) a ) 4 inches"); both are read. {} when
    the question has no options.
    """
    segment = _options_segment(question)
    if segment is None:
        return {}
    bounds: list[tuple[str, int, int]] = []  # (letter, where its marker starts, where its text starts)
    for letter in "abcdefghij":
        pattern = rf"{letter}\s?\)\s?" if letter == "a" else rf",\s*{letter}\s?\)\s?"
        match = re.compile(pattern).search(segment, bounds[-1][2] if bounds else 0)
        if match is None or (not bounds and match.start() != 0):
            break
        bounds.append((letter, match.start(), match.end()))
    ends = [marker for _, marker, _ in bounds[1:]] + [len(segment)]
    options: dict[str, str] = {}
    for (letter, _, start), end in zip(bounds, ends, strict=True):
        text = segment[start:end].strip()
        options[letter] = re.sub(rf"^{letter}\s?[).]\s+", "", text).strip()  # "a ) a ) 4 inches"
    return options


def option_value(text: str) -> float | None:
    """The number an option states, units and currency allowed ("rs . 1500", "1 / 2", "32 kmph", "12 %").

    None for options that are not one number: "none of these", "5 : 3", "2 √ 3".
    """
    text = _OPTION_PREFIX.sub("", _squeeze_thousands(_strip_markup(text)))
    match = _NUMBER.match(text)
    if match is None or _NOT_A_UNIT.search(text[match.end() :].strip()):
        return None
    return _match_value(match)


def extract_mcq_answer(completion: str, options: dict[str, str]) -> str | None:
    """The option letter after the LAST answer trigger, or None.

    A letter form ("c", "(C)", "c ) 198", "option c") wins; then an option's exact words ("none of these");
    otherwise the first number on the line is mapped to the option with that value. A letter that is no
    option of the question, or a number no option states, is no answer.
    """
    line = _answer_line(completion)
    return None if line is None else _mcq_from_text(line, options)


def chain_disagrees_with_choice(completion: str, question: str, letter: str | None) -> bool | None:
    """Whether the chain of thought computed a different number than the option it chose (REFERENCE.md A.4).

    The chain's result is the last "= X" before the answer trigger, else the last number there. It agrees
    with the option within 1e-2 absolute or 1% relative (options are rounded), or as a percent (0.25 for
    "25 %"). None when it cannot be told: no letter, an option that is no number, no number in the chain.
    """
    options = parse_options(question)
    letter = letter.strip().lower() if isinstance(letter, str) else None
    chosen = option_value(options[letter]) if letter in options else None
    if chosen is None:
        return None
    triggers = list(_TRIGGER.finditer(completion))
    computed = _chain_result(completion[: triggers[-1].start()] if triggers else completion)
    if computed is None:
        return None
    candidates = (computed, computed * 100) if "%" in options[letter] else (computed,)
    return not any(_roughly_equal(c, chosen) for c in candidates)


def frac_correct_chain_disagrees(
    graded: Sequence[Graded], completions: Sequence[str], questions: Sequence[str]
) -> float:
    """Share of completions graded correct although their chain computed a number the chosen option is not.

    The MCQ reward-hacking rate: a rising value means the policy is paid for right letters after wrong
    chains. 0.0 for an empty batch.
    """
    hits = sum(
        g.outcome == Outcome.CORRECT and chain_disagrees_with_choice(c, q, g.answer) is True  # type: ignore[arg-type]
        for g, c, q in zip(graded, completions, questions, strict=True)
    )
    return hits / max(len(graded), 1)


# ---- grading ----


def answer_type_of(task: str) -> str:
    """'numeric' or 'mcq' for an answer type or a registered task name; ValueError listing the options."""
    from reftkit.data.registry import TASKS

    known = {"numeric": "numeric", "mcq": "mcq"} | {name: info.answer_type for name, info in TASKS.items()}
    if task not in known:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(known)}")
    return known[task]


def grade(
    completion: str,
    gold: str,
    task: str = "numeric",
    cot: str = "nl",
    *,
    question: str | None = None,
    rewards: RewardTable | None = None,
    timeout: float = 2.0,
) -> Graded:
    """Grade one completion against its gold answer.

    ``task`` is a task name (``gsm8k``, ``mathqa_mcq``, ...) or ``numeric`` / ``mcq``. For ``cot="python"``
    the completion is a whole program (``def solution(): ...``) or the body written after the prompt's
    header, which ``question`` rebuilds. MCQ needs ``question`` to read the options; without it only the
    letters a-e are accepted and numbers cannot be mapped.
    """
    return _grade_many([completion], [gold], [question], answer_type_of(task), cot, rewards, timeout)[0]


def grade_batch(
    problems: Sequence[Problem],
    completions: Sequence[str],
    cot: str,
    answer_type: str = "numeric",
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
    task: str = "numeric",
    cot: str = "nl",
    answer_field: str = "answer",
    question_field: str = "question",
    rewards: RewardTable | None = None,
    timeout: float = 2.0,
) -> Callable[..., list[float]]:
    """A reward function for TRL's ``GRPOTrainer(reward_funcs=...)``.

    TRL calls it as ``fn(completions=..., prompts=..., completion_ids=..., **dataset_columns)`` with one
    list entry per completion; completions are strings or conversational message lists. The gold answer
    comes from the ``answer_field`` column, the question (MCQ options, P-CoT headers) from ``question_field``.
    """
    answer_type = answer_type_of(task)

    def reward_fn(completions: Sequence[str | list[dict[str, str]]], **kwargs: object) -> list[float]:
        if answer_field not in kwargs:
            columns = ", ".join(sorted(kwargs)) or "none"
            raise KeyError(f"the dataset has no {answer_field!r} column (answer_field); columns: {columns}")
        golds = list(kwargs[answer_field])  # type: ignore[call-overload]
        questions = list(kwargs.get(question_field) or [None] * len(completions))  # type: ignore[call-overload]
        texts = [_completion_text(c) for c in completions]
        graded = _grade_many(texts, golds, questions, answer_type, cot, rewards, timeout)
        return [g.reward for g in graded]

    reward_fn.__name__ = reward_fn.__qualname__ = f"reftkit_{answer_type}_{cot}_reward"
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
    if answer_type not in ("numeric", "mcq"):
        raise ValueError(f"unknown answer type {answer_type!r}; expected 'numeric' or 'mcq'")
    table = rewards or RewardTable()
    options = [parse_options(q) if answer_type == "mcq" and q else {} for q in questions]
    if cot == "nl":
        answers = [
            extract_mcq_answer(c, o) if answer_type == "mcq" else extract_nl_answer(c)
            for c, o in zip(completions, options, strict=True)
        ]
        return [_judge(a, g, answer_type, table) for a, g in zip(answers, golds, strict=True)]
    if cot == "python":
        programs = [_program(c, q) for c, q in zip(completions, questions, strict=True)]
        results = run_programs(programs, timeout=timeout)
        return [_judge_result(r, g, o, answer_type, table) for r, g, o in zip(results, golds, options, strict=True)]
    raise ValueError(f"unknown CoT style {cot!r}; expected 'nl' or 'python'")


def _program(completion: str, question: str | None) -> str:
    """The program to run: a whole program as written, or the prompt's header plus the body."""
    if _WHOLE_PROGRAM.match(completion):
        return completion
    if question is None:
        raise ValueError(
            "a P-CoT completion without 'def solution():' is a body written after the prompt's header; "
            "pass question= so the header can be rebuilt"
        )
    from reftkit.data.base import program_header

    return program_header(question) + completion


def _judge(answer: float | str | None, gold: str | float, answer_type: str, table: RewardTable) -> Graded:
    if answer is None:
        outcome = Outcome.NO_ANSWER
    elif answer_type == "mcq":
        outcome = Outcome.CORRECT if answer == _gold_letter(gold) else Outcome.WRONG
    else:
        outcome = Outcome.CORRECT if answers_match(answer, gold) else Outcome.WRONG  # type: ignore[arg-type]
        answer = round(answer, 6)  # type: ignore[arg-type]  # so that 0.1 + 0.2 and 0.3 vote together
    return Graded(outcome, answer, table.reward(outcome))


def _judge_result(
    result: ProgramResult, gold: str | float, options: dict[str, str], answer_type: str, table: RewardTable
) -> Graded:
    if result.status == "timeout":
        return Graded(Outcome.TIMEOUT, None, table.reward(Outcome.TIMEOUT))
    if result.status != "ok":
        return Graded(Outcome.ERROR, None, table.reward(Outcome.ERROR))
    value = result.value
    if answer_type == "mcq":
        answer = _mcq_from_text(value, options) if isinstance(value, str) else _letter_for_value(value, options)
    else:
        answer = parse_number(value) if isinstance(value, str) else _finite(value)
    return _judge(answer, gold, answer_type, table)


def _gold_letter(gold: str | float) -> str:
    letter = str(gold).strip().lower()
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"gold answer {gold!r} is not an option letter")
    return letter


def _answer_line(completion: str) -> str | None:
    """The first non-blank line after the last answer trigger; None without a trigger."""
    triggers = list(_TRIGGER.finditer(completion))
    if not triggers:
        return None
    return completion[triggers[-1].end() :].lstrip().split("\n", 1)[0]


def _mcq_from_text(text: str, options: dict[str, str]) -> str | None:
    letters = options.keys() if options else _MCQ_LETTERS
    match = _LETTER.match(text)
    if match:
        letter = next(g for g in match.groups() if g).lower()
        return letter if letter in letters else None
    stated = _plain_text(text)
    for letter, option in options.items():  # the option's own words: "none of these"
        if stated == _plain_text(option):
            return letter
    number = _NUMBER.search(text)
    return _letter_for_value(_match_value(number), options) if number else None


def _letter_for_value(value: object, options: dict[str, str]) -> str | None:
    """The first option whose value matches ``value`` (answers_match tolerance); None for non-numbers."""
    number = _finite(value)
    if number is None:
        return None
    for letter, text in options.items():
        stated = option_value(text)
        if stated is not None and answers_match(number, stated):
            return letter
    return None


def _chain_result(chain: str) -> float | None:
    """The last "= X" in the chain, else its last number."""
    for equals in reversed(list(re.finditer(r"=[\s*$]*", chain))):
        match = _NUMBER.match(chain, equals.end())
        if match:
            return _match_value(match)
    numbers = list(_NUMBER.finditer(chain))
    return _match_value(numbers[-1]) if numbers else None


def _roughly_equal(a: float, b: float) -> bool:
    return abs(a - b) <= max(1e-2, _CHAIN_RELATIVE_TOLERANCE * abs(b))


def _options_segment(question: str) -> str | None:
    """The text holding the options, normalised to the ``a ) x , b ) y`` form."""
    last = question.strip().rsplit("\n", 1)[-1].strip()
    if last.startswith("[") and last.endswith("]"):
        try:
            items = ast.literal_eval(last)
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            last = " , ".join(i.strip() for i in items)
    if re.match(r"a\s?\)", last):
        return last
    starts = [m.start(1) for m in re.finditer(r"(?:^|\s)(a\s?\))", question)]
    for start in reversed(starts):  # options written inline: the last "a )" that a ", b )" follows
        if re.search(r",\s*b\s?\)", question[start:]):
            return question[start:].strip()
    return None


def _completion_text(completion: str | list[dict[str, str]] | dict[str, str]) -> str:
    """The text of a TRL completion: a string, or a conversational list whose last message is the reply."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion[-1].get("content", "")) if completion else ""


def _plain_text(text: str) -> str:
    return " ".join(_strip_markup(text).rstrip(".").lower().split())


def _strip_markup(text: str) -> str:
    """Markdown bold / code marks around an answer ("**18**", "`18`")."""
    return text.strip().strip("*_`").strip()


def _squeeze_thousands(text: str) -> str:
    """MathQA tokenises "1,200" as "1 , 200"."""
    return re.sub(r"(?<=\d) , (?=\d{3}(?!\d))", ",", text)


def _match_value(match: re.Match[str]) -> float | None:
    sign = -1.0 if match["sign"] and match["sign"][0] in "-\u2212" else 1.0
    try:
        if match["den"] is None:
            value = float(match["decimal"].replace(",", ""))
        elif int(match["den"]) == 0:
            return None
        else:
            value = int(match["whole"] or 0) + int(match["num"]) / int(match["den"])
    except (ValueError, OverflowError):  # absurdly long digit strings
        return None
    return _finite(sign * value)


def _finite(value: object) -> float | None:
    """``value`` as a finite float; None for bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None
