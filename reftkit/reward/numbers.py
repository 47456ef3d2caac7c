"""Numbers in model output and gold answers, and the numeric answer a natural-language chain commits to.

The reference applied ``float()`` to the raw text after the trigger, so "1,000" or "$5" scored as no
answer (REFERENCE.md A.1, F.6). Here numbers are parsed leniently but never guessed: an N-CoT answer must
follow the answer trigger, and a string that is not one number is no number. The other answer kinds
(:mod:`reftkit.reward.choices`, :mod:`reftkit.reward.latex`) build on these pieces.
"""

from __future__ import annotations

import math
import re
from typing import Any

# An optional sign (a space may follow, as in MathQA's tokenised "- 5") and "$", then a fraction (optionally
# mixed: "1 1/2", "5 1 / 2") or a decimal with optional thousands separators and exponent. Commas must group
# exactly three digits and a number may not touch a comma-digit on either side, so "1,2" and "1,0000" are
# no number at all rather than a wrong one. A number may follow a letter's period ("Rs.500"), not a word.
NUMBER = re.compile(
    r"(?<![\w,])(?<!\d\.)(?P<sign>[-+\u2212]\s?)?(?:\$\s*)?"
    r"(?:(?:(?P<whole>\d+)\s+)?(?P<num>\d+)\s*/\s*(?P<den>\d+)"
    r"|(?P<decimal>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))"
    r"(?!,?\d)"
)
# ANSWER_TRIGGER ("\nTherefore, the answer is: ") and the gold SVAMP form "Therefore, the answer is <203>."
TRIGGER = re.compile(r"therefore\s*,?\s*the\s+answer\s+is\b\s*:?", re.IGNORECASE)
TOLERANCE = 1e-2
"""How far a numeric answer may be from the gold one (the reference's 1e-2)."""


def parse_number(text: str) -> float | None:
    """The number a whole string states ("$1,250.", "<203>", "25%", "3/4", "1 1 / 2", "-1e3"), or None.

    A percent is read as the number shown ("25%" -> 25.0), as in the reference. Words, "nan" and "inf"
    are not numbers, and neither is a bool.
    """
    if not isinstance(text, str):
        return None
    text = strip_markup(text).rstrip(".").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    match = NUMBER.fullmatch(text.removesuffix("%").strip())
    return match_value(match) if match else None


def answers_match(prediction: float, gold: str | float, tolerance: float = TOLERANCE) -> bool:
    """|prediction - gold| <= tolerance; NaN and infinities never match.

    Raises ValueError for a gold answer that is not a number: that is a data error, not a wrong answer.
    """
    reference = parse_number(gold) if isinstance(gold, str) else finite(gold)
    if isinstance(gold, str) and reference is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    value = finite(prediction)
    return value is not None and reference is not None and abs(value - reference) <= tolerance


def extract_nl_answer(completion: str) -> float | None:
    """The first number on the first non-blank line after the LAST answer trigger, or None.

    There is deliberately no fallback to the last number in the text: that would reward chains that never
    commit to an answer. Nor is arithmetic done: "5 - 3" answers 5, the first number stated.
    """
    line = answer_line(completion)
    if line is None:
        return None
    match = NUMBER.search(line)
    return match_value(match) if match else None


def number_from_program(value: object) -> float | None:
    """The number a P-CoT ``solution()`` returned: a finite int or float, or a string stating one."""
    return parse_number(value) if isinstance(value, str) else finite(value)


def canonical_number(value: Any) -> str | None:
    """A gold number as the string targets and grading use ("203.0" -> "203", "1,000" -> "1000"), or None."""
    if isinstance(value, bool):
        return None
    number = float(value) if isinstance(value, int | float) else parse_number(value) if isinstance(value, str) else None
    if number is None or not math.isfinite(number):
        return None
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.10g}"


def answer_line(completion: str) -> str | None:
    """The first non-blank line after the last answer trigger; None without a trigger."""
    triggers = list(TRIGGER.finditer(completion))
    if not triggers:
        return None
    return completion[triggers[-1].end() :].lstrip().split("\n", 1)[0]


def strip_markup(text: str) -> str:
    """Markdown bold / code marks around an answer ("**18**", "`18`")."""
    return text.strip().strip("*_`").strip()


def match_value(match: re.Match[str]) -> float | None:
    """The value of a :data:`NUMBER` match; None for a zero denominator or an absurdly long digit string."""
    sign = -1.0 if match["sign"] and match["sign"][0] in "-\u2212" else 1.0
    try:
        if match["den"] is None:
            value = float(match["decimal"].replace(",", ""))
        elif int(match["den"]) == 0:
            return None
        else:
            value = int(match["whole"] or 0) + int(match["num"]) / int(match["den"])
    except (ValueError, OverflowError):
        return None
    return finite(sign * value)


def finite(value: object) -> float | None:
    """``value`` as a finite float; None for bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None
