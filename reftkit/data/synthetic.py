"""Synthetic multi-step arithmetic word problems: the default task, learnable from scratch in minutes.

Real datasets need a pretrained model. These problems keep what ReFT relies on (a checkable integer
answer, 2-4 chained operations, stories whose numbers must be combined in the right way) but use a
vocabulary of a few dozen words and small numbers (operands 2-12, starting amounts up to 30, every
value a whole number in [2, 200]), so a tiny transformer trained from scratch learns them quickly.

Each question admits several correct chains of thought: independent sub-computations in either order,
descriptive or short variable names, all numbers first or each just before its use, two phrasings of
every N-CoT sentence, and for some stories a distributive alternative (``(3 + 2) * 6`` vs
``3 * 6 + 2 * 6``). :func:`cot_variants` renders several of them; like the paper, the dataset gives
each question one gold annotation, drawn from the same renderer with a seeded RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from reftkit.data.base import COT_STYLES, Problem, TaskData
from reftkit.data.synthetic_stories import STORIES, Num, Rejected, Step, StoryBuilder
from reftkit.reward.programs import program_header

MAX_OPS = 4
SHORT_GIVENS = "abcdefgh"
SHORT_STEPS = "xyzwuv"


@dataclass(frozen=True)
class ProblemSpec:
    """A question with its equivalent computations; the first follows the question's own order."""

    kind: str
    question: str
    givens: tuple[Num, ...]
    solutions: tuple[Step, ...]

    @property
    def answer(self) -> str:
        return str(self.solutions[0].value)

    @property
    def n_ops(self) -> int:
        return len(computation_order(self.solutions[0], flip=lambda: False))


def make_problem(rng: random.Random, n_ops: int | None = None) -> ProblemSpec:
    """One random problem with ``n_ops`` operations (2 to MAX_OPS at random when not given)."""
    if n_ops is None:
        n_ops = rng.randint(2, MAX_OPS)
    if not 1 <= n_ops <= MAX_OPS:
        raise ValueError(f"n_ops must be in 1..{MAX_OPS}, got {n_ops}")
    while True:
        kind = rng.choice(list(STORIES))
        builder = StoryBuilder(rng)
        try:
            solutions = STORIES[kind](builder, n_ops)
        except Rejected:
            continue
        return ProblemSpec(kind, " ".join(builder.sentences), tuple(builder.givens), tuple(solutions))


def computation_order(root: Step, flip: Callable[[], bool]) -> list[Step]:
    """The steps in a valid computation order: operands first, the two branches swapped where ``flip``."""
    steps: list[Step] = []

    def visit(node: Num | Step) -> None:
        if isinstance(node, Num) or node in steps:
            return
        first, second = (node.right, node.left) if flip() else (node.left, node.right)
        visit(first)
        visit(second)
        steps.append(node)

    visit(root)
    return steps


def _program(spec: ProblemSpec, steps: list[Step], short: bool, givens_first: bool) -> str:
    """A P-CoT program computing ``steps``; the last one is assigned to ``result``."""
    names: dict[Num | Step, str] = {}
    lines: list[str] = []

    def define(number: Num) -> None:
        if number not in names:
            index = sum(isinstance(node, Num) for node in names)
            names[number] = SHORT_GIVENS[index] if short else number.name
            lines.append(f"{names[number]} = {number.value}")

    if givens_first:
        for number in spec.givens:
            define(number)
    for i, step in enumerate(steps):
        for operand in (step.left, step.right):
            if isinstance(operand, Num):
                define(operand)
        expr = f"{names[step.left]} {step.op} {names[step.right]}"
        if i == len(steps) - 1:
            lines.append(f"result = {expr}")
        else:
            names[step] = SHORT_STEPS[i] if short else step.name
            lines.append(f"{names[step]} = {expr}")
    lines.append("return result")
    return program_header(spec.question) + "\n".join("    " + line for line in lines)


def _nl(steps: list[Step], phrasing: int) -> str:
    """An N-CoT: one sentence per step showing its arithmetic, without the final answer trigger."""
    return " ".join(s.says[phrasing].format(e=f"{s.left.value} {s.op} {s.right.value} = {s.value}") for s in steps)


def render_cot(spec: ProblemSpec, cot: str, rng: random.Random) -> str:
    """One correct chain of thought for ``spec``, with every free choice drawn from ``rng``."""
    if cot not in COT_STYLES:
        raise ValueError(f"cot must be one of {COT_STYLES}, got {cot!r}")
    root = rng.choice(spec.solutions)
    steps = computation_order(root, flip=lambda: rng.random() < 0.5)
    if cot == "nl":
        return _nl(steps, rng.randrange(2))
    return _program(spec, steps, short=rng.random() < 0.5, givens_first=rng.random() < 0.5)


def cot_variants(spec: ProblemSpec, cot: str, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct correct chains of thought for ``spec`` (fewer if it has fewer)."""
    rng = random.Random(seed)
    variants: dict[str, None] = {}
    for _ in range(20 * n):
        variants[render_cot(spec, cot, rng)] = None
        if len(variants) == n:
            break
    return list(variants)


def generate_specs(n: int, seed: int, min_ops: int = 2, max_ops: int = 4) -> list[ProblemSpec]:
    """``n`` problems with distinct questions; operation counts cycle through min_ops..max_ops."""
    if not 1 <= min_ops <= max_ops <= MAX_OPS:
        raise ValueError(f"need 1 <= min_ops <= max_ops <= {MAX_OPS}, got {min_ops}, {max_ops}")
    rng = random.Random(seed)
    specs: list[ProblemSpec] = []
    seen: set[str] = set()
    while len(specs) < n:
        spec = make_problem(rng, min_ops + len(specs) % (max_ops - min_ops + 1))
        if spec.question not in seen:
            seen.add(spec.question)
            specs.append(spec)
    return specs


def generate(n: int, seed: int, cot: str, min_ops: int = 2, max_ops: int = 4) -> list[Problem]:
    """``n`` problems with one gold annotation each; the questions do not depend on ``cot``."""
    if cot not in COT_STYLES:
        raise ValueError(f"cot must be one of {COT_STYLES}, got {cot!r}")
    cot_rng = random.Random(f"synthetic-{cot}-{seed}")
    return [
        Problem(f"synth-{seed}-{i}", spec.question, spec.answer, render_cot(spec, cot, cot_rng))
        for i, spec in enumerate(generate_specs(n, seed, min_ops, max_ops))
    ]


def load_synthetic(
    cot: str = "python",
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 500,
    seed: int = 0,
    min_ops: int = 2,
    max_ops: int = 4,
) -> TaskData:
    """Train/val/test splits of one pool of distinct questions, so no test question is in train."""
    problems = generate(n_train + n_val + n_test, seed, cot, min_ops, max_ops)
    return TaskData(
        name="synthetic",
        train=problems[:n_train],
        val=problems[n_train : n_train + n_val],
        test=problems[n_train + n_val :],
    )
