"""P-CoT programs: the header every P-CoT prompt ends with, and the program a completion stands for.

The model writes only the body after the header (REFERENCE.md A.1), so grading rebuilds the header from the
question; it lives here, below the data layer, because prompts (:mod:`reftkit.data.base`) and grading both
need the very same text.
"""

from __future__ import annotations

import re
from typing import Literal

CoT = Literal["nl", "python"]
"""How a chain of thought is written: natural language (N-CoT) or a Python program (P-CoT)."""

# A whole program rather than a body written after the prompt's header (imports may come first).
_WHOLE_PROGRAM = re.compile(r"^(?:(?:import|from)\s[^\n]*\n|[ \t]*\n)*def\s+solution\s*\(")


def program_header(question: str) -> str:
    """The P-CoT program header the prompt ends with; the docstring repeats the question.

    Backslashes, triple quotes and a closing quote are escaped, so any question gives a valid program
    (GSM8K has questions ending in a quotation mark).
    """
    text = question.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    return 'def solution():\n    """' + text + '"""\n'


def program_to_run(completion: str, question: str | None) -> str:
    """The program to run: a whole program as written, or the prompt's header plus the body."""
    if _WHOLE_PROGRAM.match(completion):
        return completion
    if question is None:
        raise ValueError(
            "a P-CoT completion without 'def solution():' is a body written after the prompt's header; "
            "pass question= so the header can be rebuilt"
        )
    return program_header(question) + completion
