"""GSM8K calculator annotations (``<<48/2=24>>``) as checked arithmetic, and their exact values.

People typed these into a calculator, so the text is normalised token by token before it is parsed, and
only plain arithmetic is accepted: the derived program must never contain anything but numbers and
operators. Values are exact fractions, so linking a number to the step it came from does not depend on
float rounding. Used by :mod:`reftkit.data.gsm8k_programs`.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

# Exponents above this are not evaluated while linking names (the sandbox still runs them, under a timeout).
_MAX_EXPONENT = 64

_TOKEN = re.compile(
    r"\s+"
    r"|(?P<number>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|\.\d+)"
    r"|(?P<op>\*\*|//|[-+*/^%()×xX÷·−–])"
    r"|(?P<drop>\$)"
)
_OPERATORS = {"×": "*", "x": "*", "X": "*", "·": "*", "÷": "/", "^": "**", "−": "-", "–": "-"}
_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Pow)


def normalise_expression(text: str) -> ast.expr | None:
    """The annotation expression as a checked arithmetic AST, or None when it is not plain arithmetic.

    Token-level fixes for what people type into a calculator: ``x``/``×``/``÷``/``^``/unicode minus,
    ``$``, thousands commas, ``.5``, ``25%`` (read as 25/100) and implicit products like ``2(3+4)``.
    The result must parse and contain only numbers, + - * / // ** and unary signs.
    """
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            return None  # letters, "=", anything else: not arithmetic
        position = match.end()
        if match["number"]:
            number = match["number"].replace(",", "")
            if number.startswith("."):
                number = "0" + number
            elif "." not in number:
                number = number.lstrip("0") or "0"  # "05" is a SyntaxError in Python
            if tokens and tokens[-1] == ")":
                tokens.append("*")  # "(3+4)2" -> "(3+4)*2"
            elif tokens and tokens[-1][0].isdigit():
                return None  # "2 3": two numbers side by side are not a product anyone wrote
            tokens.append(number)
        elif match["op"]:
            op = _OPERATORS.get(match["op"], match["op"])
            if match["op"] in "xX" and not (tokens and _is_operand_end(tokens[-1])):
                return None  # a variable x, not a times sign
            if op == "%":
                if not _wrap_percent(tokens):
                    return None
                continue
            if op == "(" and tokens and _is_operand_end(tokens[-1]):
                tokens.append("*")  # "2(3+4)", ")(" -> implicit product
            tokens.append(op)
    try:
        tree = ast.parse(" ".join(tokens), mode="eval").body
    except SyntaxError:
        return None
    return tree if _is_arithmetic(tree) else None


def _is_operand_end(token: str) -> bool:
    return token == ")" or token[0].isdigit()


def _wrap_percent(tokens: list[str]) -> bool:
    """Turn the operand just before a "%" into ``(operand / 100)``; False if there is none."""
    if not tokens or not _is_operand_end(tokens[-1]):
        return False
    start = len(tokens) - 1
    if tokens[-1] == ")":
        depth = 0
        for start in range(len(tokens) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(tokens[start], 0)
            if depth == 0:
                break
        if depth != 0:
            return False
    tokens[start:] = ["(", *tokens[start:], "/", "100", ")"]
    return True


def _is_arithmetic(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, _BINARY) and _is_arithmetic(node.left) and _is_arithmetic(node.right)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub | ast.UAdd) and _is_arithmetic(node.operand)
    return False


def exact_number(text: str) -> Fraction | None:
    """The exact value of a number as written ("18.00", "$1,000", "25%" -> 25), or None."""
    text = text.strip().replace(",", "").replace("$", "").removesuffix("%").strip()
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def evaluate_exact(node: ast.expr, env: dict[str, Fraction | None]) -> Fraction | None:
    """Exact value of a rewritten expression (names looked up in ``env``); None when undefined or huge."""
    if isinstance(node, ast.Constant):
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.UnaryOp):
        value = evaluate_exact(node.operand, env)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if not isinstance(node, ast.BinOp):
        return None
    left, right = evaluate_exact(node.left, env), evaluate_exact(node.right, env)
    if left is None or right is None:
        return None
    try:
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.FloorDiv):
            return Fraction(left // right)
        if isinstance(node.op, ast.Pow) and right.denominator == 1 and abs(right) <= _MAX_EXPONENT:
            return left**right.numerator
    except ZeroDivisionError:
        return None
    return None
