"""P-CoT programs for GSM8K training items, derived from the human rationale's calculator annotations.

The ReFT release lost its GSM8K P-CoT annotations, so they are rebuilt here. Every ``<<expr=value>>`` in
a rationale becomes one assignment; numbers the expression shares with the question become named inputs
at the top, and numbers equal to an earlier step's value refer to that step by name. The program returns
the LAST computation and is built only from the question's numbers and the annotations' expressions, so it
never sees the gold answer: the gold is used once, afterwards, to drop programs that do not reproduce it
(:func:`derive_gsm8k`). What is dropped is counted per failure class instead of being silently repaired.

Example: "Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... 48+24 = <<48+24=72>>72 clips altogether"
becomes ``friends_april = 48``, ``clips_may = friends_april / 2``,
``clips_total = friends_april + clips_may``, ``result = clips_total``.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from reftkit.data.gsm8k_expressions import evaluate_exact, exact_number, normalise_expression
from reftkit.reward.numbers import answers_match
from reftkit.reward.programs import program_header
from reftkit.reward.sandbox import run_programs

# Failure classes. Derivation: the rationale gives nothing to build from. Verification: the program
# does not reproduce the gold answer when run in the sandbox.
OK = "ok"
NO_ANNOTATION = "no_annotation"  # the rationale has no <<expr=value>> at all
UNPARSEABLE = "unparseable"  # an annotation's expression is not plain arithmetic (algebra, text, bad syntax)
EXEC_ERROR = "exec_error"  # the program raised (e.g. ZeroDivisionError)
TIMEOUT = "timeout"
WRONG_VALUE = "wrong_value"  # runs, but the value is not the gold answer (unannotated last step, typos, ...)
DERIVATION_FAILURES: tuple[str, ...] = (NO_ANNOTATION, UNPARSEABLE)
EXECUTION_FAILURES: tuple[str, ...] = (EXEC_ERROR, TIMEOUT, WRONG_VALUE)
CLASSES: tuple[str, ...] = (OK, *DERIVATION_FAILURES, *EXECUTION_FAILURES)


@dataclass(frozen=True)
class Derived:
    """A program, or why there is none (one of :data:`DERIVATION_FAILURES`); exactly one is set."""

    program: str | None
    failure: str | None


_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_GOLD_LINE = re.compile(r"\n?####\s*(?P<gold>[^\n]*)\s*$")
# Numbers as people write them in questions: "$1,250.50", "48", ".5", "25%"; commas group three digits.
_QUESTION_NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])\.\d+")
_UNITS = "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
_UNITS += " eighteen nineteen"
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
_WORD_VALUES = (
    {"one": 1}
    | {word: n for n, word in enumerate(_UNITS.split(), start=2)}
    | {word: 10 * n for n, word in enumerate(_TENS.split(), start=2)}
)
# "Ten of them", "twenty-five"; "one" only inside a compound; not "two hundred" or "two-thirds".
_QUESTION_WORD_NUMBER = re.compile(
    rf"\b(?:(?:{_TENS.replace(' ', '|')})(?:-(?:one|{_UNITS.replace(' ', '|')}))?|{_UNITS.replace(' ', '|')})\b"
    r"(?![-\s]+(?:hundred|thousand|million|billion|halves|thirds?|quarters?|(?:four|fif|six|seven|eigh|nin|ten)ths?)\b)",
    re.IGNORECASE,
)
# The number a rationale writes right after an annotation ("<<10/3=3.333>>3.33 hours").
_WRITTEN_VALUE = re.compile(r"\s*\$?\s*((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
# Where the words naming a number stop: punctuation, an operator, another number or a new clause.
# Before an expression, relative clauses ("a wallet which costs $100") keep their subject.
_CLAUSE = r"[.,;:!?\n]|\b(?:and|but|or|so|because|since|then)\b"
_BOUNDARY = re.compile(rf"{_CLAUSE}|\b(?:which|that|if|when|while|than|who|where|as)\b|[=()\[\]<>+*/×÷]|\d|\s-\s", re.I)
_MAX_NAME_WORDS = 2

# Words that say nothing about what a number counts; skipped when naming.
_STOPWORDS = frozenset(
    """
    a an the this that these those there here it its it's he she they them his her their hers him we us our
    you your i me my mine one of in on at to for from by with into onto over under about after before than then
    and or but so as if because since which who whom whose what when where while how thus therefore hence
    is are was were be been being am do does did will would can could shall should might must
    more less fewer times many much each every all both some any only just also still already
    now altogether another other same such very really let lets means mean
    two three four five six seven eight nine ten eleven twelve half twice double triple
    """.split()
)
# Verbs say little after a number ("24 clips sold") but name the actor before one ("Penny spent 8 + 7").
_VERBS = frozenset(
    """
    has have had get gets got make makes made need needs take takes took pay pays paid give gives gave buy buys
    bought spend spends spent cost costs sell sells sold use uses used earn earns earned save saves saved
    """.split()
)
_SYNONYMS = {"altogether": "total", "combined": "total", "overall": "total", "together": "total"}
_RESERVED = frozenset({"result", "solution", "math"}) | frozenset(dir(builtins))


# ---- naming ----


def _name_from_words(text: str, last: bool, limit: int | None = _MAX_NAME_WORDS) -> str:
    """Up to ``limit`` content words of ``text`` (its first ones, or with ``last`` its last ones) as snake_case."""
    skip = _STOPWORDS if last else _STOPWORDS | _VERBS
    words = []
    for raw in _WORD.findall(text):
        word, _, suffix = raw.lower().partition("'")
        if suffix not in ("", "s"):
            continue  # a contraction: "she'll", "can't", "would've"
        word = _SYNONYMS.get(word, word)
        if len(word) >= 2 and word not in skip and word.isascii():
            words.append(word)
    units: list[str] = []  # "per" binds to the word after it: "miles per hour" -> miles, per_hour
    for word in words:
        units.append(word if not units or units[-1] != "per" else units.pop() + "_" + word)
    units = [unit for unit in units if unit != "per"]
    if limit is not None:
        units = units[-limit:] if last else units[:limit]
    return "_".join(units)


def _name_after(text: str) -> str:
    """Name from the words right after a number ("24 clips in May." -> clips_may, "$12 an hour" -> per_hour)."""
    text = re.sub(r"^\s*(?:%|percent\b)", " percent ", text)
    text = re.sub(r"^\s*an?\s+", " per ", text)
    text = re.sub(r"/(?=[A-Za-z])", " per ", text)  # "2,880 elephants/hour"
    boundary = _BOUNDARY.search(text)
    return _name_from_words(text[: boundary.start()] if boundary else text, last=False)


def _name_before(text: str) -> str:
    """Name from the last words before an expression ("Betty's grandparents gave her 15 * 2"), taken from
    the nearest clause that has any."""
    for clause in reversed(re.split(_CLAUSE, re.sub(r"[\d$]", " ", text), flags=re.I)):
        name = _name_from_words(clause, last=True)
        if name:
            return name
    return ""


def _identifiers(wanted: Sequence[tuple[str, str]]) -> list[str]:
    """Valid, unique identifiers for (wanted, fallback) pairs, in order: no keywords, builtins or the
    program's own names; repeats get _2, _3, ..."""
    used: set[str] = set()
    names = []
    for name, fallback in wanted:
        name = name if name.isidentifier() else fallback
        if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in _RESERVED:
            name = f"{name}_value"
        unique, suffix = name, 2
        while unique in used:
            unique, suffix = f"{name}_{suffix}", suffix + 1
        used.add(unique)
        names.append(unique)
    return names


