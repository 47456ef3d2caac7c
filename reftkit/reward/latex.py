"""MATH-style answers: LaTeX in ``\\boxed{...}``, equal as normalised strings or as numbers.

Normalising removes what changes the look but not the answer (``$``, spaces, ``\\left``/``\\right``, thin
spaces, ``\\dfrac``, degrees, percent signs, a trailing period, ``\\text{...}`` units), so ``\\dfrac{1}{2}``
and ``\\frac{1}{2}`` are one answer. Where both sides are simple numbers (``\\frac{a}{b}``, ``a/b``,
decimals, thousands commas), they are compared as numbers with the numeric tolerance, so ``0.5`` answers
``\\frac{1}{2}``. Anything else must match exactly: no algebra is done (``x+1`` is not ``1+x``).
"""

from __future__ import annotations

import re
from typing import Any

from reftkit.reward.numbers import TOLERANCE, answer_line, canonical_number, finite

_BOXED = "\\boxed{"
# Units after an answer ("5\text{ cm}", "3\mbox{ inches}^2"): dropped when something comes before them.
_UNIT_TAIL = re.compile(r"(?<=\S)\s*(?:\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d+\}?)?\s*)+$")
_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")  # a word answer: "\text{yes}" -> "yes"
_SIZING = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_SPACING = re.compile(r"\\[!,;: ]")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\u00b0")
_PLAIN = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"  # commas group thousands
_LATEX_NUMBER = re.compile(
    rf"(?P<sign>-?)(?:\\frac\{{(?P<num>-?{_PLAIN})\}}\{{(?P<den>{_PLAIN})\}}"
    rf"|(?P<over>{_PLAIN})/(?P<under>{_PLAIN})|(?P<plain>{_PLAIN}))"
)


def boxed_content(text: str) -> str | None:
    """What the LAST ``\\boxed{...}`` in ``text`` holds (braces may nest), or None: none, or never closed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    begin, depth = start + len(_BOXED), 0
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None


def normalise_latex(text: str) -> str:
    """``text`` without what changes its look but not its value ("$\\dfrac{1}{2}$." -> "\\frac{1}{2}")."""
    text = re.sub(r"\\?\$", "", text).strip()
    text = _TEXT.sub(r"\1", _UNIT_TAIL.sub("", text))
    text = _SPACING.sub("", _SIZING.sub("", text))
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = _DEGREES.sub("", text).replace("\\%", "").replace("%", "")
    text = "".join(text.split()).rstrip(".")
    return re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)  # "\frac12" is how MATH writes one half


def latex_value(text: str) -> float | None:
    """The number a normalised answer is ("\\frac{3}{4}", "-3/4", "1,000", ".5"), or None for anything else."""
    match = _LATEX_NUMBER.fullmatch(text)
    if match is None:
        return None
    parts = [match[name] for name in ("num", "den", "over", "under", "plain") if match[name] is not None]
    numbers = [float(part.replace(",", "")) for part in parts]
    if len(numbers) == 2 and numbers[1] == 0:
        return None
    value = numbers[0] / numbers[1] if len(numbers) == 2 else numbers[0]
    return finite(-value if match["sign"] else value)


def extract_math_answer(completion: str) -> str | None:
    """The normalised answer in the LAST ``\\boxed{...}``; without one, on the line after the last answer
    trigger (what a chain ending in the toolkit's own trigger gives); None when there is neither."""
    text = boxed_content(completion)
    text = answer_line(completion) if text is None else text
    return (normalise_latex(text) or None) if text is not None else None


def math_from_program(value: object) -> str | float | None:
    """The answer a P-CoT ``solution()`` returned: a finite number, or a string read like a boxed answer."""
    if isinstance(value, str):
        boxed = boxed_content(value)
        return normalise_latex(value if boxed is None else boxed) or None
    return finite(value)


def math_answers_equal(answer: str | float, gold: str | float) -> bool:
    """Equal normalised strings, or both simple numbers within the numeric tolerance."""
    reference = normalise_latex(_gold_text(gold))
    if isinstance(answer, str) and answer == reference:
        return True
    value = latex_value(answer) if isinstance(answer, str) else finite(answer)
    expected = latex_value(reference)
    return value is not None and expected is not None and abs(value - expected) <= TOLERANCE


def math_vote_key(answer: str | float) -> str | float:
    """What majority voting groups on: the number, rounded, where the answer is one ("0.5" with "\\frac12")."""
    value = latex_value(answer) if isinstance(answer, str) else answer
    return round(value, 6) if value is not None else answer


def canonical_math(value: Any) -> str | None:
    """A dataset's gold answer as written (unboxed; numbers as the numeric kind writes them), or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if not isinstance(value, str):
        return canonical_number(value)
    text = _gold_text(value)
    return text if normalise_latex(text) else None


def _gold_text(gold: str | float) -> str:
    if not isinstance(gold, str):
        return canonical_number(gold) or ""
    boxed = boxed_content(gold)
    return (gold if boxed is None else boxed).strip()
