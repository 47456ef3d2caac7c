"""Multiple-choice answers (MathQA): the options a question writes, and the option a completion names.

A multiple-choice answer is an option letter of the question, or a number that equals one option's value;
anything else is no answer. The reference paid its partial reward for any text at all (REFERENCE.md F.4):
here text that names no option is 'no_answer' and only a wrong *letter* is 'wrong' (REFERENCE.md G).
"""

from __future__ import annotations

import ast
import re
from typing import Any

from reftkit.reward.numbers import NUMBER, TRIGGER, answer_line, answers_match, finite, match_value, strip_markup

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
_GOLD_LETTER = re.compile(r"[a-e]")  # what a dataset's gold answer may be

_MCQ_LETTERS = "abcde"  # accepted when a question's options cannot be read
_CHAIN_RELATIVE_TOLERANCE = 1e-2


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
    text = _OPTION_PREFIX.sub("", _squeeze_thousands(strip_markup(text)))
    match = NUMBER.match(text)
    if match is None or _NOT_A_UNIT.search(text[match.end() :].strip()):
        return None
    return match_value(match)


def extract_mcq_answer(completion: str, options: dict[str, str]) -> str | None:
    """The option letter after the LAST answer trigger, or None.

    A letter form ("c", "(C)", "c ) 198", "option c") wins; then an option's exact words ("none of these");
    otherwise the first number on the line is mapped to the option with that value. A letter that is no
    option of the question, or a number no option states, is no answer.
    """
    line = answer_line(completion)
    return None if line is None else _letter_from_text(line, options)


def letter_from_program(value: object, options: dict[str, str]) -> str | None:
    """The option a P-CoT ``solution()`` returned: a string naming one, or a number one option states."""
    return _letter_from_text(value, options) if isinstance(value, str) else _letter_for_value(value, options)


def gold_letter(gold: str | float) -> str:
    """The gold option letter; ValueError for a gold answer that is none (a data error, not a wrong answer)."""
    letter = str(gold).strip().lower()
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"gold answer {gold!r} is not an option letter")
    return letter


def canonical_letter(value: Any) -> str | None:
    """A dataset's gold letter as targets and grading use ("C" -> "c", "(b)" -> "b"), or None."""
    letter = value.strip().strip("()").strip().lower() if isinstance(value, str) else None
    return letter if letter and _GOLD_LETTER.fullmatch(letter) else None


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
    triggers = list(TRIGGER.finditer(completion))
    computed = _chain_result(completion[: triggers[-1].start()] if triggers else completion)
    if computed is None:
        return None
    candidates = (computed, computed * 100) if "%" in options[letter] else (computed,)
    return not any(_roughly_equal(c, chosen) for c in candidates)


def _letter_from_text(text: str, options: dict[str, str]) -> str | None:
    letters = options.keys() if options else _MCQ_LETTERS
    match = _LETTER.match(text)
    if match:
        letter = next(g for g in match.groups() if g).lower()
        return letter if letter in letters else None
    stated = _plain_text(text)
    for letter, option in options.items():  # the option's own words: "none of these"
        if stated == _plain_text(option):
            return letter
    number = NUMBER.search(text)
    return _letter_for_value(match_value(number), options) if number else None


def _letter_for_value(value: object, options: dict[str, str]) -> str | None:
    """The first option whose value matches ``value`` (answers_match tolerance); None for non-numbers."""
    number = finite(value)
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
        match = NUMBER.match(chain, equals.end())
        if match:
            return match_value(match)
    numbers = list(NUMBER.finditer(chain))
    return match_value(numbers[-1]) if numbers else None


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


def _plain_text(text: str) -> str:
    return " ".join(strip_markup(text).rstrip(".").lower().split())


def _squeeze_thousands(text: str) -> str:
    """MathQA tokenises "1,200" as "1 , 200"."""
    return re.sub(r"(?<=\d) , (?=\d{3}(?!\d))", ",", text)