# ---- derivation ----


@dataclass
class _Step:
    values: tuple[Fraction, ...]  # what the rationale says it is: annotated value, number written after it
    exact: Fraction | None  # what the rewritten expression computes


@dataclass
class _Input:
    """A number in the question; it gets a line in the program only when an expression uses it."""

    value: Fraction
    literal: str
    wanted: str
    used: bool = False


def derive_program(question: str, rationale: str) -> Derived:
    """The P-CoT program for one item, or the derivation failure class. Never looks at the gold answer."""
    text = _GOLD_LINE.sub("", rationale)
    annotations = list(_ANNOTATION.finditer(text))
    if not annotations:
        return Derived(None, NO_ANNOTATION)
    trees = [normalise_expression(match[1].partition("=")[0]) for match in annotations]
    if any(tree is None for tree in trees):
        return Derived(None, UNPARSEABLE)
    inputs = _question_inputs(question)
    steps: list[_Step] = []
    linked: list[ast.expr] = []
    wanted: list[tuple[str, str]] = []
    for index, (match, tree) in enumerate(zip(annotations, trees, strict=True)):
        before, after = _line_around(text, match)
        context = set(_name_from_words(f"{before} {after}", last=False, limit=None).split("_"))
        # References are placeholders ("s3" = step 3, "q1" = input 1) until every name is known.
        tree = _Linker(steps, inputs, context).visit(tree)
        env = {f"s{i}": step.exact for i, step in enumerate(steps)} | {f"q{i}": q.value for i, q in enumerate(inputs)}
        values = [exact_number(match[1].rpartition("=")[2])]
        if written := _WRITTEN_VALUE.match(after):
            values.append(exact_number(written[1]))
            after = after[written.end() :]
        wanted.append((_name_after(after) or _name_before(before), f"step_{index + 1}"))
        steps.append(_Step(tuple(v for v in values if v is not None), evaluate_exact(tree, env)))
        linked.append(tree)
    used = [i for i, q in enumerate(inputs) if q.used]
    names = _identifiers([(inputs[i].wanted, f"given_{n + 1}") for n, i in enumerate(used)] + wanted)
    placeholders = dict(zip([f"q{i}" for i in used] + [f"s{i}" for i in range(len(steps))], names, strict=True))
    statements = [f"{placeholders[f'q{i}']} = {inputs[i].literal}" for i in used]
    for i, tree in enumerate(linked):
        statements.append(f"{placeholders[f's{i}']} = {ast.unparse(_Renamer(placeholders).visit(tree))}")
    statements += [f"result = {names[-1]}", "return result"]
    return Derived(program_header(question) + "".join(f"    {line}\n" for line in statements), None)


def _line_around(text: str, match: re.Match[str]) -> tuple[str, str]:
    """The rationale line's text before and after an annotation, other annotations blanked out."""
    start, end = text.rfind("\n", 0, match.start()) + 1, text.find("\n", match.end())
    end = len(text) if end < 0 else end
    return _ANNOTATION.sub(" ", text[start : match.start()]), _ANNOTATION.sub(" ", text[match.end() : end])


def _question_inputs(question: str) -> list[_Input]:
    """One candidate input per number in the question, in question order, named from nearby words."""
    inputs: list[_Input] = []
    matches = [*_QUESTION_NUMBER.finditer(question), *_QUESTION_WORD_NUMBER.finditer(question)]
    for match in sorted(matches, key=lambda m: m.start()):
        if match[0][0].isalpha():
            value = Fraction(sum(_WORD_VALUES[part] for part in match[0].lower().split("-")))
            literal = str(value)
        else:
            value = exact_number(match[0])
            literal = match[0].replace(",", "")
            if literal.startswith("."):
                literal = "0" + literal
            elif "." not in literal:
                literal = literal.lstrip("0") or "0"  # "8:05": 05 is a SyntaxError in Python
        if value is None:
            continue
        after = question[match.end() :].lstrip("-")  # "a 120-page book" -> page_book
        inputs.append(_Input(value, literal, _name_after(after) or _name_before(question[: match.start()])))
    return inputs


class _Linker(ast.NodeTransformer):
    """Replaces numbers by what they stand for: an earlier step, else a question number, else keeps them."""

    def __init__(self, steps: list[_Step], inputs: list[_Input], context: set[str]) -> None:
        self.steps, self.inputs, self.context = steps, inputs, context
        self.uses: Counter[Fraction] = Counter()

    def visit_Constant(self, node: ast.Constant) -> ast.expr:
        value = Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
        ref = _earlier_step(value, self.steps) or self._question_input(value)
        ref = ref or _earlier_step(value, self.steps, rounded_from=str(node.value))
        return ast.Name(ref, ast.Load()) if ref else node

    def _question_input(self, value: Fraction) -> str | None:
        """A question number with this value. Where the question has several, the one whose words the
        rationale line repeats ("five boys ... 55*5"); one expression using the value twice ("5 products,
        5 minutes each": 5*5) takes them in turn."""
        candidates = [i for i, item in enumerate(self.inputs) if item.value == value]
        if not candidates:
            return None
        candidates.sort(key=lambda i: -len(self.context.intersection(self.inputs[i].wanted.split("_"))))
        i = candidates[self.uses[value] % len(candidates)]
        self.uses[value] += 1
        self.inputs[i].used = True
        return f"q{i}"


class _Renamer(ast.NodeTransformer):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.names[node.id], ast.Load())


def _earlier_step(value: Fraction, steps: list[_Step], rounded_from: str = "") -> str | None:
    """The latest step whose value this number is, as the rationale states it or as computed; or, given
    the number as written, the latest step it is a rounding of.

    Rounding counts only for a number written with decimals ("3.33" for 10/3): a whole number that differs
    from a step's value was rounded on purpose (whole buses, whole items) and stays a literal.
    """
    decimals = len(rounded_from.partition(".")[2])
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        if not rounded_from and (value in step.values or value == step.exact):
            return f"s{i}"
        if decimals and step.exact is not None and abs(step.exact - value) <= Fraction(1, 2 * 10**decimals):
            return f"s{i}"
    return None


def verify(programs: Sequence[str], golds: Sequence[str], timeout: float = 2.0) -> list[str]:
    """Per program :data:`OK` or the execution failure class, from one sandbox run of all of them."""
    results = run_programs(list(programs), timeout=timeout)
    verdicts = []
    for result, gold in zip(results, golds, strict=True):
        if result.status == "timeout":
            verdicts.append(TIMEOUT)
        elif result.status != "ok":
            verdicts.append(EXEC_ERROR)
        elif isinstance(result.value, int | float) and not isinstance(result.value, bool):
            verdicts.append(OK if answers_match(result.value, gold) else WRONG_VALUE)
        else:
            verdicts.append(WRONG_VALUE)
    return verdicts


def derive_gsm8k(items: Sequence[tuple[str, str, str]], timeout: float = 2.0) -> tuple[list[str | None], Counter[str]]:
    """Derive and verify (question, rationale, gold) items: the verified program or None per item, and
    how many items ended in each class (every class present, zeros included, so reports have one schema)."""
    derived = [derive_program(question, rationale) for question, rationale, _ in items]
    built = [i for i, d in enumerate(derived) if d.program is not None]
    verdicts = verify([derived[i].program for i in built], [items[i][2] for i in built], timeout=timeout)
    classes = [d.failure for d in derived]
    for i, verdict in zip(built, verdicts, strict=True):
        classes[i] = verdict
    programs = [d.program if c == OK else None for d, c in zip(derived, classes, strict=True)]
    counts: Counter[str] = Counter(dict.fromkeys(CLASSES, 0))
    counts.update(classes)
    return programs, counts


def nl_cot_from_rationale(rationale: str) -> tuple[str, str]:
    """(N-CoT, gold): the rationale without its ``#### X`` line and calculator notes, and X without commas.

    "48/2 = <<48/2=24>>24 clips" becomes "48/2 = 24 clips": the annotation repeats what the text says.
    """
    match = _GOLD_LINE.search(rationale)
    if match is None:
        raise ValueError("a GSM8K rationale must end with a '#### <answer>' line")
    chain = _ANNOTATION.sub("", rationale[: match.start()]).strip()
    return chain, match["gold"].strip().replace(",", "")
